"""``new_file_733``: the seed's move flow. Copy new data733 files to lamarr and cfs concurrently, verify.

Thin: each task calls one function of ``splash_flows.services.move``. Copy tasks are never cached
(``NO_CACHE``): whether a copy exists is checked on the destination itself, every run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from splash_flows.context import Context, context_from_path
from splash_flows.errors import BatchError, SplashFlowsError
from splash_flows.flows.common import batch_run_name, passthrough, retry_transient
from splash_flows.ledger import EventKind, SourceRecord
from splash_flows.services import move


@task(name="register_sources", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def register_task(ctx: Context, paths: list[str]) -> move.RegisterReport:
    """Checksum new source files and record them in the ledger (failures are carried in the report)."""
    return move.register_sources(ctx, paths)


@task(name="copy_to_tier", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_transient, task_run_name="copy-to-{target}")
def copy_task(ctx: Context, sources: list[SourceRecord], target: str) -> move.TierReport:
    """Copy and verify a batch on one tier; Failed (with every reason) if any file did not verify."""
    report = move.copy_to_tier(ctx, sources, target)
    if report.failed:
        raise BatchError(f"copies to {target}", report.failed, total=len(sources))
    return report


def _run_name() -> str:
    return batch_run_name("new_file_733", list(flow_run.parameters.get("paths", [])))


@flow(name="new_file_733", flow_run_name=_run_name, validate_parameters=True)
def new_file_733(paths: list[str], config_path: str | None = None) -> dict[str, Any]:
    """Move a batch of data733 files to every target tier; Completed only if every copy verified."""
    ctx = context_from_path(config_path)
    try:
        return run_move(ctx, paths)
    finally:
        ctx.close()


def run_move(ctx: Context, paths: list[str]) -> dict[str, Any]:
    """The body of ``new_file_733`` for an already-built context (also used by the dispatcher)."""
    logger = get_run_logger()
    reg = register_task(passthrough(ctx), paths)
    futures = {t: copy_task.submit(passthrough(ctx), passthrough(reg.sources), t) for t in ctx.config.move.targets}
    errors: dict[str, SplashFlowsError] = {f"{p} (register)": e for p, e in reg.failed.items()}
    summary: dict[str, Any] = {"requested": len(paths), "registered": len(reg.sources), "tiers": {}}
    for target, fut in futures.items():
        try:
            rep = fut.result()
            summary["tiers"][target] = {"copied": len(rep.copied), "skipped": len(rep.skipped)}
        except BatchError as err:
            errors.update({f"{p} -> {target}": e for p, e in err.failures.items()})
            summary["tiers"][target] = {"failed": len(err.failures)}
        except SplashFlowsError as err:
            errors[f"* -> {target}"] = err
    for step in ("catalogue", "schedule_prune"):
        ctx.ledger.record_event(EventKind.STEP_NOT_RUN, detail={"step": step, "reason": "not configured yet",
                                                                "files": len(reg.sources)})
    if errors:
        raise BatchError("file steps", errors, total=len(paths) * max(1, len(futures)))
    logger.info("verified %d file(s) on %s", len(reg.sources), ", ".join(futures))
    return summary
