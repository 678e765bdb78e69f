"""``prune_733``: the seed's scheduled pruning flow (deployed hourly), and the move flow's scheduling task.

Thin: each task calls one function of ``splash_flows.services.prune`` (policy, claims, re-verification and
audit are all there). One task run per batch of files, so the UI shows progress; the flow ends Failed when
any due copy was not deleted, listing every refusal and every copy found at risk. Tasks that delete are
never cached (``NO_CACHE``) and never retried by Prefect: a refused deletion is re-examined by the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from splash_flows.context import Context, context_from_path
from splash_flows.errors import BatchError
from splash_flows.flows.common import failed_state, passthrough
from splash_flows.ledger import SourceRecord
from splash_flows.services import prune


@task(name="schedule_prune", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def schedule_prune_task(ctx: Context, sources: list[SourceRecord]) -> prune.ScheduleReport:
    """Give every copy of the moved files its prune due date (the seed's "schedule pruning in 6 months")."""
    return prune.schedule_prune(ctx, sources)


@task(name="prune_batch", cache_policy=NO_CACHE, task_run_name="prune-after-{after_file_id}")
def prune_batch_task(ctx: Context, owner: str, tier: str | None, after_file_id: int,
                     batch_size: int) -> tuple[prune.PruneReport, int | None]:
    """Claim, re-verify and delete what is due in one batch of files; refusals are carried in the report."""
    return prune.prune_batch(ctx, owner=owner, tier=tier, after_file_id=after_file_id, batch_size=batch_size)


def _run_name() -> str:
    return f"prune_733-{flow_run.parameters.get('tier') or 'all'}"


@flow(name="prune_733", flow_run_name=_run_name, validate_parameters=True)
def prune_733(config_path: str | None = None, tier: str | None = None,
              limit: int = 1000) -> dict[str, Any] | State[Any]:
    """Delete what the retention policy says is due now (at most ``limit`` files), re-verifying every copy the
    policy requires first; Failed if any due copy was refused or found at risk."""
    ctx = context_from_path(config_path)
    try:
        return run_prune(ctx, tier=tier, limit=limit)
    except BatchError as err:  # refused or at-risk copies: one line in the log and the run state
        return failed_state(err)
    finally:
        ctx.close()


def run_prune(ctx: Context, *, tier: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """The body of ``prune_733`` for an already-built context: one ``prune_batch`` task per batch."""
    logger = get_run_logger()

    def run_batch(owner: str, after_file_id: int, batch_size: int) -> tuple[prune.PruneReport, int | None]:
        return prune_batch_task(passthrough(ctx), owner, tier, after_file_id, batch_size)

    report = prune.execute_prune(ctx, tier=tier, limit=limit, run_batch=run_batch, check_clock=True)
    logger.info("%s", report.summary())
    report.raise_for_failures()
    return report.as_dict()
