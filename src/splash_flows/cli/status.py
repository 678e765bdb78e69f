"""``splash-flows status``: where every file is. One row per file; ``--json`` for programs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from splash_flows.cli.common import console, fail_cleanly, human_size, print_json, state
from splash_flows.ledger import FileStatus, Ledger
from splash_flows.ledger.archive import last_drill
from splash_flows.ledger.catalogue import FileCatalogueState, file_states

STATE_STYLE = {"verified": "green", "pending": "yellow", "failed": "bold red", "stale": "magenta"}
CATALOGUE_CELL = {"catalogued": "[green]catalogued[/]", "pending_catalogue": "[yellow]pending[/]",
                  "excluded": "[dim]excluded[/]", "failed": "[bold red]failed[/]"}
CatalogueStates = Mapping[tuple[str, str], FileCatalogueState]
# pruning: pruned copies are history (dim), not missing data; claimed ones cyan; at_risk loud
STATE_STYLE.update({"pruning": "cyan", "deleting": "cyan", "pruned": "dim", "at_risk": "bold red reverse"})


def catalogue_json(state: FileCatalogueState | None) -> dict[str, Any]:
    """``{"state", "pid", "error"}``; state is catalogued, pending_catalogue, excluded, failed or null (not seen
    by the catalogue step yet)."""
    if state is None:
        return {"state": None, "pid": None, "error": None}
    return {"state": state.state, "pid": state.pid, "error": state.error}


def status_json(rows: list[FileStatus], catalogue: CatalogueStates | None = None) -> list[dict[str, Any]]:
    """The documented, stable JSON shape of ``status --json`` (see README)."""
    cat = catalogue or {}
    return [
        {
            "path": r.path,
            "source_tier": r.source_tier,
            "size": r.size,
            "checksum_alg": r.checksum_alg,
            "checksum": r.checksum,
            "detected_at": r.detected_at,
            "copies": {
                tier: {"state": c.state, "checksum": c.checksum, "verified_at": c.verified_at, "error": c.error}
                for tier, c in r.copies.items()
            },
            "catalogue": catalogue_json(cat.get((r.source_tier, r.path))),
        }
        for r in rows
    ]


def status_table(rows: list[FileStatus], tiers: list[str], catalogue: CatalogueStates | None = None) -> Table:
    table = Table(title=f"{len(rows)} file(s)", title_justify="left")
    table.add_column("path", overflow="fold", min_width=24)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column(rows[0].checksum_alg if rows else "checksum", no_wrap=True)
    for tier in tiers:
        table.add_column(tier)
    if catalogue is not None:
        table.add_column("catalogue")
    for r in rows:
        cells = []
        for tier in tiers:
            info = r.copies.get(tier)
            if info is None:
                cells.append("[dim]-[/]")
            else:
                cells.append(f"[{STATE_STYLE.get(info.state, 'white')}]{info.state}[/]")
        if catalogue is not None:
            info_cat = catalogue.get((r.source_tier, r.path))
            cells.append("[dim]-[/]" if info_cat is None else CATALOGUE_CELL.get(info_cat.state, info_cat.state))
        table.add_row(r.path, human_size(r.size), f"{r.checksum[:10]}…", *cells)
    return table


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (keys documented in the README)."),
    prefix: str = typer.Option("", "--prefix", help="Only files whose path starts with this."),
    transfers: bool = typer.Option(False, "--transfers", help="Show the Globus tasks instead: files, bytes, "
                                   "effective rate, task id and status of each (newest first)."),
    analysis: bool = typer.Option(False, "--analysis", help="Show the scans instead: reduced or not, where the "
                                  "results are, their derived dataset."),
) -> None:
    """Show every file the ledger knows: size, checksum, the state of its copy on each tier and its catalogue
    state (catalogued / pending / excluded / failed)."""
    with fail_cleanly():
        config = state(ctx).load()
        if transfers:
            from splash_flows.cli.transfers import show_transfers

            show_transfers(config.ledger.url_value(), as_json=as_json)
            return
        if analysis:
            from splash_flows.cli.analysis import show_analysis

            show_analysis(config, as_json=as_json, prefix=prefix or None)
            return
        ledger = Ledger.open(config.ledger.url_value())
        try:
            rows = ledger.status(path_prefix=prefix or None)
            catalogue = file_states(ledger)
            drill = last_drill(ledger)
        finally:
            ledger.close()
    if as_json:
        print_json(status_json(rows, catalogue))
        return
    tiers = [config.move.source, *config.move.targets]
    tiers += sorted({t for r in rows for t in r.copies} - set(tiers))
    console.print(status_table(rows, tiers, catalogue))
    if drill is not None:
        console.print(drill_line(drill.at, drill.path, drill.detail), highlight=False)
    from splash_flows.cli.analysis import analysis_summary

    with fail_cleanly():
        line = analysis_summary(config)
    if line:
        console.print(line, highlight=False)


def drill_line(at: datetime, path: str | None, detail: Mapping[str, Any]) -> str:
    """One line on the last restore drill (``restore_drill_733``): when, which file, from which bundle, result."""
    when = at.isoformat(timespec="seconds")
    if detail.get("ok"):
        return f"last restore drill: [green]ok[/] {when}: {path} from {detail.get('bundle')} restored identical"
    return f"last restore drill: [bold red]FAILED[/] {when}: {path or '-'}: {detail.get('reason')}"
