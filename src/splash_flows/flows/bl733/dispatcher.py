"""``dispatcher``: the entry point the file watcher triggers (deployment ``run_733_dispatcher``).

Validates a batch of data733 paths (``services.dispatch.validate_batch``), runs ``new_file_733`` for the valid
ones, then the downstream steps later capabilities add. The run is Failed when anything was refused or any
step failed -- but the valid files are still moved first. Run names say which files: ``dispatcher-<first>+N``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from splash_flows.context import Context, context_from_path
from splash_flows.errors import BatchError, OrchestrationError, SplashFlowsError
from splash_flows.flows.bl733.move import new_file_733
from splash_flows.flows.common import batch_run_name, passthrough
from splash_flows.services.dispatch import ValidationReport, validate_batch


def _run_name() -> str:
    return batch_run_name("dispatcher", list(flow_run.parameters.get("paths", [])))


@task(name="validate_batch", cache_policy=NO_CACHE)
def validate_task(ctx: Context, paths: list[str]) -> ValidationReport:
    """Refuse paths outside the root, missing, or export-controlled (each recorded in the ledger)."""
    return validate_batch(ctx, paths)


def move_failures(state: State[Any]) -> tuple[dict[str, SplashFlowsError], int]:
    """The per-file failures of a finished ``new_file_733`` run that did not complete, and how many steps it had."""
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchError):
        return dict(outcome.failures), outcome.total
    if isinstance(outcome, SplashFlowsError):
        return {"new_file_733": outcome}, 1
    return {"new_file_733": OrchestrationError(f"new_file_733 ended {state.name}: {state.message}")}, 1


@flow(name="dispatcher", flow_run_name=_run_name, validate_parameters=True)
def dispatcher(paths: list[str], config_path: str | None = None) -> dict[str, Any]:
    """Validate a batch of data733 paths and move the valid ones; Failed if any was refused or not moved.

    ``config_path`` None means ``$SPLASH_FLOWS_CONFIG`` of the process running the flow (the worker's).
    """
    logger = get_run_logger()
    ctx = context_from_path(config_path)
    try:
        report = validate_task(passthrough(ctx), paths)
    finally:
        ctx.close()
    for line in report.refusal_lines():
        logger.warning("%s", line)
    failures: dict[str, SplashFlowsError] = {f"{p} (refused)": e for p, e in report.refused.items()}
    total = len(report.refused)
    summary: dict[str, Any] = {"requested": len(dict.fromkeys(paths)), "valid": len(report.valid),
                               "refused": {p: str(e) for p, e in report.refused.items()}, "registered": 0,
                               "tiers": {}}
    if report.valid:
        state = new_file_733(paths=report.valid, config_path=config_path, return_state=True)
        if state.is_completed():
            moved: dict[str, Any] = state.result()
            summary.update({k: v for k, v in moved.items() if k != "requested"})
            total += len(report.valid)
        else:
            moved_failures, steps = move_failures(state)
            failures.update(moved_failures)
            total += steps
    # Downstream steps (analysis, ...) that later capabilities add run here, on the files moved above.
    if failures:
        raise BatchError("steps of this dispatch", failures, total=max(total, len(failures)))
    return summary
