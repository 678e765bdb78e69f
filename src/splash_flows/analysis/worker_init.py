"""Start-up of a local pool worker, in a module that imports nothing heavy (it must run before pyFAI is loaded).

pyFAI's histogram engines use OpenMP, which by default starts one thread per core in EVERY process: ``n``
workers on ``n`` cores then run ``n x n`` busy-waiting threads and the pool is slower than one process
(bench/reduce.py measured 0.8 frames/s on 2 workers against 1.1 in one process). Each worker gets
``cores // workers`` threads instead, unless the operator set ``OMP_NUM_THREADS`` themselves.

Then the worker builds the integrators of the geometries it was started for (``Integrators.prepare``), so the
seconds pyFAI spends on a geometry's first frame are spent once per worker, at start-up, by all workers at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

log = logging.getLogger(__name__)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads each of ``workers`` processes may use so that together they fill ``cores`` (at least 1)."""
    return max(1, (cores if cores is not None else (os.cpu_count() or 1)) // max(1, workers))


def init_worker(workers: int, poni_texts: tuple[str, ...] = (), settings: dict[str, Any] | None = None) -> None:
    """Pool initializer: cap the OpenMP / BLAS threads of this worker (kept if already set in the environment),
    then prepare the integrators of ``poni_texts`` with ``settings`` (``Settings.as_dict``). A geometry that
    cannot be prepared is left alone: the scans that use it report why (an initializer that raised would break
    the whole pool)."""
    threads = str(threads_per_worker(workers))
    for name in _THREAD_VARS:
        os.environ.setdefault(name, threads)
    if not poni_texts or settings is None:
        return
    from splash_flows.analysis import outputs
    from splash_flows.analysis.job import process_integrators  # imports pyFAI: after the thread caps
    from splash_flows.analysis.reduce import Settings
    from splash_flows.errors import SplashFlowsError

    outputs.prepare()
    integrators, parsed = process_integrators(), Settings.from_dict(settings)
    for poni in poni_texts:
        try:
            integrators.prepare(poni, parsed)
        except (SplashFlowsError, OSError, ValueError, RuntimeError, MemoryError, KeyError, IndexError,
                TypeError) as exc:
            log.warning("analysis worker could not prepare a geometry (its scans will say why): %s", exc)
