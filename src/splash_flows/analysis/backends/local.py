"""The ``local`` backend: a pool of worker processes on this machine (the default; what ``make demo`` uses).

The pool lives as long as the process that made it (a runner or CLI), so each worker builds the integrator of a
geometry once and keeps it across batches: the geometries of the batch that starts the pool are built by every
worker at start-up (``worker_init``), later ones on their first frame. Workers are started with ``spawn`` (the
calling process may run threads, which ``fork`` would copy in an unknown state) and capped to ``cores // workers``
OpenMP threads each (pyFAI's OpenMP would otherwise oversubscribe the cores). A worker is sent a chunk of scans
(paths and the PONI text, never pixels) and runs them pipelined (``run_scans``: the next frame is integrated
while the last one's outputs are written). One worker, or one scan, runs in this process instead.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from splash_flows.analysis.backends.base import ProgressFn
from splash_flows.analysis.job import ScanJob, ScanOutcome, run_scans
from splash_flows.analysis.reduce import Settings
from splash_flows.analysis.worker_init import init_worker

log = logging.getLogger(__name__)

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


#: Most scans sent to a worker at once (a chunk's outcomes come back together: progress moves per chunk).
MAX_CHUNK = 8


def _pool(workers: int, jobs: Sequence[ScanJob] = (), settings: Settings | None = None) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            ponis = tuple(dict.fromkeys(job.poni_text for job in jobs))
            pool = _POOLS[workers] = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                initargs=(workers, ponis, settings.as_dict() if settings is not None else None))
        return pool


def chunks(jobs: Sequence[ScanJob], workers: int) -> list[list[ScanJob]]:
    """Consecutive chunks of ``jobs``: about two per worker (so a slow chunk does not leave a worker idle at the
    end), at most ``MAX_CHUNK`` scans each."""
    size = max(1, min(MAX_CHUNK, math.ceil(len(jobs) / (2 * max(1, workers)))))
    return [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]


def _drop_pool(workers: int) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def shutdown_pools() -> None:
    """Stop every worker process (also called at interpreter exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


class LocalBackend:
    """Reduce scans in ``workers`` processes reading from and writing to ``root`` (the source tier's folder)."""

    name = "local"

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self.workers = workers

    def run(self, jobs: Sequence[ScanJob], settings: Settings, progress: ProgressFn | None = None) -> list[ScanOutcome]:
        """One outcome per job, in order; a worker that dies is that scan's error (and the pool is renewed)."""
        if not jobs:
            return []
        if self.workers == 1 or len(jobs) == 1:
            return run_scans(self.root, jobs, settings, progress=progress)
        pool = _pool(self.workers, jobs, settings)
        parts = chunks(jobs, self.workers)
        futures: list[Future[list[ScanOutcome]]] = [pool.submit(run_scans, self.root, part, settings)
                                                    for part in parts]
        results: list[ScanOutcome] = []
        broken = False
        for part, future in zip(parts, futures, strict=True):
            try:
                outcomes = future.result()
            except BrokenProcessPool as exc:
                broken = True
                outcomes = [ScanOutcome(job.scan_key, False, error=f"the worker process died: {exc}") for job in part]
            for outcome in outcomes:
                results.append(outcome)
                if progress is not None:
                    progress(outcome)
        if broken:
            log.error("a local analysis worker died; the pool is replaced")
            _drop_pool(self.workers)
        return results
