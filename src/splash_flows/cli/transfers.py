"""``splash-flows status --transfers``: the Globus tasks recorded in the ledger, with their metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from splash_flows.cli.common import console, human_size, print_json

if TYPE_CHECKING:
    from splash_flows.ledger.transfers import BatchRecord

STATUS_STYLE = {"succeeded": "green", "pending": "yellow", "submitted": "yellow", "failed": "bold red",
                "abandoned": "bold red", "refused": "bold red"}


def transfers_json(rows: list[BatchRecord]) -> list[dict[str, Any]]:
    """The JSON shape of ``status --transfers --json``: one object per Globus task, newest first."""
    return [
        {
            "id": r.id, "kind": r.kind, "source_tier": r.source_tier, "dest_tier": r.dest_tier,
            "files": len(r.items), "status": r.status, "globus_status": r.globus_status,
            "task_id": r.task_id, "submission_id": r.submission_id, "created_at": r.created_at,
            "submitted_at": r.submitted_at, "completed_at": r.completed_at, "deadline": r.deadline,
            "bytes_transferred": r.bytes_transferred, "files_transferred": r.files_transferred,
            "files_skipped": r.files_skipped, "effective_bytes_per_second": r.effective_bytes_per_second,
            "faults": r.faults, "items_ok": r.items_ok, "items_failed": r.items_failed, "error": r.error,
        }
        for r in rows
    ]


def transfers_table(rows: list[BatchRecord]) -> Table:
    table = Table(title=f"{len(rows)} Globus task(s), newest first", title_justify="left")
    for name, justify in (("created (UTC)", "left"), ("kind", "left"), ("route", "left"), ("files", "right"),
                          ("ok/failed", "right"), ("bytes", "right"), ("rate", "right"), ("status", "left"),
                          ("task id", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        route = f"on {r.dest_tier}" if r.kind == "delete" else f"{r.source_tier} -> {r.dest_tier}"
        ok_failed = "" if r.items_ok is None else f"{r.items_ok}/{r.items_failed or 0}"
        size = "" if r.bytes_transferred is None else human_size(r.bytes_transferred)
        rate = "" if r.effective_bytes_per_second is None else human_size(r.effective_bytes_per_second) + "/s"
        status = f"[{STATUS_STYLE.get(r.status, 'white')}]{r.status}[/]"
        table.add_row(r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, route, str(len(r.items)), ok_failed,
                      size, rate, status, r.task_id or "-")
    return table


def show_transfers(ledger_url: str, *, as_json: bool, limit: int = 50) -> None:
    """Print the newest ``limit`` Globus tasks from the ledger at ``ledger_url``."""
    from splash_flows.ledger import Ledger
    from splash_flows.ledger.transfers import TransferBatches

    ledger = Ledger.open(ledger_url)
    try:
        rows = TransferBatches(ledger).recent(limit)
    finally:
        ledger.close()
    if as_json:
        print_json(transfers_json(rows))
    else:
        console.print(transfers_table(rows))
