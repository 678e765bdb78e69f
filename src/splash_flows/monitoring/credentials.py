"""Credential preflight: does every credential this deployment needs work right now, and when does it lapse?

Run by ``splash-flows check`` and by the ``flight_check_733`` flow; each line says plainly what is wrong and
what to do:

- **globus** (when a tier is of kind globus): the client secret obtains a token the Transfer service accepts,
  and each collection's root can be listed (a missing data_access consent fails there). The checks of
  ``services.flight_check`` without the probe transfer.
- **sfapi** (when ``sfapi:`` is configured): the key file exists, is mode 600 (sfapi-client refuses anything
  else), parses (a PEM key whose first line is the 13-character client id, or a JSON file
  ``{"client_id", "secret": <JWK>}``), and obtains a token from NERSC (an expired or revoked client fails
  here); its expiry date (``sfapi.expires``, as Iris shows it) is reported, and warned about within
  ``alerts.credential_warn_days``.
- **scicat** (when the catalogue is SciCat): the functional account logs in (and, where the catalogue adapter
  offers it, may create datasets and attach their files).

Plain functions over a ``Config``; they return ``CheckResult`` lines and never raise for a check that fails.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from splash_flows import sfapi
from splash_flows.config import Config, GlobusTierConfig, SciCatCatalogueConfig, SfapiCredentialsConfig
from splash_flows.errors import CatalogueError, ConfigError, CredentialError, SplashFlowsError
from splash_flows.monitoring.alerts import Expiry
from splash_flows.services.flight_check import CheckResult, FlightReport

SFAPI_RENEW = sfapi.RENEW


def _utcnow() -> datetime:
    return datetime.now(UTC)


def parse_expiry(text: str) -> datetime:
    """``YYYY-MM-DD`` (end of that day, UTC) or an ISO date-time (UTC when no zone is given)."""
    try:
        if len(text.strip()) == 10:
            day = datetime.strptime(text.strip(), "%Y-%m-%d")
            return day.replace(hour=23, minute=59, second=59, tzinfo=UTC)
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"sfapi.expires: {text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sfapi_expiry(config: Config) -> Expiry | None:
    """The SFAPI client's expiry, when configured (for the check and the alerts)."""
    if config.sfapi is None or not config.sfapi.expires:
        return None
    return Expiry("SFAPI client", parse_expiry(config.sfapi.expires), SFAPI_RENEW)


def expiries(config: Config) -> list[Expiry]:
    """Every credential expiry this configuration knows (Globus client secrets carry none)."""
    found = sfapi_expiry(config)
    return [found] if found else []


def _run(report: FlightReport, name: str, fn: Callable[[], str], hint: str, clock: Callable[[], float]) -> bool:
    start = clock()
    try:
        detail = fn()
    except SplashFlowsError as err:
        report.checks.append(CheckResult(name, False, str(err), hint=hint, seconds=clock() - start))
        return False
    report.checks.append(CheckResult(name, True, detail, seconds=clock() - start))
    return True


def check_sfapi(config: Config, report: FlightReport, *, now: datetime,
                clock: Callable[[], float] = time.monotonic,
                token: Callable[[SfapiCredentialsConfig], str] = sfapi.token) -> None:
    """The SFAPI lines of the preflight: key file, token, expiry."""
    cfg = config.sfapi
    if cfg is None:
        return
    parsed: dict[str, str] = {}

    def key() -> str:
        found = sfapi.check_key(cfg)
        parsed["client_id"] = found.client_id
        return f"{found.kind} key of client {found.client_id} in {cfg.key_file} (mode 600)"

    if not _run(report, "sfapi key", key, SFAPI_RENEW, clock):
        report.checks.append(CheckResult("sfapi token", None, "the key file is not usable"))
    else:
        def get_token() -> str:
            token(cfg)
            return f"client {parsed['client_id']} obtained a token from NERSC"

        _run(report, "sfapi token", get_token, "the client is expired or revoked, or its IP range does not "
             f"include this machine: {SFAPI_RENEW}", clock)
    expiry = sfapi_expiry(config)
    if expiry is None:
        report.checks.append(CheckResult("sfapi expiry", True, "unknown: set sfapi.expires to the date Iris shows, "
                                         "so a lapse is announced before it happens", hint="set sfapi.expires"))
        return
    left = expiry.expires_at - now
    days = left.total_seconds() / 86400
    when = f"{expiry.expires_at:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        report.checks.append(CheckResult("sfapi expiry", False, f"the client expired on {when}", hint=SFAPI_RENEW))
    elif days <= config.alerts.credential_warn_days:
        report.checks.append(CheckResult("sfapi expiry", False, f"the client expires on {when}, in {days:.1f} days",
                                         hint=SFAPI_RENEW))
    else:
        report.checks.append(CheckResult("sfapi expiry", True, f"valid until {when} ({days:.0f} days)"))


def check_scicat(config: Config, report: FlightReport, *, clock: Callable[[], float] = time.monotonic) -> None:
    """The SciCat lines: the adapter's own permission check when it has one, else a login and a read."""
    if not isinstance(config.catalogue, SciCatCatalogueConfig):
        return
    hint = ("check catalogue.url, catalogue.username and SCICAT_PASSWORD; ask the SciCat admins for the account's "
            "groups (it must be allowed to create datasets and attach files)")
    try:
        module = importlib.import_module("splash_flows.services.catalogue_check")
    except ModuleNotFoundError:
        module = None
    if module is not None:
        start = clock()
        for c in module.check_catalogue(config):
            report.checks.append(CheckResult(str(c.name), bool(c.ok), str(c.detail), hint=None if c.ok else hint,
                                             seconds=clock() - start))
        return
    cfg = config.catalogue

    def login() -> str:
        from splash_flows.context import build_catalogue

        catalogue = build_catalogue(config)
        try:
            catalogue.find("splash-flows preflight: no such scan")  # logs in, then one authorised read
        except CatalogueError as err:
            raise CredentialError(f"SciCat {cfg.url}: {err}") from None
        finally:
            close = getattr(catalogue, "close", None)
            if callable(close):
                close()
        return f"logged in to {cfg.url} as {cfg.username!r} and read the datasets"

    _run(report, "scicat login", login, hint, clock)


def check_globus(config: Config, report: FlightReport, *, probe: bool = False) -> None:
    """The Globus lines (credentials, consents per collection, and the probe transfer when asked)."""
    if not uses_globus(config):
        return
    from splash_flows.context import build_context
    from splash_flows.services.flight_check import run_flight_check

    ctx = build_context(config)
    try:
        report.checks.extend(run_flight_check(ctx, probe=probe).checks)
    finally:
        ctx.close()


def uses_globus(config: Config) -> bool:
    return any(isinstance(t, GlobusTierConfig) for t in config.tiers.values())


def nothing_to_check() -> CheckResult:
    return CheckResult("credentials", True, "nothing to check: no Globus tier, no sfapi section and no SciCat "
                       "catalogue are configured")


def check_other_services(config: Config, report: FlightReport, *,
                         sfapi_token_fn: Callable[[SfapiCredentialsConfig], str] = sfapi.token) -> None:
    """The checks beyond Globus (SFAPI, SciCat), appended to ``report`` (the flight_check_733 flow's second task)."""
    check_sfapi(config, report, now=report.started_at, token=sfapi_token_fn)
    check_scicat(config, report)


def preflight(config: Config, *, probe: bool = False, now: Callable[[], datetime] = _utcnow,
              sfapi_token_fn: Callable[[SfapiCredentialsConfig], str] = sfapi.token) -> FlightReport:
    """Every credential check that applies to this configuration, in order: Globus, SFAPI, SciCat."""
    report = FlightReport(started_at=now())
    check_globus(config, report, probe=probe)
    check_other_services(config, report, sfapi_token_fn=sfapi_token_fn)
    if not report.checks:
        report.checks.append(nothing_to_check())
    return report

