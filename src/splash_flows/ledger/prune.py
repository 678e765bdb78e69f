"""Ledger reads and writes for pruning: due dates, claims, and the record of every deletion or refusal.

Functions take a ``Ledger`` (kept out of ``store.py`` so pruning evolves on its own). The retention *policy*
is not here: callers pass it in as a function, so this module only guarantees the transactional properties.

The claim protocol (why two prune runs can never delete the same copy twice, nor two copies of one file at once):

- ``claim`` runs one transaction that locks the file's row and all its copy rows (``SELECT ... FOR UPDATE`` on
  PostgreSQL; SQLite transactions here are ``BEGIN IMMEDIATE``, so writers are serialised anyway), asks the
  policy whether the copy may go *now* given every copy's ledger state, and then moves the copy
  ``verified -> pruning`` with a conditional ``UPDATE ... WHERE id=? AND state='verified'`` whose row count
  must be 1. A second run either waits for the lock and then sees ``pruning``, or loses the conditional update.
- The policy refuses a copy while any other copy of the same file is ``pruning`` or ``at_risk``, so at most one
  deletion per file is ever in flight and the copies it relies on cannot be claimed under it.
- Right before the tier deletes, ``mark_deleting`` moves the claim ``pruning -> deleting``, so after a crash
  the ledger tells "never got to delete" from "may have deleted".
- A claim older than the configured timeout belongs to a crashed run: ``claim`` takes it over (conditional on
  the old owner and state) and the caller re-checks everything from scratch; a file already gone under a
  ``deleting`` claim was deleted by the crashed run after its checks, and ``finish_pruned`` records it once the
  required copies re-verify again.
- ``finish_pruned`` (after a deletion) and ``release`` (after a refusal) are conditional on still holding the
  claim; the deletion event is written in the same transaction as the state change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from splash_flows.ledger.catalogue import queue_location_update
from splash_flows.ledger.models import Copy, CopyState, Event, EventKind, SourceFile
from splash_flows.ledger.store import Ledger, in_chunks

CLAIMED = (CopyState.PRUNING, CopyState.DELETING)  # states in which a prune run holds the copy


@dataclass(frozen=True)
class CopySnap:
    """One copy row as read inside a transaction."""

    id: int
    tier: str
    state: str
    size: int | None
    checksum: str | None
    verified_at: datetime | None
    prune_due_at: datetime | None
    claimed_by: str | None
    claimed_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class FileSnap:
    """A source file with every copy of it (keyed by tier), as read in one transaction."""

    id: int
    source_tier: str
    path: str
    size: int
    mtime: float
    checksum_alg: str
    checksum: str
    copies: dict[str, CopySnap] = field(default_factory=dict)

    @property
    def acquired_at(self) -> datetime:
        """Acquisition time: the source file's mtime (the detector's write time, kept by every verified copy)."""
        return datetime.fromtimestamp(self.mtime, UTC)


@dataclass(frozen=True)
class Claim:
    """A copy held in state ``pruning`` by ``owner``. ``taken_over_from`` names a crashed run's claim we took
    over, and ``copy.state`` the state that run left (``deleting``: it may have deleted the file already)."""

    file: FileSnap
    copy: CopySnap
    owner: str
    claimed_at: datetime
    taken_over_from: str | None = None


# (file, candidate copy, now) -> None when the copy may be pruned now, else the reason it may not.
Evaluator = Callable[[FileSnap, CopySnap, datetime], str | None]
# (file, copy) -> the due date the policy gives that copy (None: never due).
DueFor = Callable[[FileSnap, CopySnap], datetime | None]


def _snap(c: Copy) -> CopySnap:
    return CopySnap(c.id, c.tier, c.state, c.size, c.checksum, c.verified_at, c.prune_due_at, c.claimed_by,
                    c.claimed_at, c.error)


def _file_snap(f: SourceFile, copies: Iterable[Copy]) -> FileSnap:
    return FileSnap(f.id, f.source_tier, f.path, f.size, f.mtime, f.checksum_alg, f.checksum,
                    {c.tier: _snap(c) for c in sorted(copies, key=lambda c: c.tier)})


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _event(kind: str, file: FileSnap, tier: str, detail: dict[str, Any], at: datetime) -> Event:
    return Event(at=at, file_id=file.id, path=file.path, tier=tier, kind=kind, detail=detail)


def _load_files(sess: Session, file_ids: Sequence[int]) -> dict[int, FileSnap]:
    out: dict[int, FileSnap] = {}
    for chunk in in_chunks(file_ids):
        files = {f.id: f for f in sess.scalars(select(SourceFile).where(SourceFile.id.in_(chunk)))}
        copies: dict[int, list[Copy]] = {}
        for c in sess.scalars(select(Copy).where(Copy.file_id.in_(chunk))):
            copies.setdefault(c.file_id, []).append(c)
        out.update({fid: _file_snap(f, copies.get(fid, [])) for fid, f in files.items()})
    return out


def load_files(ledger: Ledger, file_ids: Sequence[int]) -> dict[int, FileSnap]:
    """Snapshots of the given files with all their copies."""
    with ledger.session() as sess:
        return _load_files(sess, file_ids)


# ---------------------------------------------------------------------------------------------- scheduling


def set_due_dates(ledger: Ledger, file_ids: Sequence[int], due_for: DueFor, now: datetime,
                  *, reason: str) -> list[tuple[FileSnap, CopySnap, datetime | None]]:
    """Give every copy of the given files the due date ``due_for`` says (idempotent).

    Copies already ``pruned`` or being pruned keep their date (history). Only changed dates are written, each
    with a ``prune_scheduled`` event, so re-running after the same move writes nothing. Returns what changed.
    """
    changed: list[tuple[FileSnap, CopySnap, datetime | None]] = []
    for chunk in in_chunks(file_ids):
        with ledger.session() as sess:
            rows: list[dict[str, Any]] = []
            events: list[Event] = []
            for file in _load_files(sess, chunk).values():
                for copy in file.copies.values():
                    if copy.state in (CopyState.PRUNED, *CLAIMED):
                        continue
                    due = due_for(file, copy)
                    if due == copy.prune_due_at:
                        continue
                    rows.append({"id": copy.id, "prune_due_at": due, "updated_at": now})
                    events.append(_event(EventKind.PRUNE_SCHEDULED, file, copy.tier, {
                        "due_at": due.isoformat() if due else None,
                        "previous_due_at": copy.prune_due_at.isoformat() if copy.prune_due_at else None,
                        "acquired_at": file.acquired_at.isoformat(), "reason": reason}, now))
                    changed.append((file, copy, due))
            if rows:  # ORM bulk UPDATE by primary key: one executemany, not one ORM statement per copy
                sess.execute(update(Copy), rows)
                sess.add_all(events)
    return changed


def all_file_ids(ledger: Ledger) -> list[int]:
    """Every file id the ledger knows (for re-scheduling after a retention change)."""
    with ledger.session() as sess:
        return list(sess.scalars(select(SourceFile.id).order_by(SourceFile.id)))


def unscheduled_counts(ledger: Ledger, tiers: Sequence[str]) -> dict[str, int]:
    """Per tier: verified copies on ``tiers`` that have no due date (moved before scheduling existed)."""
    with ledger.session() as sess:
        rows = sess.execute(
            select(Copy.tier, func.count()).where(Copy.tier.in_(list(tiers)), Copy.state == CopyState.VERIFIED,
                                                  Copy.prune_due_at.is_(None)).group_by(Copy.tier))
        return {tier: int(n) for tier, n in rows}


# ---------------------------------------------------------------------------------------------- candidates


def is_candidate(copy: CopySnap, *, tiers: Sequence[str], until: datetime, claimed_before: datetime | None) -> bool:
    """The row filter of ``due_files``, for one copy: on ``tiers``, stored due date at or before ``until``, and
    ``verified`` -- or ``pruning`` with a claim older than ``claimed_before`` (a crashed run's, to take over)."""
    if copy.tier not in tiers or copy.prune_due_at is None or copy.prune_due_at > until:
        return False
    if copy.state == CopyState.VERIFIED:
        return True
    return (copy.state in CLAIMED and claimed_before is not None
            and (copy.claimed_at is None or copy.claimed_at < claimed_before))


def due_files(ledger: Ledger, *, tiers: Sequence[str], until: datetime, after_file_id: int = 0, limit: int = 500,
              claimed_before: datetime | None = None) -> list[FileSnap]:
    """Files (in id order after ``after_file_id``) with at least one copy for which ``is_candidate`` holds,
    each with all its copies. Pass a far-future ``claimed_before`` to see every claim (plans do)."""
    states = [Copy.state == CopyState.VERIFIED]
    if claimed_before is not None:
        states.append(and_(Copy.state.in_(CLAIMED),
                           or_(Copy.claimed_at.is_(None), Copy.claimed_at < claimed_before)))
    where = (Copy.tier.in_(list(tiers)), Copy.prune_due_at.is_not(None), Copy.prune_due_at <= until,
             Copy.file_id > after_file_id, or_(*states))
    with ledger.session() as sess:
        due: Any = select(Copy.file_id).where(*where)
        if sess.get_bind().dialect.name == "postgresql" and _few_due(sess, where):
            # Few due copies (the hourly run, a plan days ahead): read them through the (tier, state, due) index
            # and sort them. Left alone, PostgreSQL walks every copy in file-id order hoping to fill the LIMIT
            # early: 7 s on 10M copies when nothing is due (docs/PERFORMANCE.md). Many due: that walk is right.
            cte = due.cte("due").prefix_with("MATERIALIZED")
            due = select(cte.c.file_id)
            order = cte.c.file_id
        else:
            order = Copy.file_id
        ids = list(sess.scalars(due.group_by(order).order_by(order).limit(limit)))
        files = _load_files(sess, ids)
        return [files[i] for i in ids if i in files]


FEW_DUE = 20_000  # due copies at most, for which reading them all through the index beats a walk in id order


def _few_due(sess: Session, where: Sequence[Any]) -> bool:
    """Whether at most FEW_DUE copies match ``where`` (an index-only count that stops at FEW_DUE + 1)."""
    probe = select(Copy.id).where(*where).limit(FEW_DUE + 1).subquery()
    return int(sess.scalar(select(func.count()).select_from(probe)) or 0) <= FEW_DUE


def count_due(ledger: Ledger, *, tiers: Sequence[str], until: datetime) -> int:
    """How many copies on ``tiers`` are verified or claimed with a stored due date at or before ``until`` (an
    upper bound of the copies a run examines; used for progress totals)."""
    with ledger.session() as sess:
        return int(sess.scalar(
            select(func.count()).select_from(Copy).where(
                Copy.tier.in_(list(tiers)), Copy.state.in_([CopyState.VERIFIED, *CLAIMED]),
                Copy.prune_due_at.is_not(None), Copy.prune_due_at <= until)) or 0)


# ---------------------------------------------------------------------------------------------- claims


def _lock_file(sess: Session, file_id: int) -> SourceFile:
    """Lock the file's row first, in every prune transaction that writes: one lock order (file, then its copies
    by id, as the move service's writes also go) and so no deadlock. ``FOR NO KEY UPDATE`` on PostgreSQL, so
    concurrent event inserts (which take a key-share lock through their foreign key) are not blocked by it."""
    return sess.scalars(select(SourceFile).where(SourceFile.id == file_id).with_for_update(key_share=True)
                        .execution_options(populate_existing=True)).one()


def claim(ledger: Ledger, copy_id: int, *, owner: str, now: datetime, stale_before: datetime,
          evaluate: Evaluator) -> Claim | str:
    """Claim one copy for deletion as a state transition; return the claim, or why it was not claimed."""
    with ledger.session() as sess:
        file_id = sess.scalar(select(Copy.file_id).where(Copy.id == copy_id))
        if file_id is None:
            return "copy no longer in the ledger"
        f = _lock_file(sess, file_id)
        rows = list(sess.scalars(select(Copy).where(Copy.file_id == file_id).order_by(Copy.id).with_for_update()
                                 .execution_options(populate_existing=True)))
        file = _file_snap(f, rows)
        copy = next(c for c in file.copies.values() if c.id == copy_id)
        taken_from: str | None = None
        if copy.state in CLAIMED:
            if copy.claimed_at is not None and copy.claimed_at >= stale_before:
                return f"claimed by {copy.claimed_by} at {copy.claimed_at.isoformat()} (in progress)"
            taken_from = copy.claimed_by or "?"
            cond = and_(Copy.state == copy.state,
                        Copy.claimed_by.is_(None) if copy.claimed_by is None else Copy.claimed_by == copy.claimed_by)
        elif copy.state == CopyState.VERIFIED:
            reason = evaluate(file, copy, now)
            if reason is not None:
                return reason
            cond = Copy.state == CopyState.VERIFIED
        else:
            return f"copy is {copy.state}"
        result = sess.execute(update(Copy).where(Copy.id == copy_id, cond)
                              .values(state=CopyState.PRUNING, claimed_by=owner, claimed_at=now, updated_at=now)
                              .execution_options(synchronize_session=False))
        if _rowcount(result) != 1:
            return "claimed by another run first"
        return Claim(file=file, copy=copy, owner=owner, claimed_at=now, taken_over_from=taken_from)


def mark_deleting(ledger: Ledger, held: Sequence[Claim], *, now: datetime) -> list[bool]:
    """Move claims ``pruning -> deleting`` right before the tier deletes them (one transaction for the batch).

    After a crash, a stale ``deleting`` claim whose file is gone was most likely deleted by the dead run and is
    recorded as pruned once the required copies re-verify; a stale ``pruning`` claim never reached the deletion,
    so a file missing there was lost some other way and is marked ``at_risk``. Returns, per claim, whether it was
    still ours (only those may be deleted)."""
    out: dict[int, bool] = {}
    with ledger.session() as sess:
        for c in sorted(held, key=lambda c: c.file.id):  # the same lock order as every other prune transaction
            _lock_file(sess, c.file.id)
            result = sess.execute(
                update(Copy).where(Copy.id == c.copy.id, Copy.state == CopyState.PRUNING, Copy.claimed_by == c.owner)
                .values(state=CopyState.DELETING, updated_at=now).execution_options(synchronize_session=False))
            out[c.copy.id] = _rowcount(result) == 1
    return [out[c.copy.id] for c in held]


def finish_pruned(ledger: Ledger, c: Claim, *, now: datetime, evidence: dict[str, Any],
                  catalogue_location: bool = False) -> bool:
    """Record a deletion: ``pruning -> pruned`` and a ``pruned`` event with ``evidence``, in one transaction.

    Returns False when the claim was no longer ours (another writer changed the row while we deleted). The
    deletion is recorded all the same -- it happened -- and unless the row already says ``pruned`` the copy is
    marked ``at_risk`` so the ledger never claims a deleted copy is there.

    ``catalogue_location``: the tier is one of the catalogue's locations, so the same transaction queues the
    file's catalogued scan for a location update (``ledger.catalogue.queue_location_update``).
    """
    with ledger.session() as sess:
        _lock_file(sess, c.file.id)
        result = sess.execute(
            update(Copy).where(Copy.id == c.copy.id, Copy.state.in_(CLAIMED), Copy.claimed_by == c.owner)
            .values(state=CopyState.PRUNED, claimed_by=None, claimed_at=None, error=None, updated_at=now)
            .execution_options(synchronize_session=False))
        held = _rowcount(result) == 1
        detail = dict(evidence)
        if not held:
            row = sess.scalars(select(Copy).where(Copy.id == c.copy.id)).first()
            detail["claim_lost"] = {"state": row.state if row else None, "claimed_by": row.claimed_by if row else None}
            if row is not None and row.state != CopyState.PRUNED:
                row.state = CopyState.AT_RISK
                row.error = (f"deleted by prune run {c.owner}, but the ledger row changed under it "
                             f"(state was {detail['claim_lost']['state']}): re-check this file")
                row.updated_at = now
        sess.add(_event(EventKind.PRUNED, c.file, c.copy.tier, detail, now))
        if catalogue_location:
            queue_location_update(sess, file_id=c.file.id, path=c.file.path, tier=c.copy.tier, now=now)
        return held


def release(ledger: Ledger, c: Claim, *, now: datetime, reason: str, detail: dict[str, Any],
            at_risk: Sequence[tuple[str, str]] = (), candidate_at_risk: str | None = None) -> bool:
    """Give a claim back without deleting: the candidate returns to ``verified`` (or becomes ``at_risk`` with
    ``candidate_at_risk`` as its error); each ``(tier, error)`` of ``at_risk`` marks that copy of the file
    ``at_risk`` if the ledger still holds it verified. Writes a ``prune_refused`` event and one ``at_risk``
    event per copy marked. Returns False when the claim was no longer ours (someone else changed the row)."""
    with ledger.session() as sess:
        _lock_file(sess, c.file.id)
        values: dict[str, Any] = {"claimed_by": None, "claimed_at": None, "updated_at": now}
        if candidate_at_risk is not None:
            values.update(state=CopyState.AT_RISK, error=candidate_at_risk)
        else:
            values.update(state=CopyState.VERIFIED)
        result = sess.execute(
            update(Copy).where(Copy.id == c.copy.id, Copy.state.in_(CLAIMED), Copy.claimed_by == c.owner)
            .values(**values).execution_options(synchronize_session=False))
        held = _rowcount(result) == 1
        marks = list(at_risk)
        if candidate_at_risk is not None and held:
            marks.append((c.copy.tier, candidate_at_risk))
        for tier, error in at_risk:
            sess.execute(update(Copy).where(Copy.file_id == c.file.id, Copy.tier == tier,
                                            Copy.state == CopyState.VERIFIED)
                         .values(state=CopyState.AT_RISK, error=error, updated_at=now)
                         .execution_options(synchronize_session=False))
        for tier, error in marks:
            sess.add(_event(EventKind.AT_RISK, c.file, tier, {"reason": error, "found_by": c.owner,
                                                                "while_pruning": c.copy.tier}, now))
        sess.add(_event(EventKind.PRUNE_REFUSED, c.file, c.copy.tier,
                        {"reason": reason, "claim_held": held, **detail}, now))
        return held


def unscheduled_file_ids(ledger: Ledger, source_tier: str, targets: Sequence[str], rule_tiers: Sequence[str], *,
                         verified_before: datetime, limit: int) -> list[int]:
    """Files verified on every move target (before ``verified_before``) with a copy on a tier that has a
    retention rule but no due date: what a run killed before its scheduling step left behind. Oldest first."""
    if not targets or not rule_tiers:
        return []
    n_verified = (select(func.count()).select_from(Copy)
                  .where(Copy.file_id == SourceFile.id, Copy.tier.in_(list(targets)),
                         Copy.state == CopyState.VERIFIED).scalar_subquery())
    last_verified = (select(func.max(Copy.verified_at)).where(Copy.file_id == SourceFile.id,
                                                               Copy.tier.in_(list(targets))).scalar_subquery())
    undated = (select(Copy.id).where(Copy.file_id == SourceFile.id, Copy.tier.in_(list(rule_tiers)),
                                     Copy.prune_due_at.is_(None),
                                     Copy.state.not_in([CopyState.PRUNED, *CLAIMED])).exists())
    with ledger.session() as sess:
        q = (select(SourceFile.id).where(SourceFile.source_tier == source_tier, undated,
                                         n_verified == len(set(targets)), last_verified < verified_before)
             .order_by(SourceFile.id).limit(limit))
        return list(sess.scalars(q))
