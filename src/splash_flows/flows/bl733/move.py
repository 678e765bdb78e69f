"""``new_file_733``: the seed's move flow. Copy new data733 files to lamarr and cfs concurrently, verify.

Thin: each task calls one function of ``splash_flows.services.move``. Copy tasks are never cached
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
from splash_flows.ledger import SourceRecord
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
    try:
        cat = catalogue_task(passthrough(ctx), [s.path for s in reg.sources])
        summary["catalogue"] = {**cat.summary(), "pending_scans": cat.all_pending()}
    except BatchError as err:
        errors.update({f"{k} (catalogue)": e for k, e in err.failures.items()})
    except SplashFlowsError as err:
        errors["catalogue"] = err
    summary["prune_scheduled"] = len(schedule_prune_task(passthrough(ctx), passthrough(reg.sources)).changed)
    if errors:
        raise BatchError("file steps", errors, total=len(paths) * max(1, len(futures)))
    logger.info("verified %d file(s) on %s", len(reg.sources), ", ".join(futures))
    return summary
