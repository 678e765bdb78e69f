"""``splash-flows demo``: the main job, end to end, on the embedded default configuration.

Creates DIR with every tier as a folder, writes the configuration it uses, simulates 7.3.3 acquisitions into
``DIR/data733``, runs the ``dispatcher`` flow on them (Prefect, in-process) with progress, prints a summary and
exits 0 only if every file is verified on every target tier and every scan is catalogued (in the embedded
catalogue ``DIR/catalogue.db``: one dataset per scan). Running it again on the same DIR is safe and adds no
dataset.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size
from splash_flows.cli.prefect_env import prepare_prefect_env


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
) -> None:
    """Simulate 7.3.3 scans and move them to lamarr and cfs, verified, through the dispatcher flow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from splash_flows.config import load_config_file
    from splash_flows.ledger import Ledger
    from splash_flows.ledger.catalogue import scan_counts

    with fail_cleanly():
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
        config_path = write_demo_config(root)
        config = load_config_file(config_path)
        for tier in config.tiers.values():
            Path(tier.root).mkdir(parents=True, exist_ok=True)
        console.print(f"[bold]Splash Flows demo[/] in {root}  (config: {config_path.name})")

        from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
        from splash_flows.context import build_tier

        source = build_tier(config.move.source, config)
        existing = [st for st in source.walk() if st.path.endswith(".edf")]
        if existing and not more:
            console.print(f"{config.move.source}/ already holds {len(existing)} image(s) from an earlier run: "
                          "moving those again (use --more to acquire new scans)")
        else:
            with console.status(f"simulating {scans} acquisition(s) into {config.move.source}/ ..."):
                simulate_acquisitions(Path(config.tiers[config.move.source].root), scans, small=small,
                                      hi_lo_every=3 if scans >= 3 else 0)
        files = list(source.walk())
        paths = [st.path for st in files]
        total_bytes = sum(st.size for st in files)
        console.print(f"{len(paths)} file(s), {human_size(total_bytes)} in {config.move.source}/")

        prepare_prefect_env(root / ".prefect", quiet=not verbose)
        from splash_flows.flows.bl733.dispatcher import dispatcher

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

        rows = ledger.status()
        scan_states = scan_counts(ledger)
        ledger.close()
        table = Table(title="demo summary", title_justify="left")
        table.add_column("tier")
        table.add_column("verified", justify="right")
        table.add_column("not verified", justify="right")
        bad = 0
        for t in config.move.targets:
            ok = sum(1 for r in rows if r.path in set(paths) and (c := r.copies.get(t)) and c.state == "verified")
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
        console.print(f"dispatcher finished in {elapsed:.1f} s. Next: splash-flows --config {config_path} status "
                      f"(or: catalog search)", soft_wrap=True, highlight=False)
        if outcome["error"] is not None or bad:
            msg = (str(outcome["error"]) if outcome["error"] is not None
                   else f"{bad} copies not verified or scans not catalogued")
            err_console.print(f"[bold red]demo failed:[/] {msg}", soft_wrap=True)
            raise typer.Exit(1)
