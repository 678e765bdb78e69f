"""``splash-flows archive`` and ``splash-flows restore``: the tape archive from the command line.

``archive --plan [--json]`` lists the bundles a run would write now (those recorded but not yet verified, and
the new ones the planner would make), with their size and why a file goes alone. It records nothing.
``archive --execute [--json]`` does it (the same code the ``archive_733`` flow runs), with a progress bar;
exit status 1 if any bundle failed or the catalogue refused a datablock.

``restore PID|PATH... --to DIR`` extracts files from their bundles (a dataset pid means all its files; a
folder path all the files under it) into ``DIR/<path>``, each verified against the ledger's checksum; exit
status 1 naming every file that could not be restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size, print_json, state

if TYPE_CHECKING:
    from rich.progress import TaskID
    from rich.table import Table

    from splash_flows.context import Context
    from splash_flows.services.archive import service as svc


def plan_table(plan: svc.ArchivePlan) -> Table:
    """The plan as one table (80 columns: name folds, sizes right-aligned)."""
    from rich.table import Table

    table = Table(title=f"{len(plan.open)} bundle(s) to resume, {len(plan.new.bundles)} new "
                        f"({plan.verified} verified already)", title_justify="left")
    table.add_column("bundle", overflow="fold", min_width=24)
    table.add_column("files", justify="right")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("state / why alone", overflow="fold")
    for b in plan.open:
        table.add_row(b.name, str(len(b.members)), human_size(b.size),
                      f"{b.state}" + (f": {b.error}" if b.error else ""))
    for nb in plan.new.bundles:
        table.add_row(nb.name, str(len(nb.members)), human_size(nb.size), f"new; alone: {nb.why_alone}"
                      if nb.why_alone else "new")
    return table


def archive(
    ctx: typer.Context,
    plan: bool = typer.Option(False, "--plan", help="List the bundles a run would write now; record nothing."),
    execute: bool = typer.Option(False, "--execute", help="Write and verify them, then catalogue them."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many bundles in this run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for programs)."),
) -> None:
    """Archive files verified on cfs to hpss in verified tar bundles per proposal and beam cycle."""
    from splash_flows.context import build_context
    from splash_flows.services.archive import service as svc

    if plan == execute:
        err_console.print("[bold red]error:[/] give exactly one of --plan or --execute")
        raise typer.Exit(2)
    with fail_cleanly():
        context = build_context(state(ctx).load())
        try:
            if plan:
                result = svc.plan_archive(context)
                if as_json:
                    print_json(result.as_dict())
                else:
                    console.print(plan_table(result))
                return
            report = _execute(context, quiet=as_json, limit=limit)
        finally:
            context.close()
        if as_json:
            print_json(report.as_dict())
        else:
            console.print(report.summary(), highlight=False)
            for name, err in report.failed.items():
                err_console.print(f"[bold red]failed:[/] {name}: {err}", highlight=False, soft_wrap=True)
        report.raise_for_failures()


def _execute(context: Context, *, quiet: bool, limit: int | None) -> svc.ArchiveReport:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    from splash_flows.services.archive import service as svc

    if quiet or not console.is_terminal:
        return svc.execute_archive(context, limit=limit)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(event: str, name: str, n: int) -> None:
            if event == "start":
                tasks[name] = bar.add_task(name.rsplit("/", 1)[-1], total=n or None)
            elif event == "bytes" and name in tasks:
                bar.advance(tasks[name], n)
            elif event in ("done", "failed") and name in tasks:
                bar.update(tasks[name], description=f"{name.rsplit('/', 1)[-1]} {event}")

        return svc.execute_archive(context, progress=progress, limit=limit)


def restore(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(..., help="Dataset pids, or file/folder paths as on data733."),
    to: Path = typer.Option(..., "--to", help="Folder to restore into (files keep their paths under it).",
                            file_okay=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for programs)."),
) -> None:
    """Restore files from their tape bundles, each verified against the ledger's checksum."""
    from splash_flows.context import build_context
    from splash_flows.services.archive import service as svc

    with fail_cleanly():
        context = build_context(state(ctx).load())
        try:
            report = svc.restore(context, targets, to)
        finally:
            context.close()
        if as_json:
            print_json({"restored": [{"path": p, "to": str(d)} for p, d in report.restored],
                        "failed": {k: str(v) for k, v in report.failed.items()}})
        else:
            for path, dest in report.restored:
                console.print(f"[green]restored[/] {path} -> {dest}", highlight=False)
        report.raise_for_failures()
