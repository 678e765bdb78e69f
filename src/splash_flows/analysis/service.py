"""The analysis service (seed flow 3, "HPC downstream analysis"): which scans to reduce, with which calibration,
where (the configured backend), and what happens to the results. Plain functions over ``Context``; the
``analysis_733`` flow and ``splash-flows analyse`` only call ``analyse_paths`` / ``analyse_pending``.

For each scan of a batch (``group_scans``; the scan's whole file set on the source tier, not only the batch's):

1. Skipped: files under a results folder (``<scan folder>/reduced/``: our own outputs are never analysed again),
   scans that are not frames (``other``) and alignment frames (``dataset.exclude_stems``).
2. The acquisition time (EDF ``Date``, beamline local time) picks the calibration valid then
   (``calibration add FILE --from DATE``). None: the scan is recorded ``pending_calibration`` and reported --
   never reduced with a guessed geometry. Adding the calibration later and running ``analyse --pending`` (or the
   scan again) finishes it.
3. The backend reduces the scans (``local`` process pool or ``sfapi`` Slurm job); outputs land in
   ``<scan folder>/reduced/`` on the source tier (data733).
4. The outputs are moved onward like any file (registered, copied to every move target and verified, given
   their prune dates) -- but they are never catalogued as raw data: they make one *derived* dataset per scan,
   linked to the scan's raw dataset, with the I(q) plot as its thumbnail. Re-running updates that dataset.

One scan's failure is its own (``failed`` in the ledger, in the report); the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from splash_flows.analysis.backends.base import AnalysisBackend, ProgressFn
from splash_flows.analysis.job import ScanJob, ScanOutcome
from splash_flows.analysis.reduce import Settings
from splash_flows.beamlines.bl733.edf import parse_ctime, read_edf_header
from splash_flows.beamlines.bl733.scans import Scan, group_scans, is_results_path, scan_key
from splash_flows.catalogue.base import CatalogueEntry, DataFileDoc, DatasetDoc, LocationDoc
from splash_flows.context import Context
from splash_flows.errors import (
    AnalysisError,
    BatchError,
    CatalogueError,
    ConfigError,
    MetadataError,
    PathEscapeError,
    SplashFlowsError,
    TierError,
)
from splash_flows.ledger import analysis as ledger_an
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger.analysis import CalibrationRecord
from splash_flows.ledger.models import AnalysisState, CatalogueState
from splash_flows.paths import normalize_relpath
from splash_flows.tiers.local import LocalTier

log = logging.getLogger(__name__)

#: Caption of the I(q) plot attached to a derived dataset.
THUMBNAIL_CAPTION = "I(q)"
#: The method name in the catalogue (ALS's own 7.3.3 convention for reduced data).
METHOD = "pyFAI integrate1d"


@dataclass
class AnalysisReport:
    """What one analysis run did, per scan key."""

    reduced: dict[str, list[str]] = field(default_factory=dict)   # scan -> output paths (source tier)
    pending: dict[str, str] = field(default_factory=dict)         # scan -> why it waits (no calibration)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)          # scan or path -> why it is not analysed
    catalogued: dict[str, str] = field(default_factory=dict)       # scan -> derived dataset pid
    catalogue_waiting: dict[str, str] = field(default_factory=dict)  # scan -> why its derived dataset waits
    merges: dict[str, str] = field(default_factory=dict)           # scan -> single | gb | own
    up_to_date: dict[str, str] = field(default_factory=dict)       # scan -> why reducing it again changes nothing
    backend: str = ""

    def summary(self) -> dict[str, Any]:
        """Counts (and the pending scans) for a flow result and the CLI."""
        return {"backend": self.backend, "reduced": len(self.reduced), "pending_calibration": len(self.pending),
                "failed": len(self.failed), "skipped": len(self.skipped), "catalogued": len(self.catalogued),
                "catalogue_waiting": len(self.catalogue_waiting), "up_to_date": len(self.up_to_date),
                "pending": dict(self.pending)}

    def describe(self) -> str:
        """One line for logs."""
        current = f", {len(self.up_to_date)} already up to date" if self.up_to_date else ""
        return (f"{len(self.reduced)} scan(s) reduced ({self.backend or '-'}){current}, {len(self.pending)} waiting "
                f"for a calibration, {len(self.failed)} failed, {len(self.catalogued)} derived dataset(s) catalogued")

    def raise_for_failures(self) -> None:
        """``BatchError`` naming every scan that failed (pending scans are not failures: they are reported)."""
        if self.failed:
            total = len(self.reduced) + len(self.pending) + len(self.failed)
            raise BatchError("scan reductions", dict(self.failed), total=max(total, len(self.failed)))


def settings_for(ctx: Context) -> Settings:
    """The reduction settings of the configuration."""
    return Settings.from_config(ctx.config.analysis, ctx.config.checksum)


def source_root(ctx: Context) -> Path:
    """The local folder of the move source tier (data733), where frames are read and results written."""
    tier = ctx.tier(ctx.config.move.source)
    if not isinstance(tier, LocalTier):
        raise ConfigError(f"the analysis reads frames from the source tier {ctx.config.move.source!r}, which must "
                          "be a folder this machine can reach (kind local)")
    return tier.root


def build_backend(ctx: Context, name: str | None = None) -> AnalysisBackend:
    """The backend named in the configuration (``analysis.backend``), or ``name``."""
    choice = name or ctx.config.analysis.backend
    if choice == "local":
        from splash_flows.analysis.backends.local import LocalBackend

        return LocalBackend(source_root(ctx), ctx.config.analysis.workers)
    if choice == "sfapi":
        from splash_flows.analysis.backends.sfapi import SfapiBackend

        return SfapiBackend.from_context(ctx)
    raise ConfigError(f"unknown analysis backend {choice!r} (local or sfapi)")


# ---------------------------------------------------------------------------------------------- planning


def _folder_files(root: Path, folder: str) -> list[str]:
    """Regular, non-hidden files directly in ``folder`` (tier-relative paths)."""
    base = root / folder if folder else root
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise TierError(f"cannot list folder: {err.strerror or err}", path=folder or ".") from None
    prefix = f"{folder}/" if folder else ""
    return sorted(prefix + e.name for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=False))


def _roles(scan: Scan) -> dict[str, str]:
    files: dict[str, str] = {}
    for f in scan.files:
        if f.role == "single" and f.ext in ("edf", "txt"):
            files[f.ext] = f.path
        elif f.role in ("hi", "lo") and f.ext in ("edf", "txt"):
            files[f"{f.role}_{f.ext}"] = f.path
        elif f.role == "merged":
            files["gb"] = f.path
    return files


def acquired_at(root: Path, files: dict[str, str], zone: str) -> datetime:
    """When the scan was acquired: the primary EDF's ``Date`` (beamline local time), else its mtime (UTC)."""
    edf = files.get("edf") or files.get("hi_edf") or files.get("lo_edf")
    if edf is None:
        raise AnalysisError("the scan has no EDF image")
    try:
        header = read_edf_header(root / edf, label=edf)
    except MetadataError as exc:
        raise AnalysisError(str(exc)) from exc
    if header.date:
        try:
            return parse_ctime(header.date, zone).astimezone(UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp((root / edf).stat().st_mtime, UTC)


def select_scans(ctx: Context, paths: Sequence[str], report: AnalysisReport) -> list[Scan]:
    """The scans of ``paths`` to analyse (whole file sets from the source tier); the rest land in
    ``report.skipped`` with the reason."""
    source = ctx.config.move.source
    results = ctx.config.analysis.results_folder
    root = source_root(ctx)
    keys: dict[str, str] = {}
    for raw in dict.fromkeys(paths):
        try:
            path = normalize_relpath(raw, tier=source)
        except PathEscapeError as err:
            report.skipped[raw] = str(err)
            continue
        if is_results_path(path, results):
            report.skipped[path] = "an analysis output (never analysed again)"
            continue
        scans = group_scans([path], exclude=ctx.config.dataset.exclude_stems)
        keys[scans[0].key] = scans[0].folder
    selected: list[Scan] = []
    by_folder: dict[str, dict[str, Scan]] = {}
    for key, folder in keys.items():
        if folder not in by_folder:
            found = group_scans(_folder_files(root, folder), exclude=ctx.config.dataset.exclude_stems)
            by_folder[folder] = {s.key: s for s in found}
        scan = by_folder[folder].get(key)
        if scan is None:
            report.skipped[key] = f"no file of it on {source}"
        elif scan.kind == "other":
            report.skipped[key] = "not a detector frame"
        elif not scan.catalogue:
            report.skipped[key] = "an alignment frame (dataset.exclude_stems)"
        elif (waiting := _incomplete(root, scan, ctx.config.dataset.settle_seconds)) is not None:
            report.skipped[key] = waiting
        else:
            selected.append(scan)
    return selected


def _incomplete(root: Path, scan: Scan, settle_seconds: float) -> str | None:
    """Why a hi/lo set is not analysed yet: its hi or lo frame or sidecar (or its .gb) is missing while its newest
    file is younger than ``dataset.settle_seconds`` (the rest may be on its way; the batch that brings it
    analyses the scan). After that it is analysed with what is there (own merge without .gb; an error without
    the frames it needs)."""
    if scan.kind != "hilo":
        return None
    roles = _roles(scan)
    missing = [r for r in ("hi_edf", "hi_txt", "lo_edf", "lo_txt", "gb") if r not in roles]
    if not missing:
        return None
    try:
        newest = max((root / f.path).stat().st_mtime for f in scan.files)
    except OSError:
        return None
    if time.time() - newest >= settle_seconds:
        return None
    return f"hi/lo set incomplete ({', '.join(missing)} missing); waiting up to {settle_seconds:.0f} s for the rest"


def scans_for_keys(ctx: Context, keys: Sequence[str], report: AnalysisReport) -> list[Scan]:
    """The scans with these keys (``folder/stem``), found on the source tier."""
    root = source_root(ctx)
    paths: list[str] = []
    for key in keys:
        folder, _, stem = key.rpartition("/")
        matching = [p for p in _folder_files(root, folder)
                    if group_scans([p], exclude=())[0].key == scan_key(folder, stem)]
        if not matching:
            report.skipped[key] = f"no file of it on {ctx.config.move.source}"
        paths.extend(matching)
    return select_scans(ctx, paths, report)


def input_fingerprint(root: Path, scan: Scan) -> list[list[Any]]:
    """What the reduction of ``scan`` read: ``[path, size, mtime_ns]`` of each of its files on the source tier
    (recorded with the result; a file added, rewritten or removed since makes the result out of date)."""
    out: list[list[Any]] = []
    for f in scan.files:
        try:
            st = (root / f.path).stat()
        except OSError:
            continue
        out.append([f.path, st.st_size, st.st_mtime_ns])
    return out


def up_to_date(ctx: Context, scan: Scan, settings: Settings) -> str | None:
    """Why re-reducing ``scan`` would change nothing, or None when it must be reduced: it is ``reduced`` with the
    calibration that applies to it now, the same settings, the very input files it was reduced from (path, size,
    mtime), every output still on the source tier at its recorded size, and its derived dataset catalogued.
    Cheap (one ledger read and a few ``stat`` calls): what lets the dispatcher see a batch again (``make demo``
    re-run, a re-delivered event) without reducing its scans again."""
    record = ledger_an.get_analysis(ctx.ledger, ctx.config.move.source, scan.key)
    if record is None or record.state != AnalysisState.REDUCED or record.pid is None or record.acquired_at is None:
        return None
    params = record.parameters
    root = source_root(ctx)
    if params.get("inputs") != input_fingerprint(root, scan):
        return None
    if any(params.get(k) != v for k, v in json.loads(json.dumps(settings.as_dict())).items()):
        return None
    calib = ledger_an.calibration_at(ctx.ledger, record.acquired_at)
    if calib is None or calib.id != record.calibration_id:
        return None
    for out in record.outputs:
        try:
            if (root / str(out["path"])).stat().st_size != out["size"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return f"already reduced from these files with calibration #{calib.id} ({record.pid})"


# ---------------------------------------------------------------------------------------------- running


def analyse_scans(ctx: Context, scans: Sequence[Scan], *, backend: AnalysisBackend | None = None,
                  progress: ProgressFn | None = None, report: AnalysisReport | None = None,
                  deliver: Callable[[Context, list[str]], None] | None = None) -> AnalysisReport:
    """Reduce ``scans``, record each outcome, deliver the outputs and catalogue the derived datasets."""
    report = report if report is not None else AnalysisReport()
    source = ctx.config.move.source
    root = source_root(ctx)
    settings = settings_for(ctx)
    jobs: list[ScanJob] = []
    calibs: dict[str, tuple[CalibrationRecord, datetime]] = {}
    inputs: dict[str, list[list[Any]]] = {}
    for scan in scans:
        files = _roles(scan)
        inputs[scan.key] = input_fingerprint(root, scan)  # before reducing: a file changing meanwhile is seen
        try:
            when = acquired_at(root, files, ctx.config.timezone)
        except AnalysisError as err:
            _fail(ctx, scan.key, AnalysisError(err.bare_message, scan=scan.key), report, progress)
            continue
        calib = ledger_an.calibration_at(ctx.ledger, when)
        if calib is None:
            reason = (f"no calibration covers its acquisition time {when.isoformat()}; add one with "
                      "`splash-flows calibration add FILE --from DATE`, then `splash-flows analyse --pending`")
            ledger_an.record_analysis(ctx.ledger, source, scan.key, AnalysisState.PENDING_CALIBRATION,
                                      acquired_at=when, error=reason)
            report.pending[scan.key] = reason
            log.warning("scan %s not reduced: %s", scan.key, reason)
            if progress is not None:
                progress(ScanOutcome(scan.key, False, error=reason))
            continue
        calibs[scan.key] = (calib, when)
        jobs.append(ScanJob(scan_key=scan.key, folder=scan.folder, stem=scan.stem, kind=scan.kind, files=files,
                            poni_text=calib.poni, calibration=calib.label,
                            results_folder=ctx.config.analysis.results_folder))
    if not jobs:
        return report
    backend = backend if backend is not None else build_backend(ctx)
    report.backend = backend.name
    try:
        outcomes = backend.run(jobs, settings, progress)
    except AnalysisError as err:  # the whole backend failed (job refused, FAILED, TIMEOUT, results missing)
        for job in jobs:
            _fail(ctx, job.scan_key, AnalysisError(f"{backend.name} backend: {err}", scan=job.scan_key), report,
                  None)
        return report
    delivered: list[tuple[ScanJob, ScanOutcome]] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if not outcome.ok:
            _fail(ctx, job.scan_key, AnalysisError(outcome.error or "failed", scan=job.scan_key), report, None)
            continue
        calib, when = calibs[job.scan_key]
        parameters = {**_job_parameters(settings, calib, backend.name, outcome), "inputs": inputs[job.scan_key]}
        ledger_an.record_analysis(
            ctx.ledger, source, job.scan_key, AnalysisState.REDUCED, acquired_at=when, calibration_id=calib.id,
            backend=backend.name, merge=outcome.merge, results_folder=job.out_folder,
            outputs=[{"path": o.path, "size": o.size, "checksum": o.checksum} for o in outcome.outputs],
            parameters=parameters)
        report.reduced[job.scan_key] = [o.path for o in outcome.outputs]
        report.merges[job.scan_key] = outcome.merge or ""
        delivered.append((job, outcome))
    if delivered:
        paths = [o.path for _, outcome in delivered for o in outcome.outputs]
        try:
            (deliver or deliver_outputs)(ctx, paths)
        except SplashFlowsError as err:  # the outputs are on data733 and in the ledger: reconcile re-sends them
            report.failed["(delivery of results)"] = err
        for job, _outcome in delivered:
            catalogue_derived(ctx, job.scan_key, report)
    return report


def _fail(ctx: Context, key: str, err: AnalysisError, report: AnalysisReport, progress: ProgressFn | None) -> None:
    ledger_an.record_analysis(ctx.ledger, ctx.config.move.source, key, AnalysisState.FAILED, error=err.bare_message)
    report.failed[key] = err
    log.error("%s", err)
    if progress is not None:
        progress(ScanOutcome(key, False, error=err.bare_message))


def _job_parameters(settings: Settings, calib: CalibrationRecord, backend: str,
                    outcome: ScanOutcome) -> dict[str, Any]:
    return {"method": METHOD, **settings.as_dict(), "merge": outcome.merge, "monitor": outcome.monitor,
            "incident_angle_deg": outcome.incident_angle_deg, "grazing_incidence_map": outcome.grazing,
            "backend": backend, "software": dict(outcome.software),
            "calibration": {"id": calib.id, "valid_from": calib.valid_from.isoformat(), "source": calib.source,
                            "sha256": calib.poni_sha256},
            "poni": calib.poni}


def deliver_outputs(ctx: Context, paths: list[str]) -> None:
    """Move the outputs onward like any file: register them, copy and verify them on every move target, give
    them their prune dates. Raises ``BatchError`` naming every copy that did not verify."""
    from splash_flows.services.move import move_files
    from splash_flows.services.prune import schedule_prune

    report = move_files(ctx, paths)
    schedule_prune(ctx, report.register.sources)
    report.raise_for_failures()


def analyse_paths(ctx: Context, paths: Sequence[str], *, backend: AnalysisBackend | None = None,
                  progress: ProgressFn | None = None,
                  deliver: Callable[[Context, list[str]], None] | None = None) -> AnalysisReport:
    """Analyse the scans of a batch of source-tier paths (what the dispatcher calls after each move). A scan whose
    result is up to date (``up_to_date``) is skipped, with the reason in ``report.up_to_date``; ``splash-flows
    analyse`` reduces what it is given regardless."""
    report = AnalysisReport()
    scans = []
    settings = settings_for(ctx)
    for scan in select_scans(ctx, paths, report):
        if (why := up_to_date(ctx, scan, settings)) is not None:
            report.up_to_date[scan.key] = why
        else:
            scans.append(scan)
    return analyse_scans(ctx, scans, backend=backend, progress=progress, report=report, deliver=deliver)


def pending_calibration_keys(ctx: Context) -> list[str]:
    """Scans waiting for a calibration."""
    return [r.scan_key for r in ledger_an.analyses(ctx.ledger, source_tier=ctx.config.move.source,
                                                    states=[AnalysisState.PENDING_CALIBRATION])]


def uncatalogued_keys(ctx: Context) -> list[str]:
    """Reduced scans whose derived dataset is not in the catalogue yet."""
    return [r.scan_key for r in ledger_an.analyses(ctx.ledger, source_tier=ctx.config.move.source,
                                                    states=[AnalysisState.REDUCED]) if r.pid is None]


def analyse_pending(ctx: Context, *, backend: AnalysisBackend | None = None,
                    progress: ProgressFn | None = None) -> AnalysisReport:
    """Finish what waits: reduce the scans left ``pending_calibration`` (those a calibration now covers; the
    others stay pending) and catalogue derived datasets that waited for their raw dataset."""
    report = AnalysisReport()
    for key in uncatalogued_keys(ctx):
        catalogue_derived(ctx, key, report)
    scans = scans_for_keys(ctx, pending_calibration_keys(ctx), report)
    return analyse_scans(ctx, scans, backend=backend, progress=progress, report=report)


# ---------------------------------------------------------------------------------------------- catalogue


def derived_key(key: str, results_folder: str) -> str:
    """The catalogue key of a scan's derived dataset: its results folder plus the scan stem."""
    folder, _, stem = key.rpartition("/")
    return f"{folder}/{results_folder}/{stem}" if folder else f"{results_folder}/{stem}"


def _raw_entry(ctx: Context, key: str) -> CatalogueEntry | None:
    record = ledger_cat.get_scan(ctx.ledger, ctx.config.move.source, key)
    if record is not None and record.state == CatalogueState.CATALOGUED and record.pid:
        return ctx.catalogue().get(record.pid)
    return ctx.catalogue().find(key)


def catalogue_derived(ctx: Context, key: str, report: AnalysisReport) -> None:
    """Create or update the derived dataset of reduced scan ``key`` (linked to its raw dataset, I(q) plot as
    thumbnail) and note its pid in the ledger. Waits (noted, retried by ``analyse --pending``) while the raw
    dataset is not catalogued or the catalogue is down; never fails the analysis."""
    source = ctx.config.move.source
    if not ctx.catalogue_enabled:
        return
    record = ledger_an.get_analysis(ctx.ledger, source, key)
    if record is None or record.state != AnalysisState.REDUCED:
        return
    try:
        raw = _raw_entry(ctx, key)
        if raw is None:
            reason = "waiting for the raw dataset to be catalogued"
            ledger_an.record_derived(ctx.ledger, source, key, pid=None, error=reason)
            report.catalogue_waiting[key] = reason
            return
        doc = _derived_doc(ctx, key, record, raw)
        pid = ctx.catalogue().upsert_derived(doc)
        iq = next((o["path"] for o in record.outputs if str(o["path"]).endswith("_iq.png")), None)
        if iq is not None:
            ctx.catalogue().attach_thumbnail(pid, (source_root(ctx) / iq).read_bytes(), THUMBNAIL_CAPTION)
    except (CatalogueError, OSError) as err:
        reason = f"derived dataset not catalogued: {err}"
        ledger_an.record_derived(ctx.ledger, source, key, pid=None, error=reason)
        report.catalogue_waiting[key] = reason
        log.warning("scan %s: %s", key, reason)
        return
    ledger_an.record_derived(ctx.ledger, source, key, pid=pid)
    report.catalogued[key] = pid


def _derived_doc(ctx: Context, key: str, record: ledger_an.AnalysisRecord, raw: CatalogueEntry) -> DatasetDoc:
    source = ctx.config.move.source
    results = ctx.config.analysis.results_folder
    paths = [str(o["path"]) for o in record.outputs]
    known = ledger_cat.files_by_path(ctx.ledger, source, paths)
    folder = record.results_folder or posixpath.dirname(paths[0])
    files: list[DataFileDoc] = []
    for o in record.outputs:
        path = str(o["path"])
        rec = known.get(path)
        when = datetime.fromtimestamp(rec.mtime, UTC) if rec is not None else record.updated_at
        files.append(DataFileDoc(path=posixpath.relpath(path, folder), size=int(o["size"]), time=when,
                                 chk=str(o["checksum"])))
    locations: list[LocationDoc] = []
    for tier_name in dict.fromkeys([*ctx.config.move.targets, ctx.config.dataset.archive_tier]):
        if tier_name not in ctx.config.tiers or not paths:
            continue
        if all(p in known and known[p].verified_on(tier_name) for p in paths):
            since = max(known[p].copies[tier_name].verified_at or record.updated_at for p in paths)
            locations.append(LocationDoc(tier=tier_name, url=posixpath.dirname(ctx.tier(tier_name).url(paths[0])),
                                         state="verified", since=since))
    archive = next((loc.url for loc in locations if loc.tier == ctx.config.dataset.archive_tier), None)
    params = dict(record.parameters)
    software = params.get("software") or {}
    stem = key.rpartition("/")[2]
    metadata: dict[str, Any] = {
        "method": METHOD, "npt": params.get("npt"), "unit": params.get("unit"),
        "integration_method": params.get("method"), "merge": record.merge, "monitor": params.get("monitor"),
        "incident_angle_deg": params.get("incident_angle_deg"),
        "grazing_incidence_map": params.get("grazing_incidence_map"),
        "calibration": params.get("calibration"), "backend": record.backend, "raw_scan": key,
    }
    what = "I(q) and q_ip/q_oop map" if params.get("grazing_incidence_map") else "I(q)"
    merge_text = {"gb": "the beamline's .gb hi/lo merge", "own": "our own hi/lo merge"}.get(record.merge or "")
    description = f"Reduced {what} of 7.3.3 scan {stem} ({METHOD}" + (f", {merge_text}" if merge_text else "") + ")"
    return DatasetDoc(
        scan_key=derived_key(key, results), name=f"{stem} reduced", owner=raw.doc.owner,
        owner_group=raw.doc.owner_group, access_groups=list(raw.doc.access_groups),
        contact_email=raw.doc.contact_email, principal_investigator=raw.doc.principal_investigator,
        proposal_id=raw.doc.proposal_id, creation_time=record.updated_at,
        creation_location=raw.doc.creation_location,
        source_folder=archive or str(source_root(ctx) / folder), source_folder_host=raw.doc.source_folder_host,
        description=description, keywords=sorted({*raw.doc.keywords, "reduced", "I(q)"}),
        scientific_metadata=metadata, checksum_algorithm=ctx.config.checksum, files=files, locations=locations,
        dataset_type="derived", input_datasets=[raw.pid],
        used_software=[f"{name} {version}" for name, version in sorted(software.items())],
        job_parameters=params)


# ---------------------------------------------------------------------------------------------- reporting


def reduction_info(ctx: Context, entry: CatalogueEntry) -> dict[str, Any]:
    """Whether the scan of a catalogue entry has been reduced and where the results are (``catalog show``):
    ``{"state", "results", "derived_pid", "merge", "backend", "error"}`` for a raw dataset (state None: never
    analysed), ``{"state": "derived", "input_datasets"}`` for a derived one."""
    if entry.doc.dataset_type == "derived":
        return {"state": "derived", "input_datasets": list(entry.doc.input_datasets)}
    record = ledger_an.get_analysis(ctx.ledger, ctx.config.move.source, entry.doc.scan_key)
    if record is None:
        return {"state": None, "results": None, "derived_pid": None, "merge": None, "backend": None, "error": None}
    results = None
    if record.results_folder and record.state == AnalysisState.REDUCED:
        results = f"{ctx.config.move.source}:{record.results_folder}"
    return {"state": record.state, "results": results, "derived_pid": record.pid, "merge": record.merge,
            "backend": record.backend, "error": record.error or record.catalogue_error}


def reduction_line(info: dict[str, Any]) -> str:
    """One line for people, from ``reduction_info``."""
    state = info.get("state")
    if state == "derived":
        return "derived from " + (", ".join(info.get("input_datasets") or []) or "-")
    if state is None:
        return "not reduced"
    if state == AnalysisState.REDUCED:
        merge = {"gb": ", beamline .gb merge", "own": ", own hi/lo merge"}.get(info.get("merge") or "", "")
        derived = f"; derived dataset {info['derived_pid']}" if info.get("derived_pid") else ""
        return f"reduced ({info.get('backend')}{merge}) -> {info.get('results')}{derived}"
    if state == AnalysisState.PENDING_CALIBRATION:
        return "waiting for a calibration (splash-flows calibration add)"
    return f"reduction failed: {info.get('error')}"
