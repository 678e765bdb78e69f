"""Re-verification of stored copies (``splash-flows reconcile --verify``): find silent corruption before a prune
or a restore would rely on it.

A copy verified once can rot later (a flipped bit, a bad sector, someone's editor). This pass re-hashes copies
the ledger holds ``verified`` on local tiers -- all of them or a seeded random sample -- reading from the device
(cached pages dropped first) at a bounded rate so it can run beside production traffic. A copy that is missing
or hashes to something other than the ledger's checksum is marked ``at_risk`` with an ``at_risk`` event (prune
then refuses to delete it or to rely on it; alerts fire from the ledger). It is then re-copied from another
copy of the same file through the tier's verified copy (temporary name, fsync, re-read and compare with the
ledger's checksum, rename): the candidate copy's bytes are checked against the ledger's checksum while they
are read, so a bad candidate is never spread. Copies already ``at_risk`` (found by prune's re-check or an
earlier pass) are always included, so they get repaired too.

Plain functions, no Prefect: the CLI is a thin layer over ``verify_copies``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from splash_flows.context import Context
from splash_flows.errors import ConfigError, SourceChangedError, SourceMissingError, TierError
from splash_flows.ledger import verify as lv
from splash_flows.ledger.models import CopyState
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.local import LocalTier

MB = 1_000_000


@dataclass(frozen=True)
class Finding:
    """A copy found missing or different, and what became of it."""

    tier: str
    path: str
    reason: str
    repaired_from: str | None = None
    repair_error: str | None = None


@dataclass
class VerifyProgress:
    """Where a pass stands (for a progress bar): copies looked at, bytes re-read, copies found bad."""

    checked: int = 0
    bytes_read: int = 0
    bad: int = 0


@dataclass
class VerifyReport:
    """What one pass did. ``unrepaired`` copies stay ``at_risk``: the command exits non-zero."""

    tiers: list[str]
    sample: float
    seed: int
    checked: int = 0
    ok: int = 0
    sampled_out: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)   # "tier:path" -> why it could not be read
    skipped_tiers: dict[str, str] = field(default_factory=dict)

    @property
    def repaired(self) -> list[Finding]:
        return [f for f in self.findings if f.repaired_from is not None]

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if f.repaired_from is None]

    def summary(self) -> dict[str, Any]:
        """Counts and findings for ``--json`` and the ``verify_run`` event."""
        return {"tiers": self.tiers, "sample": self.sample, "seed": self.seed, "checked": self.checked,
                "ok": self.ok, "sampled_out": self.sampled_out, "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 3), "at_risk": len(self.findings),
                "repaired": len(self.repaired), "unrepaired": len(self.unrepaired),
                "findings": [{"tier": f.tier, "path": f.path, "reason": f.reason, "repaired_from": f.repaired_from,
                              "repair_error": f.repair_error} for f in self.findings[:1000]],
                "unchecked": dict(list(self.unchecked.items())[:1000]), "skipped_tiers": self.skipped_tiers}

    def describe(self) -> str:
        """One line for the CLI and logs."""
        rate = self.bytes_read / MB / self.seconds if self.seconds > 0 else 0.0
        text = (f"re-hashed {self.checked} cop(ies) on {', '.join(self.tiers) or 'no tier'} "
                f"({self.bytes_read / MB:.1f} MB in {self.seconds:.1f} s, {rate:.1f} MB/s; sample {self.sample:g}, "
                f"seed {self.seed}): {self.ok} intact, {len(self.findings)} at risk, {len(self.repaired)} repaired")
        if self.unrepaired:
            text += f", {len(self.unrepaired)} NOT repaired (still at_risk)"
        if self.unchecked:
            text += f", {len(self.unchecked)} could not be read"
        return text


class RateLimit:
    """Keeps the average read rate at or under ``mb_per_s`` (None: unlimited) by sleeping between chunks."""

    def __init__(self, mb_per_s: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = None if mb_per_s is None else mb_per_s * MB
        self.clock, self.sleep = clock, sleep
        self.start = clock()
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n
        if self.rate is None:
            return
        ahead = self.total / self.rate - (self.clock() - self.start)
        if ahead > 0:
            self.sleep(ahead)


def verify_copies(ctx: Context, *, tiers: list[str] | None = None, sample: float = 1.0, seed: int | None = None,
                  max_rate_mb: float | None = None, prefix: str = "", repair: bool = True, record: bool = True,
                  progress: Callable[[VerifyProgress], None] | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> VerifyReport:
    """Re-hash copies on local tiers and compare with the ledger; mark and repair the bad ones.

    ``tiers``: tier names (default: every local tier of the configuration, the source tier included).
    ``sample``: the fraction of ``verified`` copies to re-hash, drawn by a ``random.Random(seed)`` (copies
    already ``at_risk`` are always looked at). ``record=False`` (a dry run) writes nothing: no state, no event,
    no repair. Never raises for one copy's trouble: see the report."""
    if not 0.0 < sample <= 1.0:
        raise ConfigError(f"--sample must be in (0, 1], not {sample}")
    if max_rate_mb is not None and max_rate_mb <= 0:
        raise ConfigError(f"--max-rate must be positive, not {max_rate_mb}")
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    names = list(tiers) if tiers else list(ctx.config.tiers)
    report = VerifyReport(tiers=[], sample=sample, seed=seed)
    local: dict[str, LocalTier] = {}
    for name in names:
        tier = ctx.tier(name)  # an unknown name is a ConfigError from the configuration
        if isinstance(tier, LocalTier):
            local[name] = tier
            report.tiers.append(name)
        else:
            report.skipped_tiers[name] = f"{tier.kind} tier: not readable here (prune re-checks it with Globus)"
    rng = random.Random(seed)
    limit = RateLimit(max_rate_mb, sleep=sleep)
    state = VerifyProgress()
    started = time.monotonic()

    def on_chunk(n: int) -> None:
        state.bytes_read += n
        limit(n)

    after = 0
    while batch := lv.held_copies(ctx.ledger, report.tiers, prefix=prefix, after_copy_id=after):
        after = batch[-1].copy_id
        for held in batch:
            if held.state == CopyState.VERIFIED and sample < 1.0 and rng.random() >= sample:
                report.sampled_out += 1
                continue
            _verify_one(ctx, local, held, report, on_chunk, repair=repair, record=record)
            state.checked, state.bad = report.checked, len(report.findings)
            if progress is not None:
                progress(state)
    report.bytes_read = state.bytes_read
    report.seconds = time.monotonic() - started
    if record:
        lv.record_run(ctx.ledger, report.summary(), now=datetime.now(UTC))
    return report


def _verify_one(ctx: Context, local: dict[str, LocalTier], held: lv.HeldCopy, report: VerifyReport,
                on_chunk: Callable[[int], None], *, repair: bool, record: bool) -> None:
    tier = local[held.tier]
    key = f"{held.tier}:{held.path}"
    if tier.checksum_alg != held.checksum_alg:
        report.unchecked[key] = f"{held.tier} computes {tier.checksum_alg} but the ledger holds {held.checksum_alg}"
        return
    report.checked += 1
    try:
        found: str | None = tier.rehash(held.path, on_chunk)
    except SourceMissingError:
        found = None
    except TierError as err:
        report.unchecked[key] = str(err)
        return
    if found == held.checksum and held.state == CopyState.VERIFIED:
        report.ok += 1
        return
    if found == held.checksum:  # at_risk but intact now (e.g. restored by hand): verified again, recorded
        reason = "marked at_risk earlier; re-hashed intact"
        if record:
            lv.mark_repaired(ctx.ledger, held, checksum=found, size=held.size,
                             detail={"repaired_from": held.tier, "how": "re-hashed intact"}, now=datetime.now(UTC))
        report.findings.append(Finding(held.tier, held.path, reason, repaired_from=held.tier))
        return
    reason = (f"{key}: missing" if found is None
              else f"{key}: {held.checksum_alg} {found} != recorded {held.checksum}")
    if not record:
        report.findings.append(Finding(held.tier, held.path, reason))
        return
    lv.mark_at_risk(ctx.ledger, held, reason=reason, detail={"expected": held.checksum, "found": found},
                    now=datetime.now(UTC))
    if not repair:
        report.findings.append(Finding(held.tier, held.path, reason))
        return
    source, error = _repair(ctx, local, held, on_chunk)
    report.findings.append(Finding(held.tier, held.path, reason, repaired_from=source, repair_error=error))


def _repair(ctx: Context, local: dict[str, LocalTier], held: lv.HeldCopy,
            on_chunk: Callable[[int], None]) -> tuple[str | None, str | None]:
    """Re-copy ``held`` from the first other copy whose bytes match the ledger's checksum. Returns the tier it
    came from (None if none could serve) and the last error."""
    dest = local[held.tier]
    errors: list[str] = []
    for name, _state in lv.other_copies(ctx.ledger, held.file_id, held.tier):
        src = local.get(name)
        if src is None:
            candidate = ctx.tier(name)
            if not isinstance(candidate, LocalTier):
                errors.append(f"{name}: not a local tier")
                continue
            src = candidate
        outcome = dest.copy_one(src, CopyItem(held.path, held.checksum, held.size))
        if isinstance(outcome, CopyResult) and outcome.checksum == held.checksum:
            lv.mark_repaired(ctx.ledger, held, checksum=outcome.checksum, size=outcome.size,
                             detail={"repaired_from": name, "found_by": "reconcile --verify"},
                             now=datetime.now(UTC))
            return name, None
        if isinstance(outcome, SourceChangedError | SourceMissingError):
            # The candidate itself does not hold the recorded bytes: it is at risk too.
            _mark_other(ctx, held, name, f"{name}:{held.path}: does not hold the recorded bytes ({outcome})")
        errors.append(f"{name}: {outcome}")
    return None, "; ".join(errors) or "no other verified copy of this file to copy from"


def _mark_other(ctx: Context, held: lv.HeldCopy, tier: str, reason: str) -> None:
    """Mark another copy of ``held``'s file, found bad while repairing from it, ``at_risk``."""
    copy_id = lv.copy_id_of(ctx.ledger, held.file_id, tier)
    if copy_id is not None:
        other = replace(held, copy_id=copy_id, tier=tier, state=CopyState.VERIFIED)
        lv.mark_at_risk(ctx.ledger, other, reason=reason, detail={"found_while_repairing": held.tier},
                        now=datetime.now(UTC))
