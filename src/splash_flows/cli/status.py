"""``splash-flows status``: where every file is. One row per file; ``--json`` for programs."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from splash_flows.cli.common import console, fail_cleanly, human_size, print_json, state
from splash_flows.ledger import FileStatus, Ledger

STATE_STYLE = {"verified": "green", "pending": "yellow", "failed": "bold red", "stale": "magenta"}
# pruning: pruned copies are history (dim), not missing data; claimed ones cyan; at_risk loud
STATE_STYLE.update({"pruning": "cyan", "deleting": "cyan", "pruned": "dim", "at_risk": "bold red reverse"})


def status_json(rows: list[FileStatus]) -> list[dict[str, Any]]:
    """The documented, stable JSON shape of ``status --json`` (see README)."""
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
        }
        for r in rows
    ]


def status_table(rows: list[FileStatus], tiers: list[str]) -> Table:
    table = Table(title=f"{len(rows)} file(s)", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("checksum")
    for tier in tiers:
        table.add_column(tier)
    for r in rows:
        cells = []
        for tier in tiers:
            info = r.copies.get(tier)
            if info is None:
                cells.append("[dim]-[/]")
            else:
                cells.append(f"[{STATE_STYLE.get(info.state, 'white')}]{info.state}[/]")
        table.add_row(r.path, human_size(r.size), f"{r.checksum_alg}:{r.checksum[:12]}", *cells)
    return table


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (keys documented in the README)."),
    prefix: str = typer.Option("", "--prefix", help="Only files whose path starts with this."),
) -> None:
    """Show every file the ledger knows: size, checksum and the state of its copy on each tier."""
    with fail_cleanly():
        config = state(ctx).load()
        ledger = Ledger.open(config.ledger.url_value())
        try:
            rows = ledger.status(path_prefix=prefix or None)
        finally:
            ledger.close()
    if as_json:
        print_json(status_json(rows))
        return
    tiers = [config.move.source, *config.move.targets]
    tiers += sorted({t for r in rows for t in r.copies} - set(tiers))
    console.print(status_table(rows, tiers))
