"""``splash-flows globus check``: is the Globus set-up working? One line per check, plainly."""

from __future__ import annotations

import typer
from rich.table import Table

from splash_flows.cli.common import console, err_console, fail_cleanly, print_json, state

globus_app = typer.Typer(help="Globus: check the service credentials, consents, collections and transfers.",
                         no_args_is_help=True)

RESULT_STYLE = {"ok": "green", "FAILED": "bold red", "not run": "yellow"}


@globus_app.command("check")
def check(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    probe: bool = typer.Option(True, "--probe/--no-probe",
                               help="Also move a small probe file from the source to each target and delete it."),
) -> None:
    """Validate credentials and consents, list every globus tier's root, move a probe file end to end.

    Exits 0 only if every check passed; each failed check says what is wrong and what to do.
    """
    from splash_flows.context import build_context
    from splash_flows.services.flight_check import run_flight_check

    with fail_cleanly():
        config = state(ctx).load()
        context = build_context(config)
        try:
            report = run_flight_check(context, probe=probe)
        finally:
            context.close()
    if as_json:
        print_json(report.to_json())
    else:
        table = Table(title="Globus flight check", title_justify="left")
        table.add_column("check")
        table.add_column("result")
        table.add_column("time", justify="right")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            detail = c.detail + (f"\n[bold]what to do:[/] {c.hint}" if c.hint else "")
            seconds = "" if c.seconds is None else f"{c.seconds:.1f} s"
            table.add_row(c.name, f"[{RESULT_STYLE[c.result]}]{c.result}[/]", seconds, detail)
        console.print(table)
    if not report.ok:
        if not as_json:
            err_console.print(f"[bold red]flight check failed:[/] {len(report.failed())} check(s) not ok",
                              highlight=False)
        raise typer.Exit(1)
