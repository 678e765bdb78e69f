"""Start-up of a local pool worker, in a module that imports nothing heavy (it must run before pyFAI is loaded).

pyFAI's histogram engines use OpenMP, which by default starts one thread per core in EVERY process: ``n``
workers on ``n`` cores then run ``n x n`` busy-waiting threads and the pool is slower than one process
(bench/reduce.py measured 0.8 frames/s on 2 workers against 1.1 in one process). Each worker gets
``cores // workers`` threads instead, unless the operator set ``OMP_NUM_THREADS`` themselves.
"""

from __future__ import annotations

import os

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads each of ``workers`` processes may use so that together they fill ``cores`` (at least 1)."""
    return max(1, (cores if cores is not None else (os.cpu_count() or 1)) // max(1, workers))


def init_worker(workers: int) -> None:
    """Pool initializer: cap the OpenMP / BLAS threads of this worker (kept if already set in the environment)."""
    threads = str(threads_per_worker(workers))
    for name in _THREAD_VARS:
        os.environ.setdefault(name, threads)
