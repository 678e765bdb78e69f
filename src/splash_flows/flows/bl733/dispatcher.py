"""``dispatcher``: the entry point the file watcher triggers (deployment ``run_733_dispatcher``).

Validates a batch of data733 paths (``services.dispatch.validate_batch``), runs the move of ``new_file_733`` for
the valid ones, then the downstream steps later capabilities add. The run is Failed when anything was refused or
any step failed -- but the valid files are still moved first. Run names say which files: ``dispatcher-<first>+N``.

The move runs as ``new_file_733``'s body (``move.run_move``: the same tasks, the same ledger records) inside this
flow run, not as a subflow run -- the seed's "synchronous call to move.py". Measured on a SQLite-backed server
(``splash-flows up``): the subflow's extra run and parent task run collided with other writers, the server
answered 503 and Prefect's client backed off 2-6 s, on one single-file dispatch in five. The ``new_file_733``
deployment still exists for running the move on its own.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from splash_flows.context import Context, context_from_path
from splash_flows.errors import BatchError, SplashFlowsError
from splash_flows.flows.bl733.catalogue import pending_state
from splash_flows.flows.bl733.move import run_move
from splash_flows.flows.common import batch_run_name, failed_state, repeated
from splash_flows.services.dispatch import ValidationReport, validate_batch

#: Refused paths named in the dispatcher's log line (all of them are in the ledger and the run's state data).
REFUSALS_SHOWN = 3


def _run_name() -> str:
    return batch_run_name("dispatcher", list(flow_run.parameters.get("paths", [])))


def _analysis_step(ctx: Context, paths: list[str], *, moved_ok: bool) -> dict[str, Any]:
    """Analyse the batch after its raw files are verified. Never raises: an analysis failure is logged and
    reported in the summary (its task run is Failed), and never fails the dispatch whose raw files are safe."""
    from splash_flows.beamlines.bl733.scans import is_results_path
    from splash_flows.flows.bl733.analysis import run_analysis

    logger = get_run_logger()
    frames = [p for p in paths if not is_results_path(p, ctx.config.analysis.results_folder)]
    if not frames:
        return {"skipped": "no raw frames in this batch"}
    if not moved_ok:
        return {"skipped": "not every file of the batch verified; analysed when the move is re-run"}
    try:
        return run_analysis(ctx, frames)
    except SplashFlowsError as err:
        logger.warning("analysis of this batch failed (the raw files are verified and safe): %s", err)
        return {"failed": str(err)}


@flow(name="dispatcher", flow_run_name=_run_name, validate_parameters=True)
def dispatcher(paths: list[str], config_path: str | None = None) -> dict[str, Any] | State[Any]:
    """Validate a batch of data733 paths and move the valid ones; Failed if any was refused or not moved.

    ``config_path`` None means ``$SPLASH_FLOWS_CONFIG`` of the process running the flow (the worker's).
    """
    logger = get_run_logger()
    ctx = context_from_path(config_path)
    try:
        # a plain call, not a task run: it stats the batch's files and records refusals (no retry to give)
        report: ValidationReport = validate_batch(ctx, paths)
        if report.refused:
            lines = report.refusal_lines()
            shown = "; ".join(lines[:REFUSALS_SHOWN]) + (f"; and {len(lines) - REFUSALS_SHOWN} more"
                                                          if len(lines) > REFUSALS_SHOWN else "")
            repeated.log(logger, "dispatcher refused", frozenset(lines), "%d path(s) refused (recorded in the "
                         "ledger; `splash-flows status --all` lists them): %s", len(lines), shown)
        failures: dict[str, SplashFlowsError] = {f"{p} (refused)": e for p, e in report.refused.items()}
        total = len(report.refused)
        summary: dict[str, Any] = {"requested": len(dict.fromkeys(paths)), "valid": len(report.valid),
                                   "refused": {p: str(e) for p, e in report.refused.items()}, "registered": 0,
                                   "tiers": {}}
        if report.valid:
            try:
                moved = run_move(ctx, report.valid)
                summary.update({k: v for k, v in moved.items() if k != "requested"})
                total += len(report.valid)
            except BatchError as err:
                failures.update(err.failures)
                total += err.total
        # Downstream steps (analysis, ...) that later capabilities add run here, on the files moved above.
        if ctx.config.analysis.enabled:
            summary["analysis"] = _analysis_step(ctx, report.valid, moved_ok=not failures)
    finally:
        ctx.close()
    if failures:  # expected failures: one line in the log and the run state, not a traceback
        return failed_state(BatchError("steps of this dispatch", failures, total=max(total, len(failures))))
    return pending_state(summary) or summary  # Completed, named CataloguePending, if the catalogue must wait
