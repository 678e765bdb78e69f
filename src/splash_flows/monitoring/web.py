"""The data-safety page (``splash-flows serve``): a read-only FastAPI app over the ledger, and ``/metrics``.

Routes (all GET; nothing here writes):

- ``/``: the page (static HTML + JS that polls the JSON below every ``monitoring.refresh_seconds``, so it
  updates itself without a reload; drill-downs are in the URL fragment, so a link can be shared).
- ``/api/overview``: totals (``ledger.safety.overview``), tiers, the page's columns and the bind address.
- ``/api/groups?days=&proposal=&offset=&limit=``: per proposal and day.
- ``/api/files?proposal=&day=&flag=&not=&after=&limit=``: a page of files (keyset by path).
- ``/api/files/{id}``: one file's copies and whole event log. ``/api/scans/{id}``: one scan with its files;
  ``/api/scans/{id}/thumbnail.png``: its preview from the catalogue (the only read outside the ledger).
- ``/api/alerts``: the latest alert messages and whether they were delivered.
- ``/metrics``: Prometheus (``monitoring.metrics``). ``/healthz``: the ledger answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from splash_flows.catalogue.base import Catalogue
from splash_flows.config import Config
from splash_flows.errors import CatalogueError, LedgerError
from splash_flows.ledger import safety
from splash_flows.ledger.store import Ledger
from splash_flows.monitoring.metrics import registry_for

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CatalogueFactory = Callable[[], Catalogue]


def page_html() -> str:
    """The page's HTML (shipped in the package next to this module)."""
    return resources.files("splash_flows.monitoring").joinpath("page.html").read_text(encoding="utf-8")


def create_app(config: Config, ledger: Ledger, *, bind: str = "127.0.0.1:8733",
               catalogue: CatalogueFactory | None = None, overview_ttl: float = 2.0) -> FastAPI:
    """The app for one configuration and ledger. ``catalogue`` builds the catalogue client for thumbnails
    (None: previews are not shown)."""
    app = FastAPI(title="Splash Flows data safety", docs_url=None, redoc_url=None, openapi_url=None)
    cached = safety.Cached(overview_ttl, lambda: safety.overview(ledger, config))
    registry = registry_for(ledger, config)
    html = page_html()
    tiers = list(config.tiers)

    def ledger_call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except LedgerError as err:
            raise HTTPException(503, f"the ledger cannot be read: {err}") from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        rev = ledger_call(ledger.current_revision)
        return {"ok": True, "ledger_revision": rev}

    @app.get("/api/overview")
    def api_overview() -> dict[str, Any]:
        ov: safety.Overview = ledger_call(cached.get)
        flags = [{"name": f.name, "label": f.label, "help": f.help, "alarm": f.alarm}
                 for f in safety.flags_for(config)]
        return {**ov.to_json(), "tiers": tiers, "source": config.move.source, "targets": config.move.targets,
                "flags": flags, "bind": bind, "read_only": True, "beamline": config.beamline,
                "refresh_seconds": config.monitoring.refresh_seconds,
                "objective_minutes": config.monitoring.safe_within_minutes,
                "window_days": config.monitoring.window_days}

    @app.get("/api/alerts")
    def api_alerts(limit: int = Query(10, ge=1, le=200)) -> dict[str, Any]:
        from splash_flows.monitoring.alerts import recent_messages

        rows = ledger_call(lambda: recent_messages(ledger, limit))
        return {"configured": len(config.alerts.urls), "messages": rows}

    @app.get("/api/groups")
    def api_groups(days: int = Query(config.monitoring.window_days, ge=1, le=36600),
                   proposal: str | None = Query(None, max_length=512),
                   offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        rows, total = ledger_call(lambda: safety.groups(ledger, config, days=days, proposal=proposal,
                                                        offset=offset, limit=limit))
        return {"total": total, "offset": offset, "limit": limit, "days": days,
                "rows": [{"proposal": r.proposal, "day": r.day, "files": r.files, "bytes": r.bytes,
                          "counts": r.counts} for r in rows]}

    @app.get("/api/files")
    def api_files(proposal: str | None = Query(None, max_length=512), day: str | None = Query(None),
                  flag: str | None = Query(None, max_length=80), negate: bool = Query(False, alias="not"),
                  after: str | None = Query(None, max_length=4096),
                  limit: int = Query(100, ge=1, le=500)) -> dict[str, Any]:
        if day is not None and not _DAY.match(day):
            raise HTTPException(400, f"day must be YYYY-MM-DD, got {day!r}")
        known = {f.name for f in safety.flags_for(config)} | {f"on:{t}" for t in tiers}
        if flag and flag not in known:
            raise HTTPException(400, f"unknown flag {flag!r}; known: {', '.join(sorted(known))}")
        rows = ledger_call(lambda: safety.list_files(ledger, config, proposal=proposal, day=day, flag=flag,
                                                     negate=negate, after=after, limit=limit))
        return {"files": [r.to_json() for r in rows], "next_after": rows[-1].path if len(rows) == limit else None}

    @app.get("/api/files/{file_id}")
    def api_file(file_id: int) -> dict[str, Any]:
        detail = ledger_call(lambda: safety.file_detail(ledger, file_id))
        if detail is None:
            raise HTTPException(404, f"no file with id {file_id} in the ledger")
        return detail  # type: ignore[no-any-return]

    @app.get("/api/scans/{scan_id}")
    def api_scan(scan_id: int) -> dict[str, Any]:
        detail = ledger_call(lambda: safety.scan_detail(ledger, scan_id))
        if detail is None:
            raise HTTPException(404, f"no scan with id {scan_id} in the ledger")
        detail["thumbnail"] = (f"/api/scans/{scan_id}/thumbnail.png"
                               if catalogue is not None and detail["pid"] else None)
        return detail  # type: ignore[no-any-return]

    @app.get("/api/scans/{scan_id}/thumbnail.png")
    def api_thumbnail(scan_id: int) -> Response:
        detail = ledger_call(lambda: safety.scan_detail(ledger, scan_id))
        if detail is None or not detail["pid"] or catalogue is None:
            raise HTTPException(404, "this scan has no dataset in the catalogue")
        try:
            client = catalogue()
            try:
                png = client.thumbnail(detail["pid"])
            finally:
                close = getattr(client, "close", None)
                if callable(close):
                    close()
        except CatalogueError as err:
            return JSONResponse({"detail": f"the catalogue did not answer: {err}"}, status_code=502)
        if png is None:
            raise HTTPException(404, f"dataset {detail['pid']} has no preview")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @app.get("/metrics")
    def metrics() -> Response:
        try:
            body = generate_latest(registry)
        except LedgerError as err:
            raise HTTPException(503, f"the ledger cannot be read: {err}") from None
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
