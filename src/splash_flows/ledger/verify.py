"""Ledger reads and writes for ``reconcile --verify``: which copies to re-hash, and the record of what was found.

A copy the ledger holds ``verified`` that re-hashes to something else (or is gone) becomes ``at_risk`` with an
``at_risk`` event in the same transaction, so prune refuses to rely on it or delete it and alerts can fire from
the ledger. A repaired copy goes ``at_risk -> verified`` with a ``repaired`` event naming the copy it came from.
Both updates are conditional on the state the caller saw, so a prune claim taken meanwhile is never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from splash_flows.ledger.models import Copy, CopyState, Event, EventKind, SourceFile
from splash_flows.ledger.store import Ledger


@dataclass(frozen=True)
class HeldCopy:
    """One copy as the ledger holds it, with the file's recorded checksum (what the copy must hash to)."""

    copy_id: int
    file_id: int
    source_tier: str
    path: str
    tier: str
    state: str
    size: int
    checksum_alg: str
    checksum: str


def held_copies(ledger: Ledger, tiers: Sequence[str], *, prefix: str = "", after_copy_id: int = 0,
                limit: int = 1000) -> list[HeldCopy]:
    """Copies on ``tiers`` in state ``verified`` or ``at_risk`` (the ones a verification pass looks at), in
    copy-id order from ``after_copy_id`` (keyset paging: memory does not grow with the ledger)."""
    if not tiers:
        return []
    q = (select(Copy.id, Copy.file_id, SourceFile.source_tier, SourceFile.path, Copy.tier, Copy.state,
                SourceFile.size, SourceFile.checksum_alg, SourceFile.checksum)
         .join(SourceFile, SourceFile.id == Copy.file_id)
         .where(Copy.tier.in_(list(tiers)), Copy.state.in_([CopyState.VERIFIED, CopyState.AT_RISK]),
                Copy.id > after_copy_id)
         .order_by(Copy.id).limit(limit))
    if prefix:
        q = q.where(SourceFile.path.startswith(prefix.rstrip("/") + "/"))
    with ledger.session() as sess:
        return [HeldCopy(*row) for row in sess.execute(q)]


def other_copies(ledger: Ledger, file_id: int, tier: str) -> list[tuple[str, str]]:
    """The other copies of a file held ``verified``: ``(tier, state)``, the source tier's first."""
    with ledger.session() as sess:
        source_tier = sess.scalar(select(SourceFile.source_tier).where(SourceFile.id == file_id))
        rows = sess.execute(select(Copy.tier, Copy.state).where(Copy.file_id == file_id, Copy.tier != tier,
                                                                Copy.state == CopyState.VERIFIED))
        found = [(t, s) for t, s in rows]
    return sorted(found, key=lambda ts: (ts[0] != source_tier, ts[0]))


def copy_id_of(ledger: Ledger, file_id: int, tier: str) -> int | None:
    """The id of a file's copy row on ``tier`` (None: the ledger has none)."""
    with ledger.session() as sess:
        return sess.scalar(select(Copy.id).where(Copy.file_id == file_id, Copy.tier == tier))


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def mark_at_risk(ledger: Ledger, held: HeldCopy, *, reason: str, detail: dict[str, Any], now: datetime) -> bool:
    """``verified -> at_risk`` with an ``at_risk`` event (one transaction). A copy already ``at_risk`` gets the
    event again (it was found still bad). False when the row had moved on (a prune claim, a new copy)."""
    with ledger.session() as sess:
        result = sess.execute(
            update(Copy).where(Copy.id == held.copy_id, Copy.state.in_([CopyState.VERIFIED, CopyState.AT_RISK]))
            .values(state=CopyState.AT_RISK, error=reason, updated_at=now)
            .execution_options(synchronize_session=False))
        if _rowcount(result) != 1:
            return False
        sess.add(Event(at=now, file_id=held.file_id, path=held.path, tier=held.tier, kind=EventKind.AT_RISK,
                       detail={"reason": reason, "found_by": "reconcile --verify", **detail}))
        return True


def mark_repaired(ledger: Ledger, held: HeldCopy, *, checksum: str, size: int, detail: dict[str, Any],
                  now: datetime) -> bool:
    """``at_risk -> verified`` after a verified re-copy, with a ``repaired`` event. The due date is kept."""
    with ledger.session() as sess:
        result = sess.execute(
            update(Copy).where(Copy.id == held.copy_id, Copy.state == CopyState.AT_RISK)
            .values(state=CopyState.VERIFIED, checksum=checksum, size=size, verified_at=now, error=None,
                    updated_at=now)
            .execution_options(synchronize_session=False))
        if _rowcount(result) != 1:
            return False
        sess.add(Event(at=now, file_id=held.file_id, path=held.path, tier=held.tier, kind=EventKind.REPAIRED,
                       detail={"checksum_alg": held.checksum_alg, "checksum": checksum, "size": size, **detail}))
        return True


def record_run(ledger: Ledger, summary: dict[str, Any], *, now: datetime) -> None:
    """One ``verify_run`` event with the pass's counts (what was checked, found and repaired)."""
    with ledger.session() as sess:
        sess.add(Event(at=now, kind=EventKind.VERIFY_RUN, detail=summary))
