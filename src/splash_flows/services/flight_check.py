"""The Globus flight check: does the deployment's Globus set-up work right now, and if not, what is broken?

Plain functions, run by ``splash-flows globus check`` and by the ``flight_check_733`` flow every 12 hours:

1. **credentials** -- obtain a token with the confidential client's id and secret and have the Transfer service
   accept it. An expired or revoked secret fails here, saying so.
2. **list <tier>** -- list the root folder of every globus tier through Globus (even when it is also mounted
   here). A missing consent (data_access), a permission the service identity lacks, a wrong collection id or
   root, and an endpoint that is offline each fail here with Globus's own code and message.
3. **probe <source> -> <target>** -- move one small file end to end with the same machinery the move flow uses
   (submission id recorded first, checksum-verified task, per-file result) to a fresh path on each target, then
   **delete probe on <target>** removes it with a Globus delete task. Where the source is mounted
   (``local_root``), a fresh probe file is written there (temp + fsync + rename) and removed afterwards.
   Otherwise an existing small file named by ``globus.flight_check.probe_path`` is moved (it is only read).

A check that could not run because an earlier one failed is reported as not run (``ok=None``), with the reason.
Probe tasks are recorded in the ledger's transfer batches (kind ``probe``), so their rate shows in
``splash-flows status --transfers``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from splash_flows.config import GlobusTierConfig
from splash_flows.context import Context
from splash_flows.errors import (
    ConfigError,
    GlobusAuthError,
    GlobusRequestRefused,
    GlobusServiceUnavailable,
    GlobusTaskError,
    SplashFlowsError,
    TierError,
)
from splash_flows.tiers.globus import GlobusTier

PROBE_DIR = ".splash-flight-check"


@dataclass
class CheckResult:
    """One line of the flight check: what was checked, whether it worked, and what to do if not."""

    name: str
    ok: bool | None  # None: not run (an earlier check it depends on failed, or nothing to run)
    detail: str
    tier: str | None = None
    hint: str | None = None
    seconds: float | None = None

    @property
    def result(self) -> str:
        return "ok" if self.ok else ("FAILED" if self.ok is False else "not run")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tier": self.tier, "ok": self.ok, "result": self.result, "detail": self.detail,
                "hint": self.hint, "seconds": None if self.seconds is None else round(self.seconds, 3)}


@dataclass
class FlightReport:
    """Every check, in order. ``ok`` only when at least one check ran and none failed or was skipped."""

    started_at: datetime
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is True for c in self.checks)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.ok is not True]

    def summary(self) -> str:
        n_ok = sum(1 for c in self.checks if c.ok)
        n_failed = sum(1 for c in self.checks if c.ok is False)
        n_skipped = sum(1 for c in self.checks if c.ok is None)
        lines = [f"Flight check: {n_ok} ok, {n_failed} failed, {n_skipped} not run"]
        for c in self.failed():
            lines.append(f"  - {c.name}: {c.result}: {c.detail}" + (f" -> {c.hint}" if c.hint else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "started_at": self.started_at.isoformat(),
                "checks": [c.to_json() for c in self.checks]}


def hint_for(err: SplashFlowsError) -> str:
    """What an operator should do about an error, in one line (details in docs/GLOBUS.md)."""
    if isinstance(err, GlobusAuthError):
        if "consent" in str(err):
            return "grant the consent / set data_access_scope (docs/GLOBUS.md, 'Consents and data access')"
        return "renew the client secret and update GLOBUS_CLIENT_SECRET (docs/GLOBUS.md, 'Service client')"
    if isinstance(err, GlobusRequestRefused):
        if err.http_status == 403:
            return ("give <client_id>@clients.auth.globus.org read/write access to the root on this collection "
                    "(docs/GLOBUS.md, 'Consents and data access')")
        if err.http_status == 404:
            return "check collection_id and root of this tier in the configuration"
        return "see Globus's message; the request was refused"
    if isinstance(err, GlobusServiceUnavailable):
        return "the collection's endpoint (or Globus) is not reachable: check the endpoint's status with its admins"
    if isinstance(err, GlobusTaskError):
        return f"open task {err.task_id} in the Globus web app for its full event list"
    return "see the detail"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _run(report: FlightReport, name: str, tier: str | None, fn: Callable[[], str],
         clock: Callable[[], float]) -> bool:
    """Run one check: ``fn`` returns the success detail or raises our typed error."""
    start = clock()
    try:
        detail = fn()
    except SplashFlowsError as err:
        report.checks.append(CheckResult(name, False, str(err), tier=tier, hint=hint_for(err),
                                         seconds=clock() - start))
        return False
    report.checks.append(CheckResult(name, True, detail, tier=tier, seconds=clock() - start))
    return True


def _not_run(report: FlightReport, name: str, tier: str | None, why: str) -> None:
    report.checks.append(CheckResult(name, None, why, tier=tier))


def write_probe(tier: GlobusTier, size: int, stamp: str) -> str:
    """Write a fresh probe file through the tier's local mount (temp + fsync + rename); its tier-relative path."""
    assert tier.local is not None
    rel = f"{PROBE_DIR}/probe-{stamp}-{secrets.token_hex(4)}.bin"
    final = tier.local.path(rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    head = f"splash-flows Globus flight check probe {stamp}\n".encode()
    data = (head + os.urandom(max(0, size - len(head))))[:size]
    tmp = final.with_name(final.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise TierError(f"cannot write the probe file {final}: {err.strerror or err}", tier=tier.name) from None
    return rel


def remove_local_probe(tier: GlobusTier, rel: str) -> None:
    """Remove a probe we wrote through the mount, and its folder if now empty."""
    assert tier.local is not None
    path = tier.local.path(rel)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def run_flight_check(ctx: Context, *, probe: bool = True, clock: Callable[[], float] = time.monotonic,
                     now: Callable[[], datetime] = _utcnow) -> FlightReport:
    """Run every check against the configured Globus tiers and return the report (never raises for a check
    that fails; raises ConfigError when no tier is of kind globus)."""
    config = ctx.config
    globus_names = [n for n, t in config.tiers.items() if isinstance(t, GlobusTierConfig)]
    if not globus_names or config.globus is None:
        raise ConfigError("no tier is of kind globus in the configuration: the Globus flight check has nothing "
                          "to check")
    report = FlightReport(started_at=now())

    def credentials() -> str:
        ctx.globus().check_credentials()
        assert config.globus is not None
        return (f"client {config.globus.client_id} obtained a Globus token and the Transfer service accepted it")

    if not _run(report, "credentials", None, credentials, clock):
        for name in globus_names:
            _not_run(report, f"list {name}", name, "the credentials do not work")
        if probe:
            _not_run(report, "probe transfers", None, "the credentials do not work")
        return report

    reachable: dict[str, GlobusTier] = {}
    for name in globus_names:
        built = ctx.tier(name)
        if not isinstance(built, GlobusTier):
            raise TypeError(f"tier {name} is configured as globus but was built as {type(built).__name__}")
        globus_tier: GlobusTier = built

        def listing(tier: GlobusTier = globus_tier) -> str:
            n = tier.check_root()
            return f"listed {tier.root} on collection {tier.collection_id}: {n} entr{'y' if n == 1 else 'ies'}"

        if _run(report, f"list {name}", name, listing, clock):
            reachable[name] = globus_tier
    if probe:
        _probe_checks(ctx, report, reachable, clock, now)
    return report


def _probe_checks(ctx: Context, report: FlightReport, reachable: dict[str, GlobusTier],
                  clock: Callable[[], float], now: Callable[[], datetime]) -> None:
    config = ctx.config
    assert config.globus is not None
    src_name = config.move.source
    targets = list(config.move.targets)
    if not isinstance(config.tier(src_name), GlobusTierConfig):
        report.checks.append(CheckResult(
            f"probe {src_name}", False, f"the move source {src_name} is a local tier: Globus cannot move data "
            "from it", tier=src_name, hint=f"configure {src_name} as kind globus (its collection)"))
        return
    if src_name not in reachable:
        _not_run(report, "probe transfers", src_name, f"listing the source {src_name} failed")
        return
    source = reachable[src_name]
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    wrote: str | None = None
    probe_rel: str | None = None

    def prepare() -> str:
        nonlocal wrote, probe_rel
        assert config.globus is not None
        if source.local is not None:
            size = config.globus.flight_check.probe_bytes
            wrote = probe_rel = write_probe(source, size, stamp)
            return f"wrote a {size}-byte probe {probe_rel} through {source.local.root}"
        path = config.globus.flight_check.probe_path
        if path is None:
            raise ConfigError(f"{src_name} has no local_root to write a probe through, and "
                              "globus.flight_check.probe_path (a small file that exists there) is not set")
        st = source.stat(path)
        if st is None:
            raise TierError(f"the probe file {path} (globus.flight_check.probe_path) does not exist", tier=src_name)
        probe_rel = st.path
        return f"using the existing probe file {probe_rel} ({st.size} bytes)"

    if not _run(report, f"probe file on {src_name}", src_name, prepare, clock):
        _not_run(report, "probe transfers", src_name, "there is no probe file")
        return
    assert probe_rel is not None
    try:
        for target in targets:
            if not isinstance(config.tier(target), GlobusTierConfig):
                report.checks.append(CheckResult(
                    f"probe {src_name} -> {target}", False, f"{target} is a local tier; Globus moves data only "
                    "between collections", tier=target, hint=f"configure {target} as kind globus"))
                continue
            if target not in reachable:
                _not_run(report, f"probe {src_name} -> {target}", target, f"listing {target} failed")
                continue
            dest = reachable[target]
            name = posixpath.basename(probe_rel)  # a probe we wrote has a fresh name; an existing one gets one
            dst_rel = f"{PROBE_DIR}/{name}" if wrote else f"{PROBE_DIR}/{stamp}-{secrets.token_hex(4)}-{name}"

            def move(dest: GlobusTier = dest, dst_rel: str = dst_rel) -> str:
                assert probe_rel is not None
                start = clock()
                moved = dest.probe_from(source, probe_rel, dst_rel)
                if not moved.transferred:
                    raise TierError(f"Globus task {moved.task_id} did not send the probe to the fresh path "
                                    f"{dst_rel} (it reported it already identical)", tier=dest.name)
                return (f"moved {moved.size} bytes to {dest.url(dst_rel)} in {clock() - start:.1f} s, checksums "
                        f"verified by Globus (task {moved.task_id})")

            if not _run(report, f"probe {src_name} -> {target}", target, move, clock):
                continue

            def cleanup(dest: GlobusTier = dest, dst_rel: str = dst_rel) -> str:
                outcome = dest.delete([dst_rel])[0]
                if outcome is not None:
                    raise outcome
                return f"deleted {dest.url(dst_rel)} with a Globus delete task"

            _run(report, f"delete probe on {target}", target, cleanup, clock)
    finally:
        if wrote is not None:
            remove_local_probe(source, wrote)
