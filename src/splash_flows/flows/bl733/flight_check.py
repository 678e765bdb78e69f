"""``flight_check_733``: every 12 hours, do the 7.3.3 credentials work? Globus (credentials, consents, a probe
moved end to end: ``splash_flows.services.flight_check``), then the NERSC SFAPI key (validity and expiry date) and
the SciCat account (``splash_flows.monitoring.credentials``). The run is Failed, listing every failed check, when
anything does not work.
Deployment entrypoint: ``splash_flows/flows/bl733/flight_check.py:flight_check_733``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from splash_flows.context import Context, context_from_path
from splash_flows.errors import FlightCheckFailed
from splash_flows.flows.common import passthrough
from splash_flows.monitoring.credentials import check_other_services, nothing_to_check, uses_globus
from splash_flows.services.flight_check import FlightReport, run_flight_check


@task(name="globus_flight_check", cache_policy=NO_CACHE, timeout_seconds=3 * 3600)
def flight_check_task(ctx: Context, probe: bool) -> FlightReport:
    """Credentials, consents, each collection's root, and a probe moved end to end (moves and deletes files)."""
    return run_flight_check(ctx, probe=probe)


@task(name="credential_preflight", cache_policy=NO_CACHE, timeout_seconds=600)
def credentials_task(ctx: Context, report: FlightReport) -> FlightReport:
    """The NERSC SFAPI key (file, token, expiry) and the SciCat account, added to ``report``."""
    check_other_services(ctx.config, report)
    return report


@flow(name="flight_check_733", validate_parameters=True)
def flight_check_733(config_path: str | None = None, probe: bool = True) -> dict[str, Any]:
    """Check the credentials of the 7.3.3 deployment; Completed only if every check passed."""
    logger = get_run_logger()
    ctx = context_from_path(config_path)
    try:
        if uses_globus(ctx.config):
            report = flight_check_task(passthrough(ctx), probe)
        else:
            report = FlightReport(started_at=datetime.now(UTC))
        report = credentials_task(passthrough(ctx), report)
    finally:
        ctx.close()
    if not report.checks:
        report.checks.append(nothing_to_check())
    for c in report.checks:
        (logger.info if c.ok else logger.error)("%s: %s: %s%s", c.name, c.result, c.detail,
                                                f" -> {c.hint}" if c.hint else "")
    if not report.ok:
        raise FlightCheckFailed(report.summary())
    return report.to_json()
