"""``analysis_733``: the seed's HPC downstream analysis flow (deployment on ``analysis_733_pool``).

Thin: one task calls ``splash_flows.analysis.service.analyse_paths`` (scans, calibration, backend, ledger,
delivery of the results, derived datasets). The dispatcher runs the same body (``run_analysis``) after each
batch's move when ``analysis.enabled`` -- in its own run, after the raw files are verified, and an analysis
failure never fails the dispatcher (see ``dispatcher.py``). Run on its own, the flow is Failed when a scan's
reduction failed, and Completed under the name ``CalibrationPending`` when scans wait for a calibration.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed

from splash_flows.context import Context, context_from_path
from splash_flows.flows.common import batch_run_name, passthrough

#: Name of the Completed state of a run whose scans (some) wait for a calibration.
CALIBRATION_PENDING_STATE = "CalibrationPending"


@task(name="analyse", cache_policy=NO_CACHE)
def analyse_task(ctx: Context, paths: list[str], backend: str | None = None) -> dict[str, Any]:
    """Reduce the scans of ``paths`` on the configured backend; Failed naming every scan that failed."""
    from splash_flows.analysis import service

    logger = get_run_logger()
    chosen = service.build_backend(ctx, backend)
    report = service.analyse_paths(ctx, paths, backend=chosen)
    logger.info("%s", report.describe())
    for key, why in report.pending.items():
        logger.warning("scan %s waits for a calibration: %s", key, why)
    for key, why in report.catalogue_waiting.items():
        logger.warning("scan %s: %s", key, why)
    report.raise_for_failures()
    return report.summary()


def run_analysis(ctx: Context, paths: list[str], backend: str | None = None) -> dict[str, Any]:
    """The body of ``analysis_733`` for an already-built context (also run by the dispatcher)."""
    return analyse_task(passthrough(ctx), paths, backend)


def pending_calibration_state(summary: dict[str, Any]) -> State[Any] | None:
    """Completed, named ``CalibrationPending``, when scans wait for a calibration (None otherwise)."""
    waiting = summary.get("pending") or {}
    if not waiting:
        return None
    key = next(iter(waiting))
    return Completed(name=CALIBRATION_PENDING_STATE, data=summary,
                     message=f"{len(waiting)} scan(s) wait for a calibration (first: {key}); add one with "
                     "`splash-flows calibration add`, then `splash-flows analyse --pending`")


def _run_name() -> str:
    return batch_run_name("analysis_733", list(flow_run.parameters.get("paths", [])))


@flow(name="analysis_733", flow_run_name=_run_name, validate_parameters=True)
def analysis_733(paths: list[str], config_path: str | None = None,
                 backend: str | None = None) -> dict[str, Any] | State[Any]:
    """Reduce the scans of a batch of data733 paths (I(q), q_ip/q_oop maps), deliver and catalogue the results."""
    ctx = context_from_path(config_path)
    try:
        summary = run_analysis(ctx, paths, backend)
    finally:
        ctx.close()
    return pending_calibration_state(summary) or summary
