"""``splash-flows catalog``: find datasets, look at one, download its files (verified), retry pending ingests.

Thin over ``services.catalogue``; works with whichever catalogue the configuration names (embedded or SciCat).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size, print_json, state

if TYPE_CHECKING:
    from splash_flows.catalogue.base import CatalogueEntry
    from splash_flows.context import Context

#: How ``catalog show`` styles a location's state (pruned copies are history, as in ``status``).
LOCATION_STYLE = {"verified": "green", "pruned": "dim", "at_risk": "bold red", "archived": "cyan"}

catalog_app = typer.Typer(help="The catalogue: search datasets, show one, download its files, retry ingests.",
                          no_args_is_help=True)


def _context(ctx: typer.Context) -> Context:
    from splash_flows.context import build_context

    return build_context(state(ctx).load())


def _created(entry: CatalogueEntry) -> str:
    return entry.doc.creation_time.strftime("%Y-%m-%d %H:%M:%S %z")


#: Fewest characters of a pid's last part shown by ``catalog search`` (more when needed to tell two apart).
SHORT_PID_MIN = 8


def short_pids(pids: Sequence[str], minimum: int = SHORT_PID_MIN) -> dict[str, str]:
    """Each pid's shortest form that ``catalog show/download`` accept unambiguously among ``pids``: the first
    ``minimum`` (or more, until unique) characters of what follows its last ``/``."""
    ids = {pid: pid.rsplit("/", 1)[-1] for pid in pids}
    out: dict[str, str] = {}
    for pid, tail in ids.items():
        n = min(minimum, len(tail))
        while n < len(tail) and any(o != pid and t.startswith(tail[:n]) for o, t in ids.items()):
            n += 1
        out[pid] = tail[:n]
    return out


@catalog_app.command("search")
def search(
    ctx: typer.Context,
    proposal: str | None = typer.Option(None, "--proposal", help="Only datasets of this proposal (e.g. ALS-00622)."),
    text: str | None = typer.Option(None, "--text", help="Case-insensitive text in the name, description, "
                                    "keywords, folder or a file name."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (keys documented in the README)."),
) -> None:
    """List the datasets matching every given criterion (none: all), oldest first.

    The pid column shows the first characters of each pid's last part; `catalog show` and `catalog download`
    accept them (full pids are in --json)."""
    from rich.table import Table

    from splash_flows.services import catalogue as service

    with fail_cleanly():
        context = _context(ctx)
        try:
            entries = context.catalogue().search(proposal=proposal, text=text)
        finally:
            context.close()
    if as_json:
        print_json([service.entry_json(e) for e in entries])
        return
    short = short_pids([e.pid for e in entries])
    table = Table(title=f"{len(entries)} dataset(s)", title_justify="left", box=None, padding=(0, 1, 0, 0),
                  pad_edge=False, header_style="bold")
    table.add_column("pid", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("proposal", no_wrap=True)
    table.add_column("files", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for e in entries:
        table.add_row(short[e.pid], e.doc.name, e.doc.proposal_id or "-", str(len(e.doc.files)),
                      human_size(e.doc.size), e.doc.creation_time.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@catalog_app.command("show")
def show(
    ctx: typer.Context,
    pid: str = typer.Argument(..., help="The dataset's pid, or its short form from `catalog search`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the dataset plus the ledger's copy states."),
) -> None:
    """Show one dataset: its metadata, its files (size, checksum, where verified) and every location."""
    from rich.table import Table

    from splash_flows.services import catalogue as service

    with fail_cleanly():
        context = _context(ctx)
        try:
            entry, files = service.dataset_files(context, pid)
            from splash_flows.analysis.service import reduction_info, reduction_line

            reduction = reduction_info(context, entry)
        finally:
            context.close()
    copies = {f.name: ({t: c.state for t, c in f.ledger.copies.items()} if f.ledger else None) for f in files}
    if as_json:
        print_json({**service.entry_json(entry), "ledger_copies": copies, "analysis": reduction})
        return
    d = entry.doc
    console.print(f"[bold]{d.name}[/]  {entry.pid}", highlight=False)
    facts = [("proposal", d.proposal_id or "-"), ("owner group", d.owner_group),
             ("access groups", ", ".join(d.access_groups)), ("PI", d.principal_investigator),
             ("created", _created(entry)), ("location", d.creation_location),
             ("source folder", f"{d.source_folder_host + ':' if d.source_folder_host else ''}{d.source_folder}"),
             ("keywords", ", ".join(d.keywords) or "-"), ("size", f"{human_size(d.size)} in {len(d.files)} file(s)"),
             ("preview", "attached" if entry.has_thumbnail else "none"),
             ("reduction", reduction_line(reduction))]
    for key, value in facts:
        console.print(f"  {key:>14}: {value}", highlight=False, markup=False)
    for err in d.errors:
        console.print(f"  [yellow]note:[/] {err}", highlight=False)
    ft = Table(title=f"files (checksum {d.checksum_algorithm})", title_justify="left")
    for name in ("path", "size", "checksum", "verified on"):
        ft.add_column(name, overflow="fold")
    for df, f in zip(d.files, files, strict=True):
        where = copies.get(f.name) or {}
        verified = ", ".join(t for t, s in where.items() if s == "verified") if f.ledger else "[red]not in ledger[/]"
        ft.add_row(df.path, human_size(df.size), df.chk, verified or "[red]nowhere[/]")
    console.print(ft)
    lt = Table(title="locations", title_justify="left")
    for name in ("tier", "state", "since", "url"):
        lt.add_column(name, overflow="fold")
    for loc in d.locations:  # a pruned location is history (dim), not missing data
        style = LOCATION_STYLE.get(loc.state, "")
        lt.add_row(loc.tier, f"[{style}]{loc.state}[/]" if style else loc.state,
                   loc.since.isoformat(timespec="seconds"), loc.url)
    console.print(lt)
    if d.scientific_metadata:
        mt = Table(title="scientific metadata", title_justify="left")
        for name in ("key", "value", "unit"):
            mt.add_column(name, overflow="fold")
        for key, value in d.scientific_metadata.items():
            if isinstance(value, dict) and set(value) <= {"value", "unit"}:
                mt.add_row(key, _text(value.get("value")), str(value.get("unit") or ""))
            else:
                mt.add_row(key, _text(value), "")
        console.print(mt)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@catalog_app.command("download")
def download(
    ctx: typer.Context,
    pid: str = typer.Argument(..., help="The dataset's pid, or its short form from `catalog search`."),
    to: Path = typer.Option(..., "--to", help="Folder to put the files in (created if missing).", file_okay=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: each file with the tier it came from."),
) -> None:
    """Copy the dataset's files into DIR from the best tier holding a verified copy, each checked against the
    ledger's checksum. Refuses (exit 1) files of which no verified copy exists."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from splash_flows.services import catalogue as service

    with fail_cleanly():
        context = _context(ctx)
        try:
            entry, files = service.dataset_files(context, pid)
            total = sum(f.size for f in files)
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=err_console, transient=as_json) as progress:
                bar = progress.add_task(f"{entry.doc.name}", total=total)
                report = service.download_dataset(context, pid, to,
                                                  progress=lambda _name, n: progress.advance(bar, n))
        finally:
            context.close()
        if as_json:
            print_json({"pid": report.pid, "to": str(to.resolve()),
                        "files": [{"path": f.name, "size": f.size, "checksum": f.checksum, "tier": f.tier,
                                   "skipped": f.skipped} for f in report.files],
                        "failed": {name: str(err) for name, err in report.failed.items()}})
        else:
            for f in report.files:
                how = "already there" if f.skipped else f"from {f.tier}"
                console.print(f"  [green]verified[/] {f.name} ({human_size(f.size)}, {how})", highlight=False)
            for name, notes in report.notes.items():
                if name not in report.failed:
                    console.print(f"  [dim]{name}: passed over {'; '.join(notes)}[/]", highlight=False)
        report.raise_for_failures()


@catalog_app.command("retry")
def retry(
    ctx: typer.Context,
    include_failed: bool = typer.Option(False, "--include-failed", help="Also retry scans the catalogue refused "
                                        "(after fixing the cause)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many scans (default: as many "
                                     "as one catalogue step retries)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON counts and the scans still pending."),
) -> None:
    """Ingest again the scans left pending_catalogue (by an outage, or files that were still on their way).
    Exit 1 if the catalogue is still unavailable or refused a scan."""
    from splash_flows.services import catalogue as service

    with fail_cleanly():
        context = _context(ctx)
        try:
            report = (service.retry_pending(context, include_failed=include_failed) if limit is None
                      else service.retry_pending(context, include_failed=include_failed, limit=limit))
        finally:
            context.close()
        if as_json:
            print_json({**report.summary(), "catalogued_scans": report.catalogued,
                        "pending_scans": report.pending, "failed_scans": {k: str(e) for k, e in report.failed.items()}})
        else:
            console.print(report.describe(), highlight=False)
            for key, reason in report.pending.items():
                console.print(f"  [yellow]pending[/] {key}: {reason}", highlight=False, soft_wrap=True)
        report.raise_for_failures()
    if report.unavailable is not None:
        err_console.print(f"[bold red]catalogue still unavailable:[/] {report.unavailable}", soft_wrap=True)
        raise typer.Exit(1)
