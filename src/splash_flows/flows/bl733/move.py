"""``new_file_733``: the seed's move flow. Copy new data733 files to lamarr and cfs concurrently, verify.

Thin: each task calls one function of ``splash_flows.services.move``. Coarse: three task runs per batch
(register, copy and verify on every tier in one -- the sources' ledger transaction commits while the copies
are written --, catalogue, schedule pruning), whatever the number of files or tiers: each task run costs
Prefect state changes on the server. Copy tasks are never cached
(``NO_CACHE``): whether a copy exists is checked on the destination itself, every run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from splash_flows.context import Context, context_from_path
from splash_flows.errors import BatchError, SplashFlowsError
from splash_flows.flows.bl733.catalogue import catalogue_task, pending_state
from splash_flows.flows.bl733.prune import schedule_prune_task
from splash_flows.flows.common import batch_run_name, failed_state, passthrough, retry_transient
from splash_flows.services import move


@task(name="register_copy_verify", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient)
def move_task(ctx: Context, paths: list[str], targets: list[str]) -> move.MoveReport:
    """Register the batch and copy it to every target tier at once (``move.move_files``: the sources' ledger
    transaction commits while the copies are written and verified; a copy is named only once its source is
    committed). Files that could not be registered are carried in the report; Failed, with every reason, if
    any copy did not verify (``MoveFailed`` keeps the report for the steps after it). A retry registers again
    (known files are not re-read), finds the copies that verified and copies what is missing."""
    report = move.move_files(ctx, paths, targets)
    failed = {f"{p} -> {t}": e for t, rep in report.tiers.items() for p, e in rep.failed.items()}
    if failed:
        raise move.MoveFailed("copies", failed, report, total=len(report.register.sources) * max(1, len(targets)))
    for target, rep in report.tiers.items():
        get_run_logger().info("%s: %d copied, %d already there, all verified", target, len(rep.copied),
                              len(rep.skipped))
    return report


def _run_name() -> str:
    return batch_run_name("new_file_733", list(flow_run.parameters.get("paths", [])))


@flow(name="new_file_733", flow_run_name=_run_name, validate_parameters=True)
def new_file_733(paths: list[str], config_path: str | None = None) -> dict[str, Any] | State[Any]:
    """Move a batch of data733 files to every target tier; Completed only if every copy verified."""
    ctx = context_from_path(config_path)
    try:
        summary = run_move(ctx, paths)
    except BatchError as err:  # expected failures: one line in the log and the run state, not a traceback
        return failed_state(err)
    finally:
        ctx.close()
    return pending_state(summary) or summary  # Completed, named CataloguePending, if the catalogue must wait


def run_move(ctx: Context, paths: list[str]) -> dict[str, Any]:
    """The body of ``new_file_733`` for an already-built context (also used by the dispatcher)."""
    logger = get_run_logger()
    targets = list(ctx.config.move.targets)
    summary: dict[str, Any] = {"requested": len(paths), "registered": 0, "tiers": {}}
    copy_errors: dict[str, SplashFlowsError] = {}
    try:
        moved = move_task(passthrough(ctx), paths, targets)
        summary["tiers"] = {t: {"copied": len(r.copied), "skipped": len(r.skipped)} for t, r in moved.tiers.items()}
    except move.MoveFailed as err:
        moved, copy_errors = err.report, dict(err.failures)
        for target in targets:
            failed = sum(1 for k in err.failures if k.endswith(f" -> {target}"))
            summary["tiers"][target] = {"failed": failed} if failed else {"verified": len(moved.register.sources)}
    except SplashFlowsError as err:  # nothing registered or recorded (the ledger failed): no step after it can run
        raise BatchError("file steps", {"* -> move": err}, total=len(paths) * max(1, len(targets))) from err
    reg = moved.register
    errors: dict[str, SplashFlowsError] = {f"{p} (register)": e for p, e in reg.failed.items()}
    errors.update(copy_errors)
    summary["registered"] = len(reg.sources)
    try:
        cat = catalogue_task(passthrough(ctx), [s.path for s in reg.sources])
        summary["catalogue"] = {**cat.summary(), "pending_scans": cat.all_pending()}
    except BatchError as err:
        errors.update({f"{k} (catalogue)": e for k, e in err.failures.items()})
    except SplashFlowsError as err:
        errors["catalogue"] = err
    summary["prune_scheduled"] = len(schedule_prune_task(passthrough(ctx), passthrough(reg.sources)).changed)
    if errors:
        raise BatchError("file steps", errors, total=len(paths) * max(1, len(targets)))
    logger.info("verified %d file(s) on %s", len(reg.sources), ", ".join(targets))
    return summary
