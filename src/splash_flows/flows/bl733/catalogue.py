"""The catalogue task of ``new_file_733`` (seed ``move.py`` step 3). Thin: ``services.catalogue`` does the work.

How its outcome shows in Prefect (see ``services/catalogue.py`` for the reasons):

* scans the catalogue refused (4xx) -> the task is Failed naming each scan and cause, and so is the run;
* scans left ``pending_catalogue`` (outage, or files still on their way) -> the task is Completed with a
  WARNING, and the flow run ends Completed under the state name ``CataloguePending`` (``pending_state``).

``catalogue_retry_733`` is the clock: deployed with a one-minute schedule, it retries pending scans (a scan
waiting for its sidecar is catalogued within a minute of its wait ending, with what exists and the missing files
named) and heals what an interrupted run left behind (``services.reconcile.heal``), whether or not other runs
come.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.states import Completed

from splash_flows.context import Context, context_from_path
from splash_flows.flows.common import _exception_of, repeated
from splash_flows.services import catalogue
from splash_flows.services.reconcile import heal

#: Name of the Completed state of a run whose transfers are verified but whose catalogue step is pending.
CATALOGUE_PENDING_STATE = "CataloguePending"


def _retry_catalogue(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry the step only on a transient error (ledger hiccup); per-scan trouble is already in the report."""
    err = _exception_of(state)
    return err is not None and catalogue.is_transient(err)


@task(name="catalogue", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=_retry_catalogue)
def catalogue_task(ctx: Context, paths: list[str]) -> catalogue.CatalogueReport:
    """Catalogue the batch's scans (retrying earlier pending ones first). Failed if the catalogue refused a
    scan; Completed with a WARNING if scans are left pending."""
    logger = get_run_logger()
    report = catalogue.catalogue_batch(ctx, paths)
    logger.info("%s", report.describe())
    pending = report.all_pending()
    if pending:
        repeated.log(logger, "catalogue pending", frozenset(pending.items()),
                     "catalogue PENDING for %d scan(s) (the transfers are verified; the ingest is retried later "
                     "from the ledger): %s", len(pending), _first(pending))
    report.raise_for_failures()
    return report


def pending_state(summary: dict[str, Any]) -> State[Any] | None:
    """The run's final state when its catalogue step left scans pending (None otherwise): Completed, named
    ``CataloguePending``, with a message saying how many scans wait and why."""
    info = summary.get("catalogue") or {}
    waiting = info.get("pending_scans") or {}
    if not waiting:
        return None
    message = (f"transfers verified; catalogue pending for {len(waiting)} scan(s), retried later from the ledger: "
               f"{_first(waiting)}")
    return Completed(name=CATALOGUE_PENDING_STATE, message=message, data=summary)


def _first(pending: dict[str, str]) -> str:
    key, reason = next(iter(pending.items()))
    more = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
    return f"{key}: {reason}{more}"


@flow(name="catalogue_retry_733", flow_run_name="catalogue_retry_733", validate_parameters=True)
def catalogue_retry_733(config_path: str | None = None) -> dict[str, Any] | State[Any]:
    """Retry pending scans and heal the ledger's invariant (see the module docstring); Failed if the
    catalogue refused a scan, Completed (named ``CataloguePending`` while scans still wait) otherwise."""
    logger = get_run_logger()
    ctx = context_from_path(config_path)
    try:
        report = heal(ctx)
    finally:
        ctx.close()
    logger.info("%s", report.describe())
    summary = report.summary()
    if report.catalogue is not None:
        report.catalogue.raise_for_failures()
        summary["catalogue"] = {**report.catalogue.summary(), "pending_scans": report.catalogue.all_pending()}
    return pending_state(summary) or summary
