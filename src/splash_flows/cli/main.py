"""``splash-flows``: move, verify, catalogue and prune ALS Beamline 7.3.3 data.

Each command is a thin layer over the services; run ``splash-flows COMMAND --help`` for details.

The CLI must answer at once (``--help`` and ``status`` well under half a second), so **importing this module
imports no heavy library**: no SQLAlchemy, Alembic, pydantic, numpy, Pillow, httpx or Prefect. Typer needs
each command's *signature* (options, defaults, docstring) to build ``--help``, not its body, so the pattern is:

* One module per command or command group under ``splash_flows/cli/``. At module level it imports only the
  standard library, ``typer``, ``splash_flows.cli.common`` and ``splash_flows.errors`` (``rich`` parts are
  fine). Everything else -- the ledger, the services, Prefect, the configuration model -- is imported INSIDE
  the command function (or the helper it calls); type-only imports go under ``if TYPE_CHECKING:``.
* Option defaults are literals (or constants of light modules), never attributes of a heavy module.
* Register the command below, in ``_register_commands``: ``app.command("name")(function)`` for a command,
  ``app.add_typer(group_app, name="name")`` for a group (``catalog``, ``globus``).
* ``tests/cli/test_lazy_imports.py`` fails when ``import splash_flows.cli.main`` pulls a heavy module in, and
  ``bench/cli_latency.py`` measures the result against ``python -c pass`` and ``sqlite3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from splash_flows import CONFIG_ENV_VAR, __version__
from splash_flows.cli.common import State, console, err_console, fail_cleanly, print_json, state

if TYPE_CHECKING:
    from splash_flows.config import Config

app = typer.Typer(
    name="splash-flows",
    help="Move every ALS 7.3.3 detector file to safe storage, verified; catalogue it; prune only what is safe.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)
ledger_app = typer.Typer(help="The ledger (system of record): schema upgrades.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"splash-flows {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help=f"Configuration file (default: ${CONFIG_ENV_VAR}, else the embedded default).",
        dir_okay=False),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More log output."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Splash Flows for ALS Beamline 7.3.3."""
    ctx.obj = State(config_path=config, verbose=verbose)


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="File to check (overrides the global --config).",
                                       dir_okay=False),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved configuration as JSON."),
) -> None:
    """Validate the configuration and print it resolved, with every secret shown as ***.

    Also checks that each local tier root exists and is a folder this user can write to, and with a SciCat
    catalogue logs in and asks the server whether the account may create datasets and attach their files
    (exit 1 when anything fails)."""
    from splash_flows.config import redacted_dict
    from splash_flows.services.catalogue_check import check_catalogue

    st = state(ctx)
    with fail_cleanly():
        cfg = State(config_path=config or st.config_path).load()
        catalogue_checks = check_catalogue(cfg)
    data = redacted_dict(cfg)
    source = str(cfg.source_path) if cfg.source_path else "<embedded default>"
    problems = local_root_problems(cfg)
    for line in problems:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    failed = [c for c in catalogue_checks if not c.ok]
    if as_json:
        print_json({"source": source, "config": data, "problems": problems,
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in catalogue_checks]})
        if failed or problems:
            raise typer.Exit(1)
        return
    if problems:
        err_console.print(f"{source}: {len(problems)} problem(s)", highlight=False, markup=False)
        raise typer.Exit(1)
    import yaml

    console.print(f"[green]ok[/]: {source}", highlight=False)
    console.print(yaml.safe_dump(data, sort_keys=False), highlight=False, markup=False)
    for c in catalogue_checks:
        mark = "[green]ok[/]" if c.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(c.name)}: {escape(c.detail)}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def local_root_problems(cfg: Config) -> list[str]:
    """One line per local tier whose root is missing, not a folder or not writable (``LocalTier.check_root``)."""
    from splash_flows.errors import TierError
    from splash_flows.tiers.local import LocalTier

    problems: list[str] = []
    for name, tier in cfg.tiers.items():
        if tier.kind != "local":
            continue
        try:
            LocalTier(name, Path(tier.root), cfg.checksum).check_root(writable=True)
        except TierError as err:
            problems.append(str(err))
    return problems


@ledger_app.command("upgrade")
def ledger_upgrade(ctx: typer.Context) -> None:
    """Bring the ledger's schema to the newest revision (safe to run any time; a no-op when current)."""
    from splash_flows.ledger import Ledger

    with fail_cleanly():
        cfg = state(ctx).load()
        ledger = Ledger.open(cfg.ledger.url_value(), upgrade=False)
        before = ledger.current_revision()
        after = ledger.upgrade()
        console.print(f"ledger {ledger.describe()}: {before or 'empty'} -> {after}", highlight=False)
        ledger.close()


def _register_commands() -> None:
    """Every command and group, in the order ``--help`` lists them. The modules imported here are light (see
    the module docstring); each command imports what it needs when it runs."""
    from splash_flows.cli.analysis import analyse, calibration_app
    from splash_flows.cli.archive import archive, restore
    from splash_flows.cli.catalog import catalog_app
    from splash_flows.cli.check import check
    from splash_flows.cli.demo import demo
    from splash_flows.cli.globus import globus_app
    from splash_flows.cli.init import init_work_pools
    from splash_flows.cli.prune import prune
    from splash_flows.cli.reconcile import reconcile
    from splash_flows.cli.runner import runner
    from splash_flows.cli.serve import alerts, serve
    from splash_flows.cli.status import status
    from splash_flows.cli.up import up
    from splash_flows.cli.watch import watch

    app.add_typer(config_app, name="config")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(globus_app, name="globus")
    app.command("status")(status)
    app.command("demo")(demo)
    app.add_typer(catalog_app, name="catalog")
    app.command("watch")(watch)
    app.command("prune")(prune)
    # the Prefect side: set up a server, execute flow runs, the whole local stack, recovery
    app.command("init-work-pools")(init_work_pools)
    app.command("runner")(runner)
    app.command("up")(up)
    app.command("reconcile")(reconcile)
    # the tape archive, the reduction
    app.command("archive")(archive)
    app.command("restore")(restore)
    app.command("analyse")(analyse)
    app.add_typer(calibration_app, name="calibration")
    # running it unattended: the data-safety page, alerts, the credential preflight
    app.command("serve")(serve)
    app.command("alerts")(alerts)
    app.command("check")(check)


_register_commands()
