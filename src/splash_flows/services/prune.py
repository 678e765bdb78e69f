"""Pruning (seed: "schedule pruning from data733 for 6 months from now"; a scheduled flow removes old files):
the only step that destroys data, so every deletion is earned again at the moment it happens.

Policy (``config.retention.rules``, one ``RetentionRule`` per prunable tier; a tier without a rule is never
pruned). A copy on tier T may be deleted at time ``now`` when all of these hold:

1. it is *scheduled*: the ledger holds a due date (``copies.prune_due_at``) at or before ``now``. Dates are set by
   ``schedule_prune`` when a move completes: acquisition time + ``after_days``, where the acquisition time is the
   source file's mtime as recorded in the ledger (the detector's write time; every verified copy keeps it).
   The policy date is re-computed at execution too, and the later of the two counts, so a lengthened retention
   or a re-acquired file (new mtime) never makes anything due early; ``prune --schedule`` re-writes the dates.
2. it is ``verified`` in the ledger with the file's checksum, and no other copy of the file is ``pruning``
   (one deletion per file in flight) or ``at_risk`` (a file with a known problem is left alone until repaired);
3. the ledger holds verified copies on every tier of ``require_all`` and on at least one of ``require_any``;
4. right before the deletion each *required* copy -- every ``require_all`` tier plus the first ``require_any``
   tier (in configured order) that is verified in the ledger -- and the candidate itself are re-checked on
   the tier: it exists, has the recorded size, and ``Tier.checksum`` (a re-hash on local tiers and mounted
   collections) equals the ledger's checksum. A required copy on a globus tier that is not mounted here
   cannot be hashed by us (Globus has no checksum API): it is verified by Globus comparing it with the file's
   source copy (a checksum-sync task, ``GlobusTier.verify_copies``; one task per tier for all the round's
   files), after that source copy passed our own re-hash -- see ``_Batch._remote_checks``. A copy Globus
   finds identical counts as verified now (the evidence names the task); one it had to re-send was not what
   the ledger said: it is marked ``at_risk`` and the deletion refused; a task error refuses without marking.
   A source tier that is not a globus tier (or no longer holds a verified copy) cannot be compared: refused,
   saying why. A candidate on an unmounted globus tier is checked for presence and size only.

Any failed check deletes nothing: a copy found missing or different becomes ``at_risk`` (an ``at_risk`` event
names it), the candidate stays, a ``prune_refused`` event says why, and the run's report raises listing every
refusal, so the Prefect run ends Failed. A check that could not be made at all (tier unreachable, checksum
algorithm differs) refuses the same way without marking anything at risk.

Execution is per file, in batches of files (``retention.batch_size``). Within a file, copies go in
dependency order (a tier before the tiers its rule requires: data733, then lamarr, then cfs by default), one
round at a time, and each round re-claims from the ledger, so deleting one copy is always judged against the
state the previous deletion left. ``plan_prune`` simulates the same order on the same rules: for an unchanged
ledger and tiers that pass every re-check, ``--execute`` deletes exactly what ``--plan`` listed.

Claims, crash recovery and concurrency are in ``splash_flows.ledger.prune``. A claimed copy is ``pruning``
while it is re-checked and ``deleting`` from just before the tier is asked to delete it. A run that raises an
ordinary error releases every claim that had not reached ``deleting``; a run killed outright leaves its claims,
and the first run after ``retention.claim_timeout_minutes`` takes them over and re-checks from scratch: a
candidate still present is deleted normally; one already gone from a ``deleting`` claim (the dead run deleted
it) is recorded as pruned once the required copies re-verify; one gone from a ``pruning`` claim never reached
our deletion, so it is marked ``at_risk``.

The catalogue's location history (issue 5 item 5): the transaction recording a deletion on a catalogue
location tier (``services.catalogue.location_tiers``: the move targets and the archive tier; data733 is not
one) also queues the file's catalogued scan (``pending_catalogue`` keeping its pid); after each batch
``update_catalogue`` updates those scans, so a tier from which every file of a scan is now pruned reads
``pruned`` since the last deletion. A catalogue outage leaves them queued for the next catalogue step or
``catalog retry`` and never fails the prune; so does a run killed after its deletions.

Time comes from an injectable ``clock`` (tests advance it; nothing here sleeps).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from splash_flows.config import Config, RetentionRule
from splash_flows.context import Context
from splash_flows.errors import BatchError, ConfigError, PruneRefused, SourceMissingError, SplashFlowsError, TierError
from splash_flows.ledger import CopyState, EventKind, SourceRecord
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger import prune as lp
from splash_flows.ledger.prune import Claim, CopySnap, FileSnap
from splash_flows.services import catalogue as catalogue_service
from splash_flows.tiers.base import CopyItem, CopyOutcome, CopyResult, Tier
from splash_flows.tiers.globus import GlobusTier

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# progress(kind, tier, path): kind is "pruned", "refused" or "skipped"; called once per examined copy.
PruneProgress = Callable[[str, str, str], None]
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def system_clock() -> datetime:
    """The real time, aware UTC."""
    return datetime.now(UTC)


def new_owner() -> str:
    """A unique name for one prune run (host, pid, random): the ``claimed_by`` of its claims."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------------------------- policy


def rule_tiers(config: Config, tier: str | None = None) -> list[str]:
    """The tiers pruning works on, in dependency order; ``tier`` restricts to one (ConfigError if it has no rule)."""
    order = prune_order(config.retention.rules)
    if tier is None:
        return order
    if tier not in config.tiers:
        raise ConfigError(f"unknown tier {tier!r}; configured tiers: {', '.join(config.tiers)}")
    if tier not in config.retention.rules:
        raise ConfigError(f"tier {tier!r} has no retention rule, so nothing on it is ever pruned "
                          f"(rules: {', '.join(order) or 'none'})")
    return [tier]


def prune_order(rules: dict[str, RetentionRule]) -> list[str]:
    """Rule tiers ordered so a tier comes before every tier its rule requires (ties and cycles: config order).

    Pruning a file's copies in this order means a deletion never removes a copy that a later candidate's
    rule needed (data733 needs cfs, so data733 goes first)."""
    names = list(rules)
    needs = {t: {r for r in [*rules[t].require_all, *rules[t].require_any] if r in rules} for t in names}
    required_by = {t: {s for s in names if t in needs[s]} for t in names}
    order: list[str] = []
    ready = [t for t in names if not required_by[t]]
    remaining = set(names)
    while remaining:
        if not ready:  # a cycle: take the first remaining in config order
            ready = [next(t for t in names if t in remaining)]
        t = ready.pop(0)
        if t not in remaining:
            continue
        order.append(t)
        remaining.discard(t)
        for s in names:
            if s in remaining and t in required_by[s]:
                required_by[s].discard(t)
                if not required_by[s]:
                    ready.append(s)
    return order


def policy_due(rule: RetentionRule, file: FileSnap) -> datetime:
    """Acquisition time (source mtime) + the rule's ``after_days``."""
    return file.acquired_at + timedelta(days=rule.after_days)


def effective_due(rule: RetentionRule, file: FileSnap, copy: CopySnap) -> datetime | None:
    """When the copy is due: the later of its scheduled date and the current policy's date (None: unscheduled)."""
    if copy.prune_due_at is None:
        return None
    return max(copy.prune_due_at, policy_due(rule, file))


def is_good(file: FileSnap, copy: CopySnap | None) -> bool:
    """The ledger holds this copy verified with the file's current checksum."""
    return copy is not None and copy.state == CopyState.VERIFIED and copy.checksum == file.checksum


def required_tiers(rule: RetentionRule, file: FileSnap) -> list[str]:
    """The copies to re-check before deleting: every ``require_all`` tier and the first ``require_any`` tier
    the ledger holds verified (empty ``require_any``: none)."""
    out = list(rule.require_all)
    for t in rule.require_any:
        if is_good(file, file.copies.get(t)):
            out.append(t)
            break
    return out


def _state(file: FileSnap, tier: str) -> str:
    copy = file.copies.get(tier)
    return copy.state if copy is not None else "no copy"


def blocked_reason(tier: str, rule: RetentionRule, file: FileSnap) -> str | None:
    """Why the ledger's state of the file's other copies forbids deleting its copy on ``tier`` (None: allowed)."""
    for t, c in file.copies.items():
        if t != tier and c.state in (*lp.CLAIMED, CopyState.AT_RISK):
            why = f" ({c.error})" if c.state == CopyState.AT_RISK and c.error else ""
            return f"its {t} copy is {c.state}{why}"
    missing = [t for t in rule.require_all if not is_good(file, file.copies.get(t))]
    if missing:
        states = ", ".join(f"{t}: {_state(file, t)}" for t in missing)
        return f"waiting for a verified copy on {' and '.join(missing)} ({states})"
    if rule.require_any and not any(is_good(file, file.copies.get(t)) for t in rule.require_any):
        states = ", ".join(f"{t}: {_state(file, t)}" for t in rule.require_any)
        return f"waiting for a verified copy on one of {', '.join(rule.require_any)} ({states})"
    return None


def evaluate(config: Config, file: FileSnap, copy: CopySnap, now: datetime) -> str | None:
    """Whether ``copy`` may be claimed for deletion at ``now`` by the ledger's state (None) or why not.
    The candidate's own state is the caller's concern (``verified``, or a stale claim being taken over)."""
    rule = config.retention.rules.get(copy.tier)
    if rule is None:
        return f"tier {copy.tier} has no retention rule"
    if copy.checksum != file.checksum:
        return "the copy's recorded checksum differs from the file's (stale copy)"
    due = effective_due(rule, file, copy)
    if due is None:
        return "not scheduled"
    if due > now:
        return f"not due until {due.isoformat()}"
    blocked = blocked_reason(copy.tier, rule, file)
    if blocked is not None:
        return blocked
    return _waits_for(config, file, copy.tier, now)


def _waits_for(config: Config, file: FileSnap, tier: str, now: datetime) -> str | None:
    """Dependency order across runs: a copy waits while another copy of the file that may go now has a rule
    needing this tier (cfs waits for lamarr and data733, whose rules need cfs). Without this, two runs working
    on one file at once could delete cfs first and leave the others needing it forever."""
    for other in file.copies.values():
        rule = config.retention.rules.get(other.tier)
        if other.tier == tier or rule is None or tier not in (*rule.require_all, *rule.require_any):
            continue
        due = effective_due(rule, file, other)
        if (is_good(file, other) and due is not None and due <= now
                and blocked_reason(other.tier, rule, file) is None):
            return f"waiting for its {other.tier} copy to be pruned first (the {other.tier} rule needs {tier})"
    return None


def _candidates(file: FileSnap, tiers: Sequence[str], until: datetime, claimed_before: datetime | None
                ) -> list[CopySnap]:
    """The file's candidate copies in prune order (``tiers`` is already in that order)."""
    by_tier = {c.tier: c for c in file.copies.values()
               if lp.is_candidate(c, tiers=tiers, until=until, claimed_before=claimed_before)}
    return [by_tier[t] for t in tiers if t in by_tier]


# ---------------------------------------------------------------------------------------------- scheduling


@dataclass
class ScheduleReport:
    """Due dates written (only changes are written; a re-run reports none)."""

    files: int
    changed: list[tuple[str, str, datetime | None]] = field(default_factory=list)  # (tier, path, due_at)

    def merge(self, other: ScheduleReport) -> None:
        """Add ``other``'s files and changes to this report."""
        self.files += other.files
        self.changed += other.changed

    def summary(self) -> str:
        if not self.changed:
            return f"prune schedule unchanged for {self.files} file(s)"
        per: dict[str, int] = {}
        for tier, _, _ in self.changed:
            per[tier] = per.get(tier, 0) + 1
        return f"prune dates set for {self.files} file(s): " + ", ".join(f"{t} {n}" for t, n in sorted(per.items()))


def _due_for(config: Config) -> lp.DueFor:
    def due_for(file: FileSnap, copy: CopySnap) -> datetime | None:
        rule = config.retention.rules.get(copy.tier)
        return None if rule is None else policy_due(rule, file)
    return due_for


def schedule_prune(ctx: Context, sources: Sequence[SourceRecord], *, clock: Clock = system_clock,
                   reason: str = "move completed") -> ScheduleReport:
    """Give each copy of ``sources`` its due date by the retention policy (after a move). Idempotent.

    Also schedules the files an interrupted run left without dates (``unscheduled``): the ledger's invariant
    is that every file verified on every target has its due dates after any later run."""
    ids = sorted({s.id for s in sources})
    changed = lp.set_due_dates(ctx.ledger, ids, _due_for(ctx.config), clock(), reason=reason)
    report = ScheduleReport(files=len(ids), changed=[(c.tier, f.path, due) for f, c, due in changed])
    report.merge(schedule_unscheduled(ctx, clock=clock, skip=set(ids)))
    return report


def schedule_unscheduled(ctx: Context, *, clock: Clock = system_clock, skip: set[int] | None = None,
                         limit: int = 1000) -> ScheduleReport:
    """Due dates for files verified on every target (``move.recover_after_s`` ago or more) whose copies on a
    tier with a retention rule have none: a run killed between its copy and its scheduling step."""
    now = clock()
    cutoff = now - timedelta(seconds=ctx.config.move.recover_after_s)
    ids = [i for i in lp.unscheduled_file_ids(ctx.ledger, ctx.config.move.source, ctx.config.move.targets,
                                              list(ctx.config.retention.rules), verified_before=cutoff, limit=limit)
           if not skip or i not in skip]
    if not ids:
        return ScheduleReport(files=0)
    changed = lp.set_due_dates(ctx.ledger, ids, _due_for(ctx.config), now,
                               reason="recovered: verified but never scheduled (run interrupted)")
    log.warning("prune dates set for %d file(s) an interrupted run left unscheduled", len(ids))
    return ScheduleReport(files=len(ids), changed=[(c.tier, f.path, due) for f, c, due in changed])


def schedule_all(ctx: Context, *, clock: Clock = system_clock) -> ScheduleReport:
    """Re-compute every file's due dates from the current policy (after a retention change, or for files moved
    before scheduling existed)."""
    ids = lp.all_file_ids(ctx.ledger)
    changed = lp.set_due_dates(ctx.ledger, ids, _due_for(ctx.config), clock(), reason="rescheduled")
    return ScheduleReport(files=len(ids), changed=[(c.tier, f.path, due) for f, c, due in changed])


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanItem:
    """A copy ``--plan`` lists: due (will be deleted if its re-checks pass), blocked, or claimed right now."""

    tier: str
    path: str
    size: int
    due_at: datetime
    acquired_at: datetime
    why: str
    requires: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "path": self.path, "size": self.size, "due_at": self.due_at,
                "acquired_at": self.acquired_at, "why": self.why, "requires": self.requires}


@dataclass
class PrunePlan:
    """What a prune run at ``until`` would delete given the ledger as it is now (re-checks not yet made)."""

    now: datetime
    until: datetime
    tiers: list[str]
    due: list[PlanItem] = field(default_factory=list)
    blocked: list[PlanItem] = field(default_factory=list)
    in_progress: list[PlanItem] = field(default_factory=list)
    unscheduled: dict[str, int] = field(default_factory=dict)

    def totals(self) -> dict[str, dict[str, int]]:
        out = {t: {"files": 0, "bytes": 0, "blocked": 0, "in_progress": 0} for t in self.tiers}
        for item in self.due:
            out[item.tier]["files"] += 1
            out[item.tier]["bytes"] += item.size
        for item in self.blocked:
            out[item.tier]["blocked"] += 1
        for item in self.in_progress:
            out[item.tier]["in_progress"] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"now": self.now, "until": self.until, "tiers": self.tiers,
                "due": [i.as_dict() for i in self.due], "blocked": [i.as_dict() for i in self.blocked],
                "in_progress": [i.as_dict() for i in self.in_progress], "totals": self.totals(),
                "unscheduled": self.unscheduled}


def _requires(rule: RetentionRule, file: FileSnap) -> list[dict[str, Any]]:
    out = []
    for t in required_tiers(rule, file):
        c = file.copies.get(t)
        out.append({"tier": t, "state": c.state if c else None, "checksum": c.checksum if c else None,
                    "verified_at": c.verified_at if c else None})
    return out


def _why(rule: RetentionRule, file: FileSnap) -> str:
    days = f"{rule.after_days:g} d after acquisition"
    required = required_tiers(rule, file)
    req = ", ".join(f"{t} verified" for t in required)
    also = [t for t in rule.require_any if t not in required and is_good(file, file.copies.get(t))]
    if also:  # the other copies that would allow it too (e.g. hpss beside lamarr for data733)
        req += f" (also allowed by {', '.join(also)} verified)"
    return f"{days}; {req}" if req else days


def plan_prune(ctx: Context, *, until: datetime | None = None, tier: str | None = None,
               clock: Clock = system_clock, progress: Callable[[int], None] | None = None) -> PrunePlan:
    """What ``execute_prune`` would delete at ``until`` (default now), in the same order and by the same rules,
    simulating each planned deletion before judging the file's next copy. ``progress(files_seen)`` per page."""
    now = clock()
    until = until or now
    tiers = rule_tiers(ctx.config, tier)
    plan = PrunePlan(now=now, until=until, tiers=tiers, unscheduled=lp.unscheduled_counts(ctx.ledger, tiers))
    stale_before = now - timedelta(minutes=ctx.config.retention.claim_timeout_minutes)
    after, seen = 0, 0
    while True:
        files = lp.due_files(ctx.ledger, tiers=tiers, until=until, after_file_id=after, limit=500,
                             claimed_before=FAR_FUTURE)
        if not files:
            break
        for file in files:
            _plan_file(ctx.config, file, tiers, until, stale_before, plan)
        after = files[-1].id
        seen += len(files)
        if progress is not None:
            progress(seen)
    rank = {t: i for i, t in enumerate(tiers)}
    for items in (plan.due, plan.blocked, plan.in_progress):
        items.sort(key=lambda i: (i.due_at, i.path, rank[i.tier]))
    return plan


def _plan_file(config: Config, file: FileSnap, tiers: list[str], until: datetime, stale_before: datetime,
               plan: PrunePlan) -> None:
    sim = file
    for cand in _candidates(file, tiers, until, FAR_FUTURE):
        rule = config.retention.rules[cand.tier]
        due = effective_due(rule, file, cand) or until
        item = PlanItem(cand.tier, file.path, file.size, due, file.acquired_at, _why(rule, sim), _requires(rule, sim))
        if cand.state in lp.CLAIMED and cand.claimed_at is not None and cand.claimed_at >= stale_before:
            plan.in_progress.append(replace(item, why=f"claimed by {cand.claimed_by} since "
                                                       f"{cand.claimed_at.isoformat()}"))
            continue
        reason = evaluate(config, sim, cand, until)
        if reason is not None:
            if not reason.startswith("not due until"):
                plan.blocked.append(replace(item, why=reason))
            continue
        if cand.state in lp.CLAIMED:
            item = replace(item, why=f"{item.why}; takes over the stale claim of {cand.claimed_by}")
        plan.due.append(item)
        copies = dict(sim.copies)
        copies[cand.tier] = replace(cand, state=CopyState.PRUNED)
        sim = replace(sim, copies=copies)


# ---------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CopyCheck:
    """The re-check of one copy right before a deletion: the evidence that allowed it, or why it failed."""

    tier: str
    path: str
    ok: bool
    at_risk: bool  # checked and found missing or different (not merely unreachable)
    reason: str | None
    size: int | None
    checksum: str | None
    ledger_checksum: str
    checksum_alg: str
    verified_at: datetime | None
    checked_at: datetime
    url: str | None = None
    # How the copy was checked when it was not by our own re-hash (a Globus checksum-sync task, or size only).
    detail: dict[str, Any] | None = None

    @property
    def missing(self) -> bool:
        return self.at_risk and self.size is None

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tier": self.tier, "url": self.url, "ok": self.ok, "reason": self.reason, "size": self.size,
            "checksum_alg": self.checksum_alg, "checksum": self.checksum, "ledger_checksum": self.ledger_checksum,
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
            "checked_at": self.checked_at.isoformat()}
        if self.detail is not None:
            out["verification"] = self.detail
        return out


def remote_globus(tier: Tier) -> bool:
    """A globus tier we cannot read (no ``local_root``): no checksum of ours is possible there, only Globus's
    checksum comparison with another collection (``GlobusTier.verify_copies``)."""
    return isinstance(tier, GlobusTier) and tier.local is None


def check_copy(tier: Tier, file: FileSnap, copy: CopySnap | None, clock: Clock, *,
               candidate: bool = False) -> CopyCheck:
    """Re-verify one copy on its tier: present, the file's size, and ``Tier.checksum`` equal to the ledger's.

    ``candidate``: the copy about to be deleted. On a globus tier without a mount, where no checksum of ours
    can be had, a candidate is checked for presence and size only (the evidence says so): its bytes are not
    what keeps the file safe -- the required copies are, and those are verified by Globus's checksum
    comparison (``verify_remote``). Any other copy there fails this check ("cannot check")."""
    verified_at = copy.verified_at if copy else None

    def result(ok: bool, at_risk: bool, reason: str | None, size: int | None = None,
               checksum: str | None = None, detail: dict[str, Any] | None = None) -> CopyCheck:
        try:
            url: str | None = tier.url(file.path)
        except TierError:
            url = None
        return CopyCheck(tier.name, file.path, ok, at_risk, reason, size, checksum, file.checksum,
                         file.checksum_alg, verified_at, clock(), url, detail)

    if tier.checksum_alg != file.checksum_alg:
        return result(False, False, f"{tier.name} computes {tier.checksum_alg} but the ledger holds "
                                    f"{file.checksum_alg}; cannot re-verify")
    try:
        st = tier.stat(file.path)
    except TierError as err:
        return result(False, False, f"cannot check: {err}")
    if st is None:
        return result(False, True, f"{tier.name}:{file.path}: missing")
    if st.size != file.size:
        return result(False, True, f"{tier.name}:{file.path}: size {st.size} != recorded {file.size}", st.size)
    if candidate and remote_globus(tier):
        return result(True, False, None, st.size, None, {
            "checked": "present with the recorded size (Globus listing); checksum not recomputed: the collection "
                       "is not mounted here and Globus has no API that returns a checksum"})
    try:
        checksum = tier.checksum(file.path)
    except SourceMissingError:
        return result(False, True, f"{tier.name}:{file.path}: missing")
    except TierError as err:
        return result(False, False, f"cannot check: {err}", st.size)
    if checksum != file.checksum:
        return result(False, True, f"{tier.name}:{file.path}: {file.checksum_alg} {checksum} != recorded "
                                   f"{file.checksum}", st.size, checksum)
    return result(True, False, None, st.size, checksum)


def _unverified(tier: Tier, file: FileSnap, copy: CopySnap | None, clock: Clock, why: str) -> CopyCheck:
    """A required copy that could not be checked at all (refuses the deletion, marks nothing)."""
    try:
        url: str | None = tier.url(file.path)
    except TierError:
        url = None
    return CopyCheck(tier.name, file.path, False, False, f"{tier.name}:{file.path}: cannot verify: {why}", None,
                     None, file.checksum, file.checksum_alg, copy.verified_at if copy else None, clock(), url)


def _globus_check(tier: GlobusTier, source: str, file: FileSnap, copy: CopySnap | None, outcome: CopyOutcome,
                  clock: Clock) -> CopyCheck:
    """A required copy's check from its ``verify_copies`` outcome (a checksum-sync task from ``source``)."""
    verified_at = copy.verified_at if copy else None
    try:
        url: str | None = tier.url(file.path)
    except TierError:
        url = None
    compared = f"{source}:{file.path}"
    if not isinstance(outcome, CopyResult):
        return CopyCheck(tier.name, file.path, False, False,
                         f"{tier.name}:{file.path}: cannot verify with Globus against {compared}: {outcome}", None,
                         None, file.checksum, file.checksum_alg, verified_at, clock(), url,
                         {"verified_by": "globus", "compared_with": compared, "error": str(outcome)})
    detail = {**(outcome.detail or {}), "compared_with": compared}
    if outcome.skipped:
        detail["result"] = (f"identical to {compared} by Globus's checksum comparison; {compared} was re-hashed "
                            f"by us ({file.checksum_alg}) and matched the ledger")
        return CopyCheck(tier.name, file.path, True, False, None, outcome.size, outcome.checksum, file.checksum,
                         file.checksum_alg, verified_at, clock(), url, detail)
    task = detail.get("globus_task_id", "?")
    detail["result"] = "missing or different: re-sent"
    return CopyCheck(tier.name, file.path, False, True,
                     f"{tier.name}:{file.path}: the ledger held it verified, but Globus found it missing or different "
                     f"from {compared} and re-sent it (task {task}); marked at_risk, so this deletion waits: a later "
                     f"run may prune once the copy is verified again", outcome.size, None, file.checksum,
                     file.checksum_alg, verified_at, clock(), url, detail)


# ---------------------------------------------------------------------------------------------- execute


@dataclass(frozen=True)
class PrunedItem:
    tier: str
    path: str
    size: int
    recovered: bool
    evidence: dict[str, Any]
    file_id: int = 0


@dataclass
class PruneReport:
    """What one prune run (or batch) did. ``raise_for_failures`` raises if any due copy was not deleted."""

    owner: str
    examined: int = 0
    pruned: list[PrunedItem] = field(default_factory=list)
    refused: dict[str, PruneRefused] = field(default_factory=dict)  # "tier:path" -> why
    at_risk: list[CopyCheck] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "tier:path" -> why it was not claimed
    # catalogue location updates after the deletions (scan key -> pid / why it waits / the refusal)
    catalogue_updated: dict[str, str] = field(default_factory=dict)
    catalogue_pending: dict[str, str] = field(default_factory=dict)
    catalogue_failed: dict[str, SplashFlowsError] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return sum(p.size for p in self.pruned)

    def merge(self, other: PruneReport) -> None:
        self.examined += other.examined
        self.pruned += other.pruned
        self.refused.update(other.refused)
        self.at_risk += other.at_risk
        self.skipped.update(other.skipped)
        self.catalogue_updated.update(other.catalogue_updated)
        self.catalogue_pending.update(other.catalogue_pending)
        self.catalogue_failed.update(other.catalogue_failed)

    def raise_for_failures(self) -> None:
        """Raise listing every refused deletion and every location update the catalogue refused (a catalogue
        outage is not a failure: those updates are queued)."""
        if self.refused or self.catalogue_failed:
            failures: dict[str, SplashFlowsError] = dict(self.refused)
            failures.update({f"catalogue location update of {k}": e for k, e in self.catalogue_failed.items()})
            raise BatchError("due prunes", failures, total=len(failures) + len(self.pruned))

    def summary(self) -> str:
        text = f"{len(self.pruned)} copies pruned ({self.bytes_freed} bytes)"
        if self.refused:
            text += f", {len(self.refused)} refused"
        if self.at_risk:
            text += f", {len(self.at_risk)} copies AT RISK: " + "; ".join(str(c.reason) for c in self.at_risk)
        if self.catalogue_updated:
            text += f"; catalogue locations updated for {len(self.catalogue_updated)} scan(s)"
        if self.catalogue_pending:
            text += f"; catalogue location update queued for {len(self.catalogue_pending)} scan(s)"
        if self.catalogue_failed:
            text += f"; catalogue refused the location update of {len(self.catalogue_failed)} scan(s)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "examined": self.examined, "bytes_freed": self.bytes_freed,
                "pruned": [{"tier": p.tier, "path": p.path, "size": p.size, "recovered": p.recovered}
                           for p in self.pruned],
                "refused": {k: str(v) for k, v in self.refused.items()},
                "at_risk": [{"tier": c.tier, "path": c.path, "reason": c.reason} for c in self.at_risk],
                "skipped": len(self.skipped),
                "catalogue": {"updated": self.catalogue_updated, "pending": self.catalogue_pending,
                              "failed": {k: str(v) for k, v in self.catalogue_failed.items()}}}


@dataclass(frozen=True)
class _Decision:
    claim: Claim
    candidate: CopyCheck | None
    required: list[CopyCheck]
    reason: str | None  # None: delete
    gone: bool = False  # taken-over claim whose file is already deleted, required copies verified
    policy_block: bool = False  # the policy no longer allows it (taken-over claim): not a failure


def _key(tier: str, path: str) -> str:
    return f"{tier}:{path}"


def _evidence(d: _Decision, rule: RetentionRule) -> dict[str, Any]:
    c = d.claim
    return {"run": c.owner, "claimed_at": c.claimed_at.isoformat(),
            "acquired_at": c.file.acquired_at.isoformat(),
            "due_at": c.copy.prune_due_at.isoformat() if c.copy.prune_due_at else None,
            "rule": {"after_days": rule.after_days, "require_all": rule.require_all, "require_any": rule.require_any},
            "candidate": d.candidate.evidence() if d.candidate else None,
            "required": [r.evidence() for r in d.required],
            "taken_over_from": c.taken_over_from, "recovered": d.gone}


class _Batch:
    """One batch of files: rounds of claim -> re-check -> delete -> record (see the module docstring)."""

    def __init__(self, ctx: Context, owner: str, clock: Clock, progress: PruneProgress | None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.owner = owner
        self.clock = clock
        self.progress = progress
        self.report = PruneReport(owner)
        self.undecided: dict[int, Claim] = {}
        # a deletion on one of these tiers queues the catalogue location update of the file's scan
        self.catalogue_locations = ctx.catalogue_enabled
        self.location_tiers = set(catalogue_service.location_tiers(ctx.config))

    def _tick(self, kind: str, tier: str, path: str) -> None:
        if self.progress is not None:
            self.progress(kind, tier, path)

    def run(self, files: list[FileSnap], tiers: list[str], now: datetime) -> None:
        stale_before = now - timedelta(minutes=self.config.retention.claim_timeout_minutes)
        queues = [_candidates(f, tiers, now, stale_before) for f in files]
        try:
            for rnd in range(max((len(q) for q in queues), default=0)):
                items = [(f, q[rnd]) for f, q in zip(files, queues, strict=True) if len(q) > rnd]
                self._round(items, now, stale_before)
        except Exception:
            for c in list(self.undecided.values()):
                lp.release(self.ctx.ledger, c, now=self.clock(), reason="the prune run failed before deciding",
                           detail={"run": self.owner})
            raise

    def _round(self, items: list[tuple[FileSnap, CopySnap]], now: datetime, stale_before: datetime) -> None:
        claims: list[Claim] = []
        for file, cand in items:
            self.report.examined += 1
            got = lp.claim(self.ctx.ledger, cand.id, owner=self.owner, now=now, stale_before=stale_before,
                           evaluate=lambda f, c, t: evaluate(self.config, f, c, t))
            if isinstance(got, str):
                self.report.skipped[_key(cand.tier, file.path)] = got
                self._tick("skipped", cand.tier, file.path)
                continue
            self.undecided[got.copy.id] = got
            claims.append(got)
        if not claims:
            return
        workers = max(1, min(self.config.retention.concurrency, len(claims)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prune-check") as pool:
            checks = self._remote_checks(claims, now, pool)
            decisions = list(pool.map(lambda c: self._decide(c, now, checks), claims))
        to_delete: dict[str, list[_Decision]] = {}
        for d in decisions:
            if d.reason is not None:
                self._refuse(d)
            elif d.gone:
                self._finish(d)
            else:
                to_delete.setdefault(d.claim.copy.tier, []).append(d)
        for tier_name, ds in to_delete.items():
            self._delete(tier_name, ds)

    def _remote_checks(self, claims: list[Claim], now: datetime,
                       pool: ThreadPoolExecutor) -> dict[tuple[int, str], CopyCheck]:
        """The checks of required copies on globus tiers without a mount, made for the whole round before the
        per-claim decisions, keyed by (candidate copy id, tier); plus the source copies they were compared with.

        Globus cannot return a checksum, only compare two copies: each such copy is verified with
        ``GlobusTier.verify_copies`` against the file's source tier (the move source, e.g. data733 -- which may
        be the candidate itself: it is deleted only after these checks), one checksum-sync task per (tier,
        source) for all the round's files. The source copy is re-hashed by us first, and a source that fails
        that check is never compared: a checksum sync from a corrupt source would overwrite a good copy.
        Outcomes: identical (``skipped``) -> verified now, by Globus's checksum comparison (task id in the
        evidence); re-sent -> the ledger was wrong about the copy: at risk, and this deletion is refused;
        an error -> refused (not verified now), nothing marked."""
        needs: list[tuple[Claim, list[str]]] = []
        for c in claims:
            if c.taken_over_from is not None and evaluate(self.config, c.file, c.copy, now) is not None:
                continue  # _decide refuses it on the policy before looking at the required copies
            rule = self.config.retention.rules[c.copy.tier]
            remote = [t for t in required_tiers(rule, c.file) if remote_globus(self.ctx.tier(t))]
            if remote:
                needs.append((c, remote))
        if not needs:
            return {}
        out: dict[tuple[int, str], CopyCheck] = {}
        groups: dict[tuple[str, str], list[Claim]] = {}
        for (c, remote), (src, src_check, why_not) in zip(needs, pool.map(lambda n: self._source_check(n[0]), needs),
                                                          strict=True):
            if src_check is not None:
                out[(c.copy.id, src)] = src_check
            if why_not is None and src_check is not None and not src_check.ok:
                why_not = (f"not compared: the copy Globus would compare it with, {src}:{c.file.path}, failed "
                           f"its own re-check ({src_check.reason})")
            for t in remote:
                why = why_not
                if why is None and t == src:
                    why = "Globus can only compare it with another copy, and it is the source copy itself"
                if why is not None:
                    out[(c.copy.id, t)] = _unverified(self.ctx.tier(t), c.file, c.file.copies.get(t), self.clock,
                                                      why)
                else:
                    groups.setdefault((t, src), []).append(c)

        def verify(group: tuple[tuple[str, str], list[Claim]]) -> list[tuple[Claim, CopyCheck]]:
            (t, src), members = group
            tier, source = self.ctx.tier(t), self.ctx.tier(src)
            assert isinstance(tier, GlobusTier)
            items = [CopyItem(c.file.path, c.file.checksum, c.file.size) for c in members]
            try:
                outcomes: list[CopyOutcome] = tier.verify_copies(source, items)
            except TierError as err:
                outcomes = [err] * len(members)
            return [(c, _globus_check(tier, src, c.file, c.file.copies.get(t), o, self.clock))
                    for c, o in zip(members, outcomes, strict=True)]

        for results in pool.map(verify, list(groups.items())):
            for c, result in results:
                out[(c.copy.id, result.tier)] = result
        return out

    def _source_check(self, c: Claim) -> tuple[str, CopyCheck | None, str | None]:
        """The file's source tier, our own re-check of its copy there, or why Globus cannot compare with it."""
        src = c.file.source_tier
        if src not in self.config.tiers:
            return src, None, f"Globus can verify it only against the source copy, and the source tier {src} is " \
                              "not configured"
        tier = self.ctx.tier(src)
        if not isinstance(tier, GlobusTier):
            return src, None, (f"Globus can verify it only by comparing it with a copy on another Globus "
                               f"collection, and the file's source tier {src} is a {tier.kind} tier; mount the "
                               f"collection here (local_root) or configure {src} as a globus tier")
        if src != c.copy.tier and not is_good(c.file, c.file.copies.get(src)):
            return src, None, (f"Globus can verify it only by comparing it with the source copy, and the ledger "
                               f"holds the {src} copy as {_state(c.file, src)}")
        copy = c.copy if src == c.copy.tier else c.file.copies.get(src)
        return src, check_copy(tier, c.file, copy, self.clock), None

    def _decide(self, c: Claim, now: datetime, checks: dict[tuple[int, str], CopyCheck]) -> _Decision:
        rule = self.config.retention.rules[c.copy.tier]

        def check(tier: str) -> CopyCheck:  # made in _remote_checks for this claim, else here
            done = checks.get((c.copy.id, tier))
            if done is not None:
                return done
            if tier == c.copy.tier:
                return check_copy(self.ctx.tier(tier), c.file, c.copy, self.clock, candidate=True)
            return check_copy(self.ctx.tier(tier), c.file, c.file.copies.get(tier), self.clock)

        if c.taken_over_from is not None:  # the policy was not evaluated at claim time for a taken-over claim
            reason = evaluate(self.config, c.file, c.copy, now)
            if reason is not None:
                cand = check(c.copy.tier)
                if cand.missing:
                    return _Decision(c, cand, [], f"missing after the interrupted run {c.taken_over_from}, and its "
                                                  f"deletion can no longer be justified: {reason}")
                return _Decision(c, cand, [], f"no longer allowed: {reason}", policy_block=True)
        required = [check(t) for t in required_tiers(rule, c.file)]
        candidate = check(c.copy.tier)
        bad = [r for r in required if not r.ok]
        if bad:
            return _Decision(c, candidate, required, "required copy failed its re-check: "
                             + "; ".join(str(r.reason) for r in bad))
        if not required:
            return _Decision(c, candidate, required, "the rule requires no other copy")  # config forbids this
        if candidate.ok:
            return _Decision(c, candidate, required, None)
        if candidate.missing and c.taken_over_from is not None and c.copy.state == CopyState.DELETING:
            return _Decision(c, candidate, required, None, gone=True)
        return _Decision(c, candidate, required, f"the copy to delete failed its re-check: {candidate.reason}")

    def _refuse(self, d: _Decision) -> None:
        c = d.claim
        rule = self.config.retention.rules[c.copy.tier]
        at_risk = [(r.tier, str(r.reason)) for r in d.required if r.at_risk]
        cand_risk = str(d.candidate.reason) if d.candidate is not None and d.candidate.at_risk else None
        lp.release(self.ctx.ledger, c, now=self.clock(), reason=str(d.reason), detail=_evidence(d, rule),
                   at_risk=at_risk, candidate_at_risk=cand_risk)
        self.undecided.pop(c.copy.id, None)
        key = _key(c.copy.tier, c.file.path)
        if d.policy_block:
            self.report.skipped[key] = str(d.reason)
            self._tick("skipped", c.copy.tier, c.file.path)
            return
        self.report.at_risk += [r for r in d.required if r.at_risk]
        if d.candidate is not None and d.candidate.at_risk:
            self.report.at_risk.append(d.candidate)
        risk = "; AT RISK: " + "; ".join(str(r.reason) for r in d.required if r.at_risk) if at_risk else ""
        self.report.refused[key] = PruneRefused(f"{key}: not deleted: {d.reason}{risk}")
        log.error("prune refused %s: %s", key, d.reason)
        self._tick("refused", c.copy.tier, c.file.path)

    def _finish(self, d: _Decision, note: str | None = None) -> None:
        c = d.claim
        evidence = _evidence(d, self.config.retention.rules[c.copy.tier])
        if note:
            evidence["note"] = note
        held = lp.finish_pruned(self.ctx.ledger, c, now=self.clock(), evidence=evidence,
                                catalogue_location=self.catalogue_locations and c.copy.tier in self.location_tiers)
        self.undecided.pop(c.copy.id, None)
        key = _key(c.copy.tier, c.file.path)
        if not held:
            self.report.refused[key] = PruneRefused(
                f"{key}: deleted, but the ledger row changed while the run held its claim; marked at_risk")
            self._tick("refused", c.copy.tier, c.file.path)
            return
        self.report.pruned.append(PrunedItem(c.copy.tier, c.file.path, c.file.size, d.gone, evidence, c.file.id))
        self._tick("pruned", c.copy.tier, c.file.path)

    def _delete(self, tier_name: str, ds: list[_Decision]) -> None:
        tier = self.ctx.tier(tier_name)
        held = lp.mark_deleting(self.ctx.ledger, [d.claim for d in ds], now=self.clock())
        for d, ours in zip(list(ds), held, strict=True):
            if not ours:
                key = _key(tier_name, d.claim.file.path)
                self.undecided.pop(d.claim.copy.id, None)
                self.report.refused[key] = PruneRefused(f"{key}: not deleted: the claim was changed by another "
                                                        f"writer before the deletion")
                self._tick("refused", tier_name, d.claim.file.path)
                ds.remove(d)
        if not ds:
            return
        for d in ds:  # from here a failure must not put the copy back to verified: it may be gone
            self.undecided.pop(d.claim.copy.id, None)
        try:
            outcomes: list[TierError | None] = tier.delete([d.claim.file.path for d in ds])
        except TierError as err:
            outcomes = [err] * len(ds)
        for d, outcome in zip(ds, outcomes, strict=True):
            if outcome is None:
                self._finish(d)
                continue
            try:
                still = tier.stat(d.claim.file.path)
            except TierError as err:
                key = _key(tier_name, d.claim.file.path)
                self.report.refused[key] = PruneRefused(
                    f"{key}: delete failed ({outcome}) and the file cannot be checked ({err}); the claim stays "
                    f"and the next run after the claim timeout re-checks it")
                self._tick("refused", tier_name, d.claim.file.path)
                continue
            if still is None:
                self._finish(d, note=f"the delete call reported {outcome}, but the file is gone")
            else:
                self._refuse(replace(d, reason=f"delete failed: {outcome}"))


def prune_batch(ctx: Context, *, owner: str, tier: str | None = None, after_file_id: int = 0,
                batch_size: int | None = None, clock: Clock = system_clock,
                progress: PruneProgress | None = None) -> tuple[PruneReport, int | None]:
    """Prune what is due now among the next ``batch_size`` files after ``after_file_id``.

    Returns the batch's report and the file id to continue after (None: nothing more is due)."""
    tiers = rule_tiers(ctx.config, tier)
    now = clock()
    stale_before = now - timedelta(minutes=ctx.config.retention.claim_timeout_minutes)
    files = lp.due_files(ctx.ledger, tiers=tiers, until=now, after_file_id=after_file_id,
                         limit=batch_size or ctx.config.retention.batch_size, claimed_before=stale_before)
    batch = _Batch(ctx, owner, clock, progress)
    if not files:
        return batch.report, None
    batch.run(files, tiers, now)
    update_catalogue(ctx, batch.report)
    return batch.report, files[-1].id


def update_catalogue(ctx: Context, report: PruneReport) -> None:
    """Bring the catalogue's location history up to date for the scans of the copies ``report`` pruned.

    Each deletion on a location tier (``services.catalogue.location_tiers``; not the source tier) queued its
    file's catalogued scan in the same transaction that recorded it (``pending_catalogue`` with its pid, see
    ``ledger.catalogue.queue_location_update``); here those scans are updated at once: a tier from which every
    file of the scan is now pruned becomes ``pruned`` (since the last deletion), the others stay as they are.
    A catalogue outage never fails the prune -- the deletions happened and are recorded; the scans stay
    queued and the next catalogue step (or ``splash-flows catalog retry``) does the update. A refusal (4xx)
    is reported in ``report.catalogue_failed`` and fails the run loudly, like the catalogue step's."""
    file_ids = sorted({p.file_id for p in report.pruned if p.tier in catalogue_service.location_tiers(ctx.config)})
    if not file_ids or not ctx.catalogue_enabled:
        return
    records = ledger_cat.queued_location_updates(ctx.ledger, file_ids)
    result = catalogue_service.update_locations(ctx, records)
    report.catalogue_updated.update(result.catalogued)
    report.catalogue_pending.update(result.pending)
    report.catalogue_failed.update(result.failed)
    if result.pending:
        log.warning("catalogue location update queued for %d scan(s) (retried by the next catalogue step or "
                    "`splash-flows catalog retry`): %s", len(result.pending), next(iter(result.pending.values())))


def execute_prune(ctx: Context, *, tier: str | None = None, limit: int = 1000, clock: Clock = system_clock,
                  progress: PruneProgress | None = None, owner: str | None = None,
                  run_batch: Callable[[str, int, int], tuple[PruneReport, int | None]] | None = None,
                  check_clock: bool = False) -> PruneReport:
    """Prune everything due now (at most ``limit`` files), batch by batch. Does not raise for refusals: call
    ``raise_for_failures`` on the report (it lists every refused copy and every copy found at risk).

    ``check_clock`` (the flow and the CLI, which use the host's clock): first compare "now" with the ledger's
    clocks (``services.clock_check``) and raise ``PruneRefused`` before any claim when they disagree.

    ``run_batch(owner, after_file_id, batch_size)`` replaces the direct ``prune_batch`` call (the Prefect flow
    passes its task here, so each batch is one task run)."""
    if check_clock:
        from splash_flows.services.clock_check import check_clock as check

        try:
            check(ctx.ledger, clock())
        except PruneRefused as err:
            ctx.ledger.record_event(EventKind.PRUNE_REFUSED, detail={"reason": str(err), "clock": "refused"})
            raise
    owner = owner or new_owner()
    total = PruneReport(owner)
    after = 0
    seen = 0
    while seen < limit:
        size = min(ctx.config.retention.batch_size, limit - seen)
        if run_batch is not None:
            report, nxt = run_batch(owner, after, size)
        else:
            report, nxt = prune_batch(ctx, owner=owner, tier=tier, after_file_id=after, batch_size=size,
                                      clock=clock, progress=progress)
        total.merge(report)
        if nxt is None:
            break
        seen += size
        after = nxt
    log.info("prune run %s: %s", owner, total.summary())
    return total
