"""``splash-flows init-work-pools``: make a Prefect server ready for the 7.3.3 flows.

Waits for the server's health, creates the missing work pools (process type, with concurrency limits), gives
existing pools the limits the flows need (``prune_733_pool`` serial; a pool made by hand has none) and deploys
``prefect.yaml`` (``prefect --no-prompt deploy`` in the folder holding it). Safe to run again.
The same code runs as ``flows/bl733/init_work_pools.py`` for operators who follow the seed's instructions.
"""

from __future__ import annotations

import os

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly
from splash_flows.errors import OrchestrationError

API_URL_HELP = "Prefect API URL, e.g. http://prefect-host:4200/api (default: $PREFECT_API_URL)."


def resolve_api_url(api_url: str | None) -> str:
    """``--api-url``, else ``$PREFECT_API_URL``; without either there is no server to talk to."""
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        raise OrchestrationError("no Prefect server given: pass --api-url or set PREFECT_API_URL "
                                 "(e.g. http://127.0.0.1:4200/api)")
    return url.rstrip("/")


def init_work_pools(
    api_url: str | None = typer.Option(None, "--api-url", help=API_URL_HELP),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds to wait for the server's health."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=256,
                                    help="Concurrency limit of each pool created or left without one "
                                         "(prune_733_pool: 1)."),
    name: list[str] = typer.Option([], "--name", help="Deploy only this deployment (repeatable; default: all)."),
    preview: bool = typer.Option(False, "--preview", help="Print the work pools and deployments this would "
                                 "create, resolved, as YAML, and change nothing (with --api-url or "
                                 "$PREFECT_API_URL: also what exists there already)."),
) -> None:
    """Wait for the Prefect server, create missing work pools (and set the limits existing ones need), deploy
    prefect.yaml. Running it twice changes nothing. --preview prints what it would do and changes nothing."""
    if preview:
        _preview(api_url, name, concurrency)
        return
    with fail_cleanly():
        url = resolve_api_url(api_url)
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        from splash_flows.flows.deploy import init_work_pools as run_init

        console.print(f"Prefect server {url}: waiting for its health check ...", highlight=False)
        report = run_init(url, names=name or None, concurrency=concurrency, health_timeout=timeout)
        for line in report.lines():
            (err_console if "NOT deployed" in line else console).print(line, highlight=False, soft_wrap=True)
        if report.unavailable:
            raise OrchestrationError(f"{len(report.unavailable)} deployment(s) not deployed: "
                                     f"{', '.join(report.unavailable)}")


def _preview(api_url: str | None, names: list[str], concurrency: int) -> None:
    """``--preview``: the resolved pools and deployments as YAML on stdout (what Prefect 3.9's ``prefect
    deploy`` cannot print: it has no ``--output yaml``). Reads the server only when one is given."""
    import sys

    import yaml

    with fail_cleanly():
        url = api_url or os.environ.get("PREFECT_API_URL") or None
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        from splash_flows.flows.deploy import preview

        data = preview(names=names or None, concurrency=concurrency, api_url=url.rstrip("/") if url else None)
    where = f"the server at {url}" if url else "any server (none was contacted)"
    sys.stdout.write(f"# splash-flows init-work-pools --preview: what would be set up on {where}.\n"
                     "# Nothing was changed. Run without --preview to create the pools and deploy.\n")
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000))
