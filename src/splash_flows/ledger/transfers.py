"""Globus task batches in the ledger: the record that makes submissions idempotent, and the transfer metrics.

The order that makes a retried submission safe:

1. ``find_open`` -- an unfinished batch for the same kind, tiers and items (same digest) is reused as it is:
   with a task id it is polled, never resubmitted; without one it is resubmitted with its recorded submission_id,
   which Globus de-duplicates (one task per submission_id, whatever happens to the first request's answer).
2. Otherwise a submission_id is obtained from Globus and ``open`` records it, *before* anything is submitted.
3. ``mark_submitted`` records the task id Globus returned; ``finish`` records the end state and the metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from splash_flows.errors import LedgerError
from splash_flows.ledger.models import BatchStatus, TransferBatch, utcnow
from splash_flows.ledger.store import Ledger

UNFINISHED = (BatchStatus.PENDING, BatchStatus.SUBMITTED)


@dataclass(frozen=True)
class BatchRecord:
    """One Globus task as the ledger knows it."""

    id: int
    kind: str
    source_tier: str
    dest_tier: str
    items_digest: str
    items: list[Any]
    label: str
    submission_id: str
    task_id: str | None
    status: str
    globus_status: str | None
    deadline: datetime
    created_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    bytes_transferred: int | None
    files_transferred: int | None
    files_skipped: int | None
    effective_bytes_per_second: float | None
    faults: int | None
    items_ok: int | None
    items_failed: int | None
    error: str | None

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED


@dataclass(frozen=True)
class BatchEnd:
    """What is recorded when a batch ends."""

    status: BatchStatus
    globus_status: str | None = None
    completed_at: datetime | None = None
    bytes_transferred: int | None = None
    files_transferred: int | None = None
    files_skipped: int | None = None
    effective_bytes_per_second: float | None = None
    faults: int | None = None
    items_ok: int | None = None
    items_failed: int | None = None
    error: str | None = None


def items_digest(kind: str, source_tier: str, dest_tier: str, items: Sequence[Sequence[Any]]) -> str:
    """A stable digest of a batch's identity: its kind, tiers and items (each item a tuple of strings/None)."""
    h = hashlib.sha256()
    for part in (kind, source_tier, dest_tier):
        h.update(part.encode() + b"\x00")
    for item in items:
        h.update(b"\x1e".join(b"\x1f" if v is None else str(v).encode() for v in item) + b"\x00")
    return h.hexdigest()


def _record(row: TransferBatch) -> BatchRecord:
    return BatchRecord(
        row.id, row.kind, row.source_tier, row.dest_tier, row.items_digest, list(row.items), row.label,
        row.submission_id, row.task_id, row.status, row.globus_status, row.deadline, row.created_at,
        row.submitted_at, row.completed_at, row.bytes_transferred, row.files_transferred, row.files_skipped,
        row.effective_bytes_per_second, row.faults, row.items_ok, row.items_failed, row.error)


class TransferBatches:
    """Reads and writes of ``transfer_batches``; each method is one short transaction."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def find_open(self, kind: str, source_tier: str, dest_tier: str, digest: str) -> BatchRecord | None:
        """The unfinished batch with these items, if one exists (after a crash, a retry, a re-delivered event)."""
        with self.ledger.session() as sess:
            row = sess.scalars(select(TransferBatch).where(
                TransferBatch.kind == kind, TransferBatch.source_tier == source_tier,
                TransferBatch.dest_tier == dest_tier, TransferBatch.open_key == digest)).first()
            return None if row is None else _record(row)

    def open(self, *, kind: str, source_tier: str, dest_tier: str, source_collection: str | None,
             dest_collection: str, digest: str, items: list[Any], label: str, submission_id: str,
             deadline: datetime) -> BatchRecord:
        """Record a new unfinished batch with its submission_id. If another process recorded one for the same
        items first, that one is returned (and the submission_id obtained here is simply never used)."""
        now = utcnow()
        try:
            with self.ledger.session() as sess:
                row = TransferBatch(
                    kind=kind, source_tier=source_tier, dest_tier=dest_tier, source_collection=source_collection,
                    dest_collection=dest_collection, items_digest=digest, open_key=digest, items=items,
                    item_count=len(items), label=label, submission_id=submission_id, status=BatchStatus.PENDING,
                    deadline=deadline, created_at=now)
                sess.add(row)
                sess.flush()
                return _record(row)
        except IntegrityError as err:
            existing = self.find_open(kind, source_tier, dest_tier, digest)
            if existing is None:
                raise LedgerError(f"ledger {self.ledger.describe()}: cannot record a Globus batch "
                                  f"(submission {submission_id}): {err.orig}") from None
            return existing

    def mark_submitted(self, batch_id: int, task_id: str) -> BatchRecord:
        """Globus accepted the submission (or recognised it as a duplicate): record its task id."""
        with self.ledger.session() as sess:
            row = self._row(sess, batch_id)
            row.task_id, row.status, row.submitted_at = task_id, BatchStatus.SUBMITTED, utcnow()
            return _record(row)

    def finish(self, batch_id: int, end: BatchEnd) -> BatchRecord:
        """Record how a batch ended and its metrics; it is no longer unfinished."""
        with self.ledger.session() as sess:
            row = self._row(sess, batch_id)
            row.status, row.open_key = end.status, None
            row.globus_status = end.globus_status
            row.completed_at = end.completed_at or utcnow()
            row.bytes_transferred, row.files_transferred = end.bytes_transferred, end.files_transferred
            row.files_skipped, row.effective_bytes_per_second = end.files_skipped, end.effective_bytes_per_second
            row.faults, row.items_ok, row.items_failed, row.error = (end.faults, end.items_ok, end.items_failed,
                                                                      end.error)
            return _record(row)

    def get(self, batch_id: int) -> BatchRecord:
        with self.ledger.session() as sess:
            return _record(self._row(sess, batch_id))

    def recent(self, limit: int = 50, *, kind: str | None = None) -> list[BatchRecord]:
        """The newest batches first (for ``status --transfers``)."""
        with self.ledger.session() as sess:
            q = select(TransferBatch).order_by(TransferBatch.created_at.desc(), TransferBatch.id.desc()).limit(limit)
            if kind is not None:
                q = q.where(TransferBatch.kind == kind)
            return [_record(r) for r in sess.scalars(q)]

    def by_submission(self, submission_id: str) -> BatchRecord | None:
        with self.ledger.session() as sess:
            row = sess.scalars(select(TransferBatch).where(TransferBatch.submission_id == submission_id)).first()
            return None if row is None else _record(row)

    def _row(self, sess: Any, batch_id: int) -> TransferBatch:
        row = sess.get(TransferBatch, batch_id)
        if row is None:
            raise LedgerError(f"ledger {self.ledger.describe()}: no Globus batch with id {batch_id}")
        assert isinstance(row, TransferBatch)
        return row
