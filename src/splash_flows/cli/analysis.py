"""``splash-flows analyse`` (reduce scans by hand) and ``splash-flows calibration`` (which PONI applies when)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, print_json, state
from splash_flows.errors import AnalysisError, ConfigError

if TYPE_CHECKING:
    from splash_flows.config import Config

calibration_app = typer.Typer(help="Detector calibrations (pyFAI PONI files), each valid from a date until the next.",
                              no_args_is_help=True)


def parse_from(text: str, zone: str) -> datetime:
    """``--from``: an ISO date or date-time; without an offset it is beamline local time (``timezone``)."""
    from splash_flows.beamlines.bl733.edf import beamline_zone

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date or date-time (e.g. 2026-03-01 or "
                                 "2026-03-01T09:30)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=beamline_zone(zone))
    return when.astimezone(UTC)


@calibration_app.command("add")
def calibration_add(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The PONI file (from pyFAI-calib2 on AgBh)."),
    valid_from: str = typer.Option(..., "--from", help="When it starts to apply (ISO; local beamline time unless an "
                                   "offset is given). It applies until the next calibration's start."),
    note: str | None = typer.Option(None, "--note", help="Free text kept with it."),
) -> None:
    """Record a calibration. Scans acquired from then on are reduced with it; scans that waited for one are
    finished by `splash-flows analyse --pending`."""
    from splash_flows.analysis.reduce import load_poni
    from splash_flows.context import build_context
    from splash_flows.ledger import analysis as ledger_an
    from splash_flows.ledger.models import AnalysisState

    with fail_cleanly():
        config = state(ctx).load()
        when = parse_from(valid_from, config.timezone)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AnalysisError(f"cannot read the PONI file: {exc}", scan=str(file)) from None
        ai = load_poni(text, label=str(file))
        context = build_context(config)
        try:
            record, new = ledger_an.add_calibration(context.ledger, text, when, source=str(file.resolve()),
                                                    note=note)
            waiting = [r for r in ledger_an.analyses(context.ledger, states=[AnalysisState.PENDING_CALIBRATION])
                       if r.acquired_at is not None and r.acquired_at >= when]
        finally:
            context.close()
    what = "recorded" if new else "already recorded"
    console.print(f"calibration #{record.id} {what}: from {record.valid_from.isoformat()} "
                  f"({ai.detector.name}, {ai.dist:.4f} m, {ai.wavelength * 1e10:.4f} Å)", highlight=False)
    if waiting:
        console.print(f"{len(waiting)} scan(s) waiting for a calibration are acquired after its start: run "
                      "`splash-flows analyse --pending`", highlight=False)


@calibration_app.command("list")
def calibration_list(ctx: typer.Context,
                     as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every calibration and the time range it applies to."""
    from splash_flows.context import build_context
    from splash_flows.ledger import analysis as ledger_an

    with fail_cleanly():
        context = build_context(state(ctx).load())
        try:
            rows = ledger_an.calibrations(context.ledger)
        finally:
            context.close()
    until = [rows[i + 1].valid_from if i + 1 < len(rows) else None for i in range(len(rows))]
    if as_json:
        print_json([{"id": r.id, "valid_from": r.valid_from, "valid_until": u, "source": r.source,
                     "sha256": r.poni_sha256, "note": r.note} for r, u in zip(rows, until, strict=True)])
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} calibration(s)", title_justify="left")
    for name in ("id", "from (UTC)", "until", "file"):
        table.add_column(name, overflow="fold")
    for r, u in zip(rows, until, strict=True):
        table.add_row(str(r.id), r.valid_from.isoformat(timespec="minutes"),
                      u.isoformat(timespec="minutes") if u else "(current)", r.source)
    console.print(table)


def _resolve(config: Config, context: Any, targets: list[str]) -> tuple[list[str], list[str]]:
    """Split ``targets`` into source-tier paths (files, or every file below a folder) and scan keys (of PIDs)."""
    from splash_flows.analysis.service import source_root

    root = source_root(context)
    paths: list[str] = []
    keys: list[str] = []
    for target in targets:
        candidate = Path(target)
        full = candidate if candidate.is_absolute() else root / target
        if full.exists():
            try:
                rel = full.resolve().relative_to(root.resolve())
            except ValueError:
                raise ConfigError(f"{target}: not inside the {config.move.source} tier ({root})") from None
            if full.is_dir():
                for dirpath, dirnames, filenames in os.walk(full):
                    dirnames[:] = [d for d in dirnames if d != config.analysis.results_folder
                                   and not d.startswith(".")]
                    base = Path(dirpath).resolve().relative_to(root.resolve())
                    paths += [(base / f).as_posix() for f in sorted(filenames) if not f.startswith(".")]
            else:
                paths.append(rel.as_posix())
            continue
        entry = context.catalogue().get(target)  # CatalogueError names an unknown pid
        if entry.doc.dataset_type == "derived":
            raw = entry.doc.scientific_metadata.get("raw_scan")
            if not isinstance(raw, str):
                raise AnalysisError(f"derived dataset {target} does not name its raw scan")
            keys.append(raw)
        else:
            keys.append(entry.doc.scan_key)
    return paths, keys


def analyse(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(None, help="data733 files or folders (relative to its root, or absolute), "
                                        "or dataset PIDs."),
    backend: str | None = typer.Option(None, "--backend", help="local or sfapi (default: analysis.backend)."),
    pending: bool = typer.Option(False, "--pending", help="Also finish the scans that waited for a calibration and "
                                 "derived datasets that waited for their raw dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Reduce scans to I(q) (and q_ip/q_oop maps at grazing incidence) now, on the local cores or at NERSC; the
    results go to <scan folder>/reduced/ on data733, onward to every tier, and into the catalogue."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from splash_flows.analysis import service
    from splash_flows.analysis.job import ScanOutcome
    from splash_flows.context import build_context

    if backend not in (None, "local", "sfapi"):
        raise typer.BadParameter("--backend must be local or sfapi")
    if not targets and not pending:
        raise typer.BadParameter("name files, folders or PIDs to analyse, or give --pending")
    with fail_cleanly():
        config = state(ctx).load()
        context = build_context(config)
        try:
            report = service.AnalysisReport()
            paths, keys = _resolve(config, context, list(targets or []))
            scans = service.select_scans(context, paths, report) + service.scans_for_keys(context, keys, report)
            if pending:
                for key in service.uncatalogued_keys(context):
                    service.catalogue_derived(context, key, report)
                chosen_keys = {s.key for s in scans}
                more = [k for k in service.pending_calibration_keys(context) if k not in chosen_keys]
                scans += service.scans_for_keys(context, more, report)
            chosen = service.build_backend(context, backend) if scans else None
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err_console, transient=as_json, disable=as_json) as progress:
                bar = progress.add_task(f"reducing ({chosen.name if chosen else '-'})", total=len(scans))

                def tick(outcome: ScanOutcome) -> None:
                    progress.advance(bar)
                    if not outcome.ok:
                        progress.console.print(f"[yellow]{outcome.scan_key}[/]: {outcome.error}", highlight=False)

                service.analyse_scans(context, scans, backend=chosen, progress=tick, report=report)
        finally:
            context.close()
    if as_json:
        print_json({**report.summary(), "reduced": report.reduced, "failed": {k: str(v) for k, v in
                   report.failed.items()}, "skipped": report.skipped, "catalogued": report.catalogued})
    else:
        console.print(report.describe(), highlight=False)
        for key, why in report.skipped.items():
            console.print(f"  [dim]skipped[/] {key}: {why}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


def analysis_json(records: list[Any], source: str) -> list[dict[str, Any]]:
    """The documented JSON shape of ``status --analysis --json``: one object per scan."""
    return [{"scan": r.scan_key, "state": r.state, "acquired_at": r.acquired_at, "calibration": r.calibration_id,
             "backend": r.backend, "merge": r.merge,
             "results": f"{source}:{r.results_folder}" if r.results_folder and r.state == "reduced" else None,
             "outputs": [o["path"] for o in r.outputs], "derived_pid": r.pid,
             "error": r.error or r.catalogue_error} for r in records]


def show_analysis(config: Config, *, as_json: bool, prefix: str | None) -> None:
    """``status --analysis``: whether each scan was reduced, and where its results are."""
    from splash_flows.ledger import Ledger
    from splash_flows.ledger import analysis as ledger_an

    ledger = Ledger.open(config.ledger.url_value())
    try:
        records = ledger_an.analyses(ledger, key_prefix=prefix)
    finally:
        ledger.close()
    data = analysis_json(records, config.move.source)
    if as_json:
        print_json(data)
        return
    style = {"reduced": "green", "pending_calibration": "yellow", "failed": "bold red"}
    from rich.table import Table

    table = Table(title=f"{len(data)} scan(s) analysed", title_justify="left")
    for name in ("scan", "state", "merge", "results / reason", "derived dataset"):
        table.add_column(name, overflow="fold")
    for d in data:
        state_text = f"[{style.get(d['state'], 'white')}]{d['state']}[/]"
        where = d["results"] or d["error"] or "-"
        table.add_row(d["scan"], state_text, d["merge"] or "-", where, d["derived_pid"] or "-")
    console.print(table)


def analysis_summary(counts: dict[str, int]) -> str | None:
    """One line for ``status``: scans per reduction state (``ledger.analysis.analysis_counts``; None when nothing
    was analysed)."""
    if not counts:
        return None
    parts = [f"{n} {state.replace('_', ' ')}" for state, n in sorted(counts.items())]
    return "analysis: " + ", ".join(parts) + " (details: splash-flows status --analysis)"
