"""``splash-flows demo``: the main job, end to end, on the embedded default configuration.

Creates DIR with every tier as a folder, writes the configuration it uses, simulates 7.3.3 acquisitions into
``DIR/data733``, runs the ``dispatcher`` flow on them (Prefect, in this process) with progress, prints a summary
and exits 0 only if every file is verified on every target tier and every scan is catalogued (in the embedded
catalogue ``DIR/catalogue.db``: one dataset per scan). Running it again on the same DIR is safe and adds no
dataset.

Quick to run again: the Prefect server the flow talks to is kept (``flows/local_server.py``): started by the
first demo on DIR -- at the very start, so it comes up while the scans are simulated -- with its database in
``DIR/.prefect``, and reused by every later demo while it answers; it stops after ``--server-idle`` minutes
without a demo, or with ``--stop-server``. The summary says where the time went.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size
from splash_flows.cli.prefect_env import prepare_prefect_env

if TYPE_CHECKING:
    from splash_flows.flows.local_server import ServerHandle


def write_demo_config(root: Path, *, by: str = "demo") -> Path:
    """Write ``root/splash-flows.yaml``: the embedded default with paths relative to ``root`` (relocatable).
    ``by`` names the command that wrote it (``demo`` or ``up``) in the file's first line."""
    import yaml

    from splash_flows.config import default_config_data

    data = default_config_data(root)
    data["ledger"]["url"] = "sqlite:///ledger.db"
    for name, tier in data["tiers"].items():
        tier["root"] = f"./{name}"
    data["catalogue"]["path"] = "catalogue.db"
    path = root / "splash-flows.yaml"
    text = f"# Written by `splash-flows {by}`: the embedded default, rooted at this folder.\n"
    text += yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def demo(
    root: Path = typer.Option(Path("var/demo"), "--root", help="Folder for the demo's tiers, ledger and config."),
    scans: int = typer.Option(3, "--scans", min=1, max=500, help="How many 7.3.3 acquisitions to simulate."),
    small: bool = typer.Option(False, "--small", help="Tiny frames instead of full Pilatus 2M images (fast)."),
    more: bool = typer.Option(False, "--more", help="Acquire new scans even if data733 already holds some."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Prefect's own log lines."),
    server_idle: float = typer.Option(30.0, "--server-idle", min=0, metavar="MINUTES",
                                      help="Keep the demo's Prefect server this long after the demo for the next "
                                           "run (0: stop it when the demo ends)."),
    stop_server: bool = typer.Option(False, "--stop-server", help="Only stop the demo's kept Prefect server."),
) -> None:
    """Simulate 7.3.3 scans and move them to lamarr and cfs, verified, through the dispatcher flow."""
    from splash_flows.flows import local_server

    home = root.resolve() / ".prefect"
    if stop_server:
        stopped = local_server.stop_server(home) if home.exists() else False
        console.print(f"Prefect server of {root}: {'stopped' if stopped else 'not running'}", highlight=False)
        return
    with fail_cleanly():
        _run_demo(root, home, scans=scans, small=small, more=more, verbose=verbose, server_idle=server_idle)


def _run_demo(root: Path, home: Path, *, scans: int, small: bool, more: bool, verbose: bool,
              server_idle: float) -> None:
    """The demo; ``times`` records where the time went (printed under the summary)."""
    from splash_flows.flows import local_server

    times: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        times[name] = times.get(name, 0.0) + now - mark
        mark = now

    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    prepare_prefect_env(home, quiet=not verbose)
    server: local_server.ServerHandle | None = None
    if not os.environ.get("PREFECT_API_URL"):  # else: the user's own server
        # started first, so that it comes up while the configuration is read and the scans are simulated
        server = local_server.ensure_server(home, idle_minutes=server_idle or local_server.DEFAULT_IDLE_MINUTES)
        os.environ["PREFECT_API_URL"] = server.api_url
    lap("start")
    try:
        _demo_body(root, server, scans=scans, small=small, more=more, times=times, lap=lap)
    finally:
        if server is not None:
            local_server.touch(home)
            if server_idle == 0:
                local_server.stop_server(home)


def _demo_body(root: Path, server: ServerHandle | None, *, scans: int, small: bool, more: bool,
               times: dict[str, float], lap: Callable[[str], None]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from splash_flows.config import load_config_file
    from splash_flows.context import build_tier
    from splash_flows.flows import local_server

    config_path = write_demo_config(root)
    config = load_config_file(config_path)
    for tier in config.tiers.values():
        Path(tier.root).mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Splash Flows demo[/] in {root}  (config: {config_path.name})", highlight=False)
    source = build_tier(config.move.source, config)
    existing = [st for st in source.walk() if st.path.endswith(".edf")]
    lap("start")
    if existing and not more:
        console.print(f"{config.move.source}/ already holds {len(existing)} image(s) from an earlier run: "
                      "moving those again (use --more to acquire new scans)", highlight=False)
    else:
        from splash_flows.beamlines.bl733.simulator import simulate_acquisitions

        with console.status(f"simulating {scans} acquisition(s) into {config.move.source}/ ..."):
            simulate_acquisitions(Path(config.tiers[config.move.source].root), scans, small=small,
                                  hi_lo_every=3 if scans >= 3 else 0)
        lap("simulate")
    files = list(source.walk())
    paths = [st.path for st in files]
    total_bytes = sum(st.size for st in files)
    console.print(f"{len(paths)} file(s), {human_size(total_bytes)} in {config.move.source}/", highlight=False)

    from splash_flows.flows.bl733.dispatcher import dispatcher
    from splash_flows.ledger import Ledger
    from splash_flows.ledger.catalogue import scan_counts

    lap("import Prefect and the flows")
    if server is not None:
        how = "started" if server.started else "reused"
        with console.status(f"waiting for the Prefect server ({how}, {server.api_url}) ..."):
            local_server.wait_until_healthy(server)
        lap("wait for the Prefect server")

    ledger = Ledger.open(config.ledger.url_value())
    outcome: dict[str, BaseException | None] = {"error": None}

    def run() -> None:
        try:
            dispatcher(paths=paths, config_path=str(config_path))
        except BaseException as err:  # noqa: BLE001 - reported below, after the progress display ends
            outcome["error"] = err

    worker = threading.Thread(target=run, name="dispatcher", daemon=True)
    started = time.monotonic()
    worker.start()
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bars = {t: progress.add_task(t, total=len(paths)) for t in config.move.targets}
        while True:
            alive = worker.is_alive()
            for t, bar in bars.items():
                progress.update(bar, completed=ledger.count_verified(t, paths, config.move.source))
            if not alive:
                break
            time.sleep(0.25)
    elapsed = time.monotonic() - started
    lap("dispatcher flow")

    rows = ledger.status()
    scan_states = scan_counts(ledger)
    ledger.close()
    table = Table(title="demo summary", title_justify="left")
    table.add_column("tier")
    table.add_column("verified", justify="right")
    table.add_column("not verified", justify="right")
    bad = 0
    wanted = set(paths)
    for t in config.move.targets:
        ok = sum(1 for r in rows if r.path in wanted and (c := r.copies.get(t)) and c.state == "verified")
        bad += len(paths) - ok
        table.add_row(t, str(ok), str(len(paths) - ok))
    from splash_flows.context import build_catalogue

    catalogue = build_catalogue(config)
    try:
        datasets = len(catalogue.search())
    finally:
        close = getattr(catalogue, "close", None)
        if callable(close):
            close()
    not_catalogued = scan_states.get("pending_catalogue", 0) + scan_states.get("failed", 0)
    bad += not_catalogued
    excluded = f", {scan_states['excluded']} excluded" if scan_states.get("excluded") else ""
    table.add_row(f"catalogue ({datasets} datasets{excluded})", f"{scan_states.get('catalogued', 0)} scans",
                  f"{not_catalogued} scans")
    console.print(table)
    lap("summary")
    console.print(f"dispatcher finished in {elapsed:.1f} s. Next: splash-flows --config {config_path} status "
                  f"(or: catalog search)", soft_wrap=True, highlight=False)
    console.print("[dim]time: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in times.items())
                  + (f"; Prefect server {server.api_url} {'started' if server.started else 'reused'}, kept for the "
                     "next run (--stop-server stops it)" if server is not None else "") + "[/]",
                  highlight=False)
    if outcome["error"] is not None or bad:
        msg = (str(outcome["error"]) if outcome["error"] is not None
               else f"{bad} copies not verified or scans not catalogued")
        err_console.print(f"[bold red]demo failed:[/] {msg}", soft_wrap=True)
        raise typer.Exit(1)
