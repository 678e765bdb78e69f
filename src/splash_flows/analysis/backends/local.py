"""The ``local`` backend: a pool of worker processes on this machine (the default; what ``make demo`` uses).

The pool lives as long as the process that made it (a runner or CLI), so each worker builds the integrator of a
geometry once and keeps it across batches. Workers are started with ``spawn`` (the calling process may run
threads, which ``fork`` would copy in an unknown state) and capped to ``cores // workers`` OpenMP threads each
(``worker_init``: pyFAI's OpenMP would otherwise oversubscribe the cores). One worker, or one scan, runs in this
process instead.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from splash_flows.analysis.backends.base import ProgressFn
from splash_flows.analysis.job import ScanJob, ScanOutcome, run_scan
from splash_flows.analysis.reduce import Settings
from splash_flows.analysis.worker_init import init_worker

log = logging.getLogger(__name__)

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers,
                                                         mp_context=multiprocessing.get_context("spawn"),
                                                         initializer=init_worker, initargs=(workers,))
        return pool


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
            outcomes = []
            for job in jobs:
                outcome = run_scan(self.root, job, settings)
                outcomes.append(outcome)
                if progress is not None:
                    progress(outcome)
            return outcomes
        pool = _pool(self.workers)
        futures: list[Future[ScanOutcome]] = [pool.submit(run_scan, self.root, job, settings) for job in jobs]
        results: list[ScanOutcome] = []
        broken = False
        for job, future in zip(jobs, futures, strict=True):
            try:
                outcome = future.result()
            except BrokenProcessPool as exc:
                broken = True
                outcome = ScanOutcome(job.scan_key, False, error=f"the worker process died: {exc}")
            results.append(outcome)
            if progress is not None:
                progress(outcome)
        if broken:
            log.error("a local analysis worker died; the pool is replaced")
            _drop_pool(self.workers)
        return results
