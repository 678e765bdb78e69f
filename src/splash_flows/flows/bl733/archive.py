"""``archive_733`` (the seed's "Scheduled HPSS Transfer", nightly) and ``restore_drill_733`` (weekly).

Thin: each task calls one function of ``splash_flows.services.archive.service``. One task run per bundle, so
the UI shows progress bundle by bundle; the flow ends Failed when any bundle failed (each named with its
members) or the catalogue refused a datablock. A catalogue outage leaves the archive done and the datablocks
pending (the run is Completed). The drill ends Failed when the restored file did not come back identical.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from splash_flows.context import Context, context_from_path
from splash_flows.errors import SplashFlowsError, VerificationError
from splash_flows.flows.common import passthrough
from splash_flows.ledger import archive as la
from splash_flows.services.archive import service as svc


@task(name="plan_bundles", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def plan_task(ctx: Context) -> int:
    """Record the new bundles for the archivable files (idempotent)."""
    return len(svc.record_new_bundles(ctx))


@task(name="write_bundle", cache_policy=NO_CACHE, task_run_name="bundle-{bundle_id}")
def write_task(ctx: Context, bundle_id: int) -> svc.ArchiveReport:
    """Write and verify one bundle; a failure is carried in the report (the bundle is marked failed)."""
    report = svc.ArchiveReport()
    tier = svc.archive_tier(ctx)
    (bundle,) = la.bundles(ctx.ledger, tier.name, ids=[bundle_id])
    svc.write_one(ctx, tier, ctx.tier(ctx.config.archive.source), bundle, report)
    return report


@task(name="catalogue_bundles", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[10])
def catalogue_task(ctx: Context, report: svc.ArchiveReport) -> svc.ArchiveReport:
    """Datablocks of the verified bundles still pending (an outage leaves them pending)."""
    svc.catalogue_pending(ctx, report)
    return report


@flow(name="archive_733", validate_parameters=True)
def archive_733(config_path: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Archive what is verified on cfs to hpss in verified bundles; Failed if any bundle failed."""
    ctx = context_from_path(config_path)
    try:
        return run_archive(ctx, limit=limit)
    finally:
        ctx.close()


def run_archive(ctx: Context, *, limit: int | None = None) -> dict[str, Any]:
    """The body of ``archive_733`` for an already-built context."""
    logger = get_run_logger()
    total = svc.ArchiveReport(planned=plan_task(passthrough(ctx)))
    tier = svc.archive_tier(ctx)
    todo = la.bundles(ctx.ledger, tier.name, states=svc.OPEN_STATES)[: limit or ctx.config.archive.max_bundles_per_run]
    for bundle in todo:
        r = write_task(passthrough(ctx), bundle.id)
        total.verified += r.verified
        total.failed.update(r.failed)
        total.files += r.files
        total.bytes += r.bytes
    catalogue_task(passthrough(ctx), total)
    logger.info("%s", total.summary())
    total.raise_for_failures()
    return total.as_dict()


@flow(name="restore_drill_733", validate_parameters=True)
def restore_drill_733(config_path: str | None = None) -> dict[str, Any]:
    """Restore a random archived file to scratch and verify it; the result is recorded for `status`."""
    ctx = context_from_path(config_path)
    try:
        result = svc.restore_drill(ctx)
    finally:
        ctx.close()
    get_run_logger().info("restore drill: %s", result.as_dict())
    if not result.ok:
        if result.path is None:
            raise SplashFlowsError(f"restore drill could not run: {result.reason}")
        raise VerificationError(f"restore drill failed for {result.path} from bundle {result.bundle}: "
                                f"{result.reason}")
    return result.as_dict()
