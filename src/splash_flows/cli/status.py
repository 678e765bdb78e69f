"""``splash-flows status``: where every file is. One row per file; ``--json`` for programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer
from rich.table import Table

from splash_flows.cli.common import console, fail_cleanly, human_size, print_json, state
from splash_flows.ledger import FileStatus, Ledger
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
    limit: int = typer.Option(0, "--limit", min=0, help="At most this many files, in path order (0: all). With "
                              "--after, pages through millions of files at the cost of one page each."),
    after: str = typer.Option("", "--after", help="Only files whose path sorts after this one (the last path "
                              "of the previous page)."),
    totals: bool = typer.Option(False, "--totals", help="Only the number of copies per tier and state."),
) -> None:
    """Show every file the ledger knows: size, checksum, the state of its copy on each tier and its catalogue
    state (catalogued / pending / excluded / failed)."""
    with fail_cleanly():
        config = state(ctx).load()
        if transfers:
            from splash_flows.cli.transfers import show_transfers

            show_transfers(config.ledger.url_value(), as_json=as_json)
            return
        ledger = Ledger.open(config.ledger.url_value())
        try:
            if totals:
                counts = ledger.copy_totals()
            elif limit or after:
                rows = ledger.status_page(config.move.source, after=after or None, limit=limit or 1_000_000,
                                          path_prefix=prefix or None)
                catalogue = file_states(ledger)
            else:
                rows = ledger.status(path_prefix=prefix or None)
                catalogue = file_states(ledger)
        finally:
            ledger.close()
    if totals:
        show_totals(counts, as_json=as_json)
        return
    if as_json:
        print_json(status_json(rows, catalogue))
        return
    tiers = [config.move.source, *config.move.targets]
    tiers += sorted({t for r in rows for t in r.copies} - set(tiers))
    console.print(status_table(rows, tiers, catalogue))


def show_totals(counts: dict[str, dict[str, int]], *, as_json: bool) -> None:
    """``status --totals``: copies per tier and state (``{"tier": {"state": n}}`` with --json)."""
    if as_json:
        print_json(counts)
        return
    states = sorted({st for per in counts.values() for st in per})
    table = Table(title="copies per tier and state", title_justify="left")
    table.add_column("tier")
    for st in states:
        table.add_column(f"[{STATE_STYLE.get(st, 'white')}]{st}[/]", justify="right")
    for tier, per in counts.items():
        table.add_row(tier, *[f"{per.get(st, 0):,}" for st in states])
    console.print(table)
