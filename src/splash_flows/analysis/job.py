"""The one entry point that reduces scans, wherever it runs: a worker of the local process pool, or ``srun`` in
the Slurm job at NERSC (``python -m splash_flows.analysis.job MANIFEST``).

A manifest (JSON) names a root folder, the reduction settings and a list of ``ScanJob``; running it writes each
scan's outputs into ``<root>/<folder>/<results_folder>/`` and a results file (JSON) that lists, per scan, either
the outputs with their size and checksum, or the error. A scan that fails never stops the others. The checksums
let the caller verify the copy of the results that comes back from NERSC.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from splash_flows.analysis.outputs import software_versions, write_all
from splash_flows.analysis.reduce import Integrators, Reduction, Settings, load_hilo, load_single, reduce_frame
from splash_flows.checksum import hash_file
from splash_flows.errors import AnalysisError, SplashFlowsError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ScanJob:
    """One scan to reduce. ``files`` maps a role (``edf``/``txt`` for a single exposure; ``hi_edf``, ``hi_txt``,
    ``lo_edf``, ``lo_txt``, ``gb`` for a hi/lo set) to its root-relative path."""

    scan_key: str
    folder: str
    stem: str
    kind: str
    files: dict[str, str]
    poni_text: str
    calibration: str
    results_folder: str = "reduced"

    @property
    def out_folder(self) -> str:
        """Root-relative folder of the scan's results."""
        return f"{self.folder}/{self.results_folder}" if self.folder else self.results_folder


@dataclass
class Output:
    """One written file: root-relative path, size and checksum."""

    path: str
    size: int
    checksum: str


@dataclass
class ScanOutcome:
    """What reducing one scan gave: outputs, or the error that stopped it."""

    scan_key: str
    ok: bool
    outputs: list[Output] = field(default_factory=list)
    error: str | None = None
    merge: str | None = None
    grazing: bool = False
    incident_angle_deg: float | None = None
    monitor: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    software: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanOutcome:
        outputs = [Output(**o) for o in data.get("outputs", [])]
        return cls(**{**data, "outputs": outputs})


_INTEGRATORS: Integrators | None = None


def process_integrators() -> Integrators:
    """The integrators of this process (one cache per worker process, so each geometry is built once there)."""
    global _INTEGRATORS
    if _INTEGRATORS is None:
        _INTEGRATORS = Integrators()
    return _INTEGRATORS


def run_scan(root: Path, job: ScanJob, settings: Settings, integrators: Integrators | None = None) -> ScanOutcome:
    """Reduce one scan and write its outputs; never raises for the scan's own trouble (see ``ScanOutcome``)."""
    started = time.monotonic()
    integrators = integrators if integrators is not None else process_integrators()
    try:
        return _write(root, job, settings, _reduce(root, job, settings, integrators), started)
    except _SCAN_ERRORS as exc:
        return _failed(job, exc, started)


def run_scans(root: Path, jobs: Sequence[ScanJob], settings: Settings, integrators: Integrators | None = None,
              progress: Callable[[ScanOutcome], None] | None = None) -> list[ScanOutcome]:
    """``run_scan`` for each job, in order, pipelined: while one scan's outputs are written and made durable (a
    writer thread: HDF5, PNG encoding and fsync partly run outside the GIL, fsync waits for the disk), the next
    scan is read and integrated. At most one written scan waits behind the one being integrated, so memory
    stays at two frames. Each scan's outputs are durable under their final names before its outcome is
    returned, exactly as with ``run_scan``."""
    integrators = integrators if integrators is not None else process_integrators()
    outcomes: list[ScanOutcome] = []
    pending: Future[ScanOutcome] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is not None:
            outcome = pending.result()
            pending = None
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reduce-writer") as writer:
        for job in jobs:
            started = time.monotonic()
            try:
                reduction = _reduce(root, job, settings, integrators)
            except _SCAN_ERRORS as exc:
                collect()
                outcomes.append(_failed(job, exc, started))
                if progress is not None:
                    progress(outcomes[-1])
                continue
            collect()
            pending = writer.submit(_write_or_fail, root, job, settings, reduction, started)
        collect()
    return outcomes


#: What a scan's own trouble raises (pyFAI/numpy/h5py failures on odd input included): that scan's outcome.
_SCAN_ERRORS = (SplashFlowsError, OSError, ValueError, RuntimeError, MemoryError, KeyError, IndexError, TypeError,
                AssertionError)


def _reduce(root: Path, job: ScanJob, settings: Settings, integrators: Integrators) -> Reduction:
    if job.kind == "hilo":
        frame = load_hilo(root, job.files, settings)
    elif "edf" in job.files and "txt" in job.files:
        frame = load_single(root, job.files["edf"], job.files["txt"], settings)
    else:
        raise AnalysisError("needs an EDF image and its sidecar")
    return reduce_frame(frame, job.poni_text, settings, integrators)


def _write(root: Path, job: ScanJob, settings: Settings, reduction: Reduction, started: float) -> ScanOutcome:
    frame = reduction.frame
    info = {"calibration": job.calibration, "scan_key": job.scan_key}
    paths = write_all(reduction, root / job.out_folder, job.stem, settings=settings, info=info)
    outputs = [Output(p.relative_to(root).as_posix(), p.stat().st_size, hash_file(p, settings.checksum))
               for p in paths]
    return ScanOutcome(job.scan_key, True, outputs, merge=frame.merge, grazing=reduction.gi is not None,
                       incident_angle_deg=frame.alpha_deg, monitor=frame.monitor_name,
                       seconds=time.monotonic() - started, notes=frame.notes, software=software_versions())


def _write_or_fail(root: Path, job: ScanJob, settings: Settings, reduction: Reduction,
                   started: float) -> ScanOutcome:
    try:
        return _write(root, job, settings, reduction, started)
    except _SCAN_ERRORS as exc:
        return _failed(job, exc, started)


def _failed(job: ScanJob, exc: BaseException, started: float) -> ScanOutcome:
    if isinstance(exc, AnalysisError):
        message = exc.bare_message if exc.scan in (None, job.scan_key) else str(exc)
    elif isinstance(exc, SplashFlowsError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return ScanOutcome(job.scan_key, False, error=message, seconds=time.monotonic() - started)


def write_manifest(path: Path, root: str, jobs: list[ScanJob], settings: Settings) -> None:
    """The manifest a job runs (``root`` as the job will see it)."""
    data = {"version": MANIFEST_VERSION, "root": root, "settings": settings.as_dict(),
            "scans": [asdict(j) for j in jobs]}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def read_manifest(path: Path) -> tuple[Path, list[ScanJob], Settings]:
    """Parse a manifest. Raises ``AnalysisError`` if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        return Path(data["root"]), [ScanJob(**s) for s in data["scans"]], Settings.from_dict(data["settings"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnalysisError(f"not a readable analysis manifest: {exc}", scan=str(path)) from exc


def run_manifest(manifest: Path, results: Path) -> list[ScanOutcome]:
    """Run every scan of ``manifest`` and write ``results`` (atomically): the entry point of a Slurm job."""
    root, jobs, settings = read_manifest(manifest)
    outcomes = run_scans(root, jobs, settings, Integrators())
    tmp = results.with_name(f".{results.name}.part")
    tmp.write_text(json.dumps({"version": MANIFEST_VERSION, "software": software_versions(),
                               "scans": [o.as_dict() for o in outcomes]}, indent=1), encoding="utf-8")
    os.replace(tmp, results)
    return outcomes


def read_results(path: Path) -> list[ScanOutcome]:
    """Parse a results file written by ``run_manifest``. Raises ``AnalysisError`` if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [ScanOutcome.from_dict(s) for s in data["scans"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnalysisError(f"not a readable results file: {exc}", scan=str(path)) from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m splash_flows.analysis.job MANIFEST [--results FILE]``: exit 0 when every scan was reduced,
    1 when some failed (each named on stderr), 2 when the manifest cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m splash_flows.analysis.job", description=__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--results", type=Path, default=None, help="default: MANIFEST with .results.json")
    args = parser.parse_args(argv)
    results = args.results or args.manifest.with_suffix(".results.json")
    try:
        outcomes = run_manifest(args.manifest, results)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"error: {o.scan_key}: {o.error}", file=sys.stderr)
    print(f"reduced {len(outcomes) - len(failed)} of {len(outcomes)} scan(s); results in {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
