"""``splash-flows check``: do the credentials work (Globus, NERSC SFAPI, SciCat), and when do they lapse?"""

from __future__ import annotations

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, print_json, state

RESULT_STYLE = {"ok": "green", "FAILED": "bold red", "not run": "yellow"}


def check(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    probe: bool = typer.Option(False, "--probe/--no-probe", help="Also move a Globus probe file end to end "
                               "(see `globus check`)."),
) -> None:
    """Check every credential the configuration uses, and say what to do about each.

    The Globus client secret and consents, the SFAPI key (file, mode, token, expiry date), the SciCat account.
    Exits 0 only when every check passed."""
    from rich.markup import escape
    from rich.table import Table

    from splash_flows.monitoring.credentials import preflight

    with fail_cleanly():
        config = state(ctx).load()
        report = preflight(config, probe=probe)
    if as_json:
        print_json(report.to_json())
    else:
        table = Table(title="Credential preflight", title_justify="left")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            detail = escape(c.detail) + (f"\n[bold]what to do:[/] {escape(c.hint)}" if c.hint else "")
            table.add_row(c.name, f"[{RESULT_STYLE[c.result]}]{c.result}[/]", detail)
        console.print(table)
    if not report.ok:
        if not as_json:
            err_console.print(f"[bold red]preflight failed:[/] {len(report.failed())} check(s) not ok",
                              highlight=False)
        raise typer.Exit(1)
