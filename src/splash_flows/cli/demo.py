"""``splash-flows demo``: the main job, end to end, on the embedded default configuration.

Creates DIR with every tier as a folder, writes the configuration it uses, simulates 7.3.3 acquisitions into
``DIR/data733``, runs the ``dispatcher`` flow on them (Prefect, in this process) with progress, prints a summary
and exits 0 only if every file is verified on every target tier and every scan is catalogued (in the embedded
catalogue ``DIR/catalogue.db``: one dataset per scan). Running it again on the same DIR is safe and adds no
dataset.

``--catalogue-from FILE`` takes the ``catalogue`` (and ``dataset``) sections of a site's configuration instead, so
a site tries the demo against its own SciCat while the tiers, ledger and Prefect stay the demo's own. A catalogue
that is down never costs the summary: the scans wait as ``pending_catalogue`` and the summary says so.

Quick to run again: the Prefect server the flow talks to is kept (``flows/local_server.py``): started by the
first demo on DIR -- at the very start, so it comes up while the scans are simulated -- with its database in
``DIR/.prefect`` (a copy of a migrated template for a new DIR, see ``local_server``), and reused by every later
demo while it answers; it stops after ``--server-idle`` minutes (default 10) without a demo, or with
``--stop-server`` (``make clean`` too). The summary says where the time went.
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, human_size
from splash_flows.cli.prefect_env import prepare_prefect_env
from splash_flows.errors import CatalogueError, CatalogueUnavailable, ConfigError

if TYPE_CHECKING:
    from splash_flows.config import Config
    from splash_flows.flows.local_server import ServerHandle
    from splash_flows.ledger import Ledger


#: ``dataset`` settings a site's file may bring along: its facts, not its tier names (the demo has its own tiers).
_SITE_DATASET_KEYS = ("contact_email", "default_owner_group", "beamline_group", "source_folder_host",
                      "creation_location", "exclude_stems", "settle_seconds", "thumbnail_size")
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def site_catalogue_sections(path: Path) -> dict[str, Any]:
    """The ``catalogue`` section (and the site facts of ``dataset``) of a site's configuration file, unexpanded:
    ``${VAR}`` references stay references, so the demo's own file never holds a secret. ConfigError naming
    ``path`` when the file has no catalogue or keeps a SciCat password in the file itself."""
    import yaml

    where = f"demo --catalogue-from {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read the file: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    catalogue = data.get("catalogue") if isinstance(data, dict) else None
    if not isinstance(catalogue, dict):
        raise ConfigError(f"{where}: the file has no `catalogue:` section")
    catalogue = {k: v for k, v in catalogue.items() if k != "download_tiers"}  # names of the site's tiers
    password = catalogue.get("password")
    if catalogue.get("kind") == "scicat" and isinstance(password, str) and not _ENV_REF.search(password):
        raise ConfigError(f"{where}: catalogue.password is written in the file; put `password: ${{SCICAT_PASSWORD}}` "
                          "there and the password in that environment variable (the demo copies the section)")
    if catalogue.get("kind", "embedded") == "embedded" and isinstance(catalogue.get("path"), str):
        catalogue["path"] = str((path.resolve().parent / Path(catalogue["path"]).expanduser()).resolve())
    sections: dict[str, Any] = {"catalogue": catalogue}
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        sections["dataset"] = {k: v for k, v in dataset.items() if k in _SITE_DATASET_KEYS}
    return sections


def demo_workers(small: bool, cores: int | None = None) -> int:
    """Reduction processes for the demo's scans: one (in the flow's own process) for tiny ``--small`` frames and
    on machines of up to 3 cores -- pyFAI's OpenMP integration already uses every core, so a second process
    there only pays its own start-up and imports (measured on 2 cores: 0.8-1.3x the speed of one process, about
    3 s more CPU); two on bigger machines."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 1 if small or cores < 4 else 2


def write_demo_config(root: Path, catalogue_from: Path | None = None, *, small: bool = False,
                      by: str = "demo") -> Path:
    """Write ``root/splash-flows.yaml``: the embedded default with paths relative to ``root`` (relocatable).
    ``by`` names the command that wrote it (``demo`` or ``up``) in the file's first line. The demo turns the
    analysis on (``demo_workers`` says in how many processes); with
    ``catalogue_from``, that file's catalogue (see ``site_catalogue_sections``) replaces the embedded one."""
    import yaml

    from splash_flows.config import default_config_data

    data = default_config_data(root)
    data["ledger"]["url"] = "sqlite:///ledger.db"
    for name, tier in data["tiers"].items():
        tier["root"] = f"./{name}"
    data["catalogue"]["path"] = "catalogue.db"
    if by == "demo":
        data["analysis"] = {"enabled": True, "backend": "local", "workers": demo_workers(small)}
    path = root / "splash-flows.yaml"
    text = f"# Written by `splash-flows {by}`: the embedded default, rooted at this folder.\n"
    if catalogue_from is not None:
        data.update(site_catalogue_sections(catalogue_from))
        text += f"# The catalogue (and dataset facts) are those of {catalogue_from.resolve()}.\n"
    text += yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def demo(
    root: Path = typer.Option(Path("var/demo"), "--root", help="Folder for the demo's tiers, ledger and config."),
    scans: int = typer.Option(3, "--scans", min=1, max=500, help="How many 7.3.3 acquisitions to simulate."),
    small: bool = typer.Option(False, "--small", help="Tiny frames instead of full Pilatus 2M images (fast)."),
    more: bool = typer.Option(False, "--more", help="Acquire new scans even if data733 already holds some."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Prefect's own log lines."),
    server_idle: float = typer.Option(10.0, "--server-idle", min=0, metavar="MINUTES",
                                      help="Keep the demo's Prefect server this long after the demo for the next "
                                           "run (0: stop it when the demo ends; --stop-server stops it later)."),
    stop_server: bool = typer.Option(False, "--stop-server", help="Only stop the demo's kept Prefect server."),
    prepare: bool = typer.Option(False, "--prepare", help="Only migrate Prefect's database template (what `make "
                                 "install` runs), so the first demo does not wait for it; kept if it exists."),
    catalogue_from: Path | None = typer.Option(
        None, "--catalogue-from", dir_okay=False,
        help="Use the catalogue (and dataset facts) of this site configuration, e.g. its SciCat, instead of the "
        "embedded one; the tiers stay the demo's folders. Passwords must be ${VAR} references there."),
) -> None:
    """Simulate 7.3.3 scans and move them to lamarr and cfs, verified, through the dispatcher flow."""
    from splash_flows.flows import local_server

    if prepare:
        with fail_cleanly():
            # telemetry off, quiet logs; the server gets a home of its own
            prepare_prefect_env(Path.home() / ".prefect", quiet=not verbose)
            start = time.monotonic()
            template = local_server.prepare_template()
        console.print("Prefect's database is the user's own: nothing to prepare" if template is None else
                      f"Prefect database template ready in {template} ({time.monotonic() - start:.1f} s)",
                      highlight=False)
        return
    home = root.resolve() / ".prefect"
    if stop_server:
        stopped = local_server.stop_server(home) if home.exists() else False
        console.print(f"Prefect server of {root}: {'stopped' if stopped else 'not running'}", highlight=False)
        return
    with fail_cleanly():
        _run_demo(root, home, scans=scans, small=small, more=more, verbose=verbose, server_idle=server_idle,
                  catalogue_from=catalogue_from)


def _run_demo(root: Path, home: Path, *, scans: int, small: bool, more: bool, verbose: bool,
              server_idle: float, catalogue_from: Path | None = None) -> None:
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
        _demo_body(root, server, scans=scans, small=small, more=more, times=times, lap=lap, server_idle=server_idle,
                   catalogue_from=catalogue_from)
    finally:
        if server is not None:
            local_server.touch(home)
            if server_idle == 0:
                local_server.stop_server(home)


def _demo_body(root: Path, server: ServerHandle | None, *, scans: int, small: bool, more: bool,
               times: dict[str, float], lap: Callable[[str], None], catalogue_from: Path | None = None,
               server_idle: float = 10.0) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from splash_flows.config import load_config_file
    from splash_flows.context import build_tier
    from splash_flows.flows import local_server

    config_path = write_demo_config(root, catalogue_from, small=small)
    try:
        config = load_config_file(config_path)
    except ConfigError as err:
        if catalogue_from is None:
            raise
        raise ConfigError(f"demo --catalogue-from {catalogue_from}: {err}") from None
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
                                  hi_lo_every=3 if scans >= 3 else 0, first_sample="AgBh_cal")
        lap("simulate")
    files = list(source.walk())
    paths = [st.path for st in files]
    total_bytes = sum(st.size for st in files)
    console.print(f"{len(paths)} file(s), {human_size(total_bytes)} in {config.move.source}/", highlight=False)
    calibrate_demo(root, config, small=small)

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
            worker.join(0.5)  # woken at once when the flow ends: no fixed sleep after it
    elapsed = time.monotonic() - started
    lap("dispatcher flow")

    rows = ledger.status()
    scan_states = scan_counts(ledger)
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
    catalogue_problem = None
    try:
        datasets = str(count_datasets(config, ledger))
    except CatalogueError as err:  # an outage (or refusal) must not cost the summary
        datasets = "unreachable" if isinstance(err, CatalogueUnavailable) else "unreadable"
        catalogue_problem = str(err)
    ledger.close()
    unverified = bad
    not_catalogued = scan_states.get("pending_catalogue", 0) + scan_states.get("failed", 0)
    bad += not_catalogued
    excluded = f", {scan_states['excluded']} excluded" if scan_states.get("excluded") else ""
    label = f"{datasets} datasets" if datasets.isdigit() else datasets
    table.add_row(f"catalogue ({label}{excluded})", f"{scan_states.get('catalogued', 0)} scans",
                  f"{not_catalogued} scans")
    try:
        analysis_bad, analysis_lines = check_demo_analysis(
            config, paths, tolerance=AGBH_PEAK_TOLERANCE_SMALL if small else AGBH_PEAK_TOLERANCE)
    except CatalogueError as err:  # the derived datasets cannot be confirmed while the catalogue is down
        analysis_bad, analysis_lines = 0, [f"analysis: derived datasets not confirmed: {err}"]
        catalogue_problem = catalogue_problem or str(err)
    bad += analysis_bad
    console.print(table)
    lap("summary")
    from rich.markup import escape

    if catalogue_problem is not None:
        err_console.print(f"[bold yellow]catalogue:[/] {escape(catalogue_problem)}", soft_wrap=True,
                          highlight=False)
    if scan_states.get("pending_catalogue"):
        console.print(f"{scan_states['pending_catalogue']} scan(s) wait for the catalogue (pending_catalogue); "
                      f"once it is back: splash-flows --config {config_path} catalog retry", soft_wrap=True,
                      highlight=False)
    for line in analysis_lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"dispatcher finished in {elapsed:.1f} s. Next: splash-flows --config {config_path} status "
                  f"(or: catalog search)", soft_wrap=True, highlight=False)
    console.print("[dim]time: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in times.items())
                  + (f"; Prefect server {server.api_url} {'started' if server.started else 'reused'}, "
                     + ("stopped now (--server-idle 0)" if server_idle == 0 else
                        f"kept {server_idle:g} min after this demo for the next one (--stop-server stops it)")
                     if server is not None else "") + "[/]",
                  highlight=False)
    if outcome["error"] is not None or bad or catalogue_problem is not None:
        if outcome["error"] is not None:
            msg = str(outcome["error"])
        elif bad:
            msg = (f"{unverified} copies not verified, {not_catalogued} scans not catalogued, "
                   f"{analysis_bad} scans not reduced")
        else:
            msg = "the catalogue could not be read, so its datasets are not confirmed"
        err_console.print(f"[bold red]demo failed:[/] {escape(msg)}", soft_wrap=True)
        raise typer.Exit(1)


def count_datasets(config: Config, ledger: Ledger) -> int:
    """How many of the datasets the ledger holds as catalogued the catalogue shows. Raises CatalogueError (an
    outage: ``CatalogueUnavailable``) when it cannot be asked."""
    from splash_flows.context import build_catalogue
    from splash_flows.ledger.catalogue import scans_in_state

    pids = sorted({r.pid for r in scans_in_state(ledger, ["catalogued"]) if r.pid})
    catalogue = build_catalogue(config)
    try:
        if config.catalogue.kind == "embedded":  # local and cheap: a duplicate would show here too
            return len(catalogue.search())
        return sum(1 for pid in pids if catalogue.get(pid).pid == pid)
    finally:
        close = getattr(catalogue, "close", None)
        if callable(close):
            close()


#: When the demo's calibration starts: before any simulated acquisition.
DEMO_CALIBRATION_FROM = datetime(2020, 1, 1, tzinfo=UTC)
#: Stated tolerance of the AgBh first peak the demo checks (relative): 0.5 % on Pilatus 2M frames (two bins of
#: 2000); 10 % on ``--small`` frames, whose 4 mm pixels each span ~0.1 nm^-1 at this q.
AGBH_PEAK_TOLERANCE = 0.005
AGBH_PEAK_TOLERANCE_SMALL = 0.10


def calibrate_demo(root: Path, config: Config, *, small: bool) -> None:
    """Write the simulated beamline's AgBh calibration (PONI) into ``root`` and record it, as
    ``splash-flows calibration add calibration/agbh.poni --from 2020-01-01T00:00Z`` would (idempotent)."""
    from splash_flows.beamlines.bl733.simulator import simulated_poni
    from splash_flows.ledger import analysis as ledger_an

    folder = root / "calibration"
    folder.mkdir(exist_ok=True)
    path = folder / ("agbh-small.poni" if small else "agbh.poni")
    if not path.exists():
        path.write_text(simulated_poni(small), encoding="utf-8")
    from splash_flows.ledger import Ledger

    ledger = Ledger.open(config.ledger.url_value())
    try:
        if not any(c.valid_from == DEMO_CALIBRATION_FROM for c in ledger_an.calibrations(ledger)):
            ledger_an.add_calibration(ledger, path.read_text(encoding="utf-8"), DEMO_CALIBRATION_FROM,
                                      source=str(path))
    finally:
        ledger.close()


def missing_outputs(root: Path, stem: str, outputs: list[str]) -> list[str]:
    """Which of a reduced scan's results (the ``.h5``, the ``.dat``, the I(q) and frame PNGs; ``outputs``: the
    root-relative paths its analysis record lists) are not regular files under ``root``."""
    from splash_flows.analysis.outputs import output_names

    names = {posixpath.basename(path): path for path in outputs}
    wanted = output_names(stem, grazing=False)
    return [name for name in wanted if name not in names or not (root / names[name]).is_file()]


def check_demo_analysis(config: Config, paths: list[str], *,
                        tolerance: float = AGBH_PEAK_TOLERANCE) -> tuple[int, list[str]]:
    """How many demo scans are not reduced with a derived dataset linked to their raw one, plus lines for people
    (including the AgBh scan's first peak against the calibrant's q)."""
    import math

    from splash_flows.analysis.outputs import peak_near, read_dat
    from splash_flows.analysis.service import select_scans
    from splash_flows.context import build_context
    from splash_flows.ledger import analysis as ledger_an

    context = build_context(config)
    try:
        from splash_flows.analysis.service import AnalysisReport

        scans = select_scans(context, paths, AnalysisReport())
        bad = 0
        lines: list[str] = []
        root = Path(config.tiers[config.move.source].root)
        linked = 0
        for scan in scans:
            record = ledger_an.get_analysis(context.ledger, config.move.source, scan.key)
            if record is None or record.state != "reduced":
                bad += 1
                lines.append(f"[red]not reduced:[/] {scan.key}: {record.error if record else 'never analysed'}")
                continue
            if record.pid is None:
                bad += 1
                lines.append(f"[red]no derived dataset:[/] {scan.key}: {record.catalogue_error}")
                continue
            missing = missing_outputs(root, scan.stem, [str(o["path"]) for o in record.outputs])
            if missing:
                bad += 1
                lines.append(f"[red]results missing:[/] {scan.key}: {', '.join(missing)}")
                continue
            entry = context.catalogue().get(record.pid)
            if not entry.doc.input_datasets:
                bad += 1
                lines.append(f"[red]derived dataset not linked:[/] {record.pid}")
                continue
            linked += 1
            if scan.stem.startswith("AgBh"):
                dat = next(root / o["path"] for o in record.outputs if str(o["path"]).endswith(".dat"))
                q, intensity, _ = read_dat(dat)
                expected = 2 * math.pi / 5.838  # AgBh d(001) = 58.38 Å, in nm^-1
                found = peak_near(q, intensity, expected)
                ok = abs(found - expected) / expected <= tolerance
                bad += 0 if ok else 1
                lines.append(f"AgBh first peak {found:.4f} nm^-1 (calibrant {expected:.4f}, tolerance "
                             f"{tolerance:.1%}): {'[green]ok[/]' if ok else '[red]off[/]'}  {dat}")
        results = sorted({f"{config.move.source}/{scan.folder}/{config.analysis.results_folder}/" for scan in scans})
        lines.insert(0, f"analysis: {linked} of {len(scans)} scan(s) reduced, derived datasets linked to their raw "
                     f"ones; results in {', '.join(results)}")
        return bad, lines
    finally:
        context.close()
