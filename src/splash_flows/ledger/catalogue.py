"""Ledger queries of the catalogue step: which scan each file belongs to and where that scan stands.

A scan's state (``CatalogueState``) lives in ``catalogue_scans``; ``catalogue_files`` links every source file to
its scan, so ``status`` can show a per-file catalogue state and ``retry_pending`` can rebuild a scan from the
ledger alone. A state change and its events (one per file) are written in one transaction, like every other
ledger write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.orm import Session

from splash_flows.ledger import reads
from splash_flows.ledger.models import (
    CatalogueFile,
    CatalogueScan,
    CatalogueState,
    Copy,
    Event,
    EventKind,
    SourceFile,
    utcnow,
)
from splash_flows.ledger.reads import FileCatalogueState as FileCatalogueState  # re-exported
from splash_flows.ledger.store import CopyInfo, Ledger, in_chunks

_EVENT_OF_STATE = {
    CatalogueState.CATALOGUED: EventKind.CATALOGUED,
    CatalogueState.PENDING: EventKind.CATALOGUE_PENDING,
    CatalogueState.EXCLUDED: EventKind.CATALOGUE_EXCLUDED,
    CatalogueState.FAILED: EventKind.CATALOGUE_FAILED,
}


@dataclass(frozen=True)
class LedgerFile:
    """A source file as the catalogue step needs it: identity, size, mtime, checksum and its copies."""

    id: int
    source_tier: str
    path: str
    size: int
    mtime: float
    checksum_alg: str
    checksum: str
    copies: dict[str, CopyInfo] = field(default_factory=dict)

    def verified_on(self, tier: str) -> bool:
        """Whether the ledger holds a verified copy on ``tier`` with the source's checksum."""
        c = self.copies.get(tier)
        return c is not None and c.state == "verified" and c.checksum == self.checksum


@dataclass(frozen=True)
class ScanRecord:
    """One row of ``catalogue_scans`` with the paths of its files."""

    id: int
    source_tier: str
    scan_key: str
    state: str
    pid: str | None
    error: str | None
    locations: dict[str, Any]
    files_digest: str | None
    attempts: int
    updated_at: datetime
    file_ids: frozenset[int]
    paths: tuple[str, ...]


_FILE_COLUMNS = (SourceFile.id, SourceFile.source_tier, SourceFile.path, SourceFile.size, SourceFile.mtime,
                 SourceFile.checksum_alg, SourceFile.checksum)
_COPY_COLUMNS = (Copy.file_id, Copy.tier, Copy.state, Copy.checksum, Copy.verified_at, Copy.error)

# Rows, not ORM objects: a catalogue step reads every file of a batch's folders with their copies (thousands
# after a burst), and building ORM instances for them (identity map, instrumentation) was half the step's CPU.
_FileRow = Any


def files_in_folder(ledger: Ledger, source_tier: str, folder: str) -> list[LedgerFile]:
    """Every known source file directly in ``folder`` (tier-relative, ``""`` = the root), with its copies."""
    with ledger.read_session() as sess:
        q = select(*_FILE_COLUMNS).where(SourceFile.source_tier == source_tier)
        if folder:
            q = q.where(SourceFile.path.startswith(folder + "/", autoescape=True))
        else:
            q = q.where(~SourceFile.path.contains("/", autoescape=True))
        start = len(folder) + 1 if folder else 0
        rows = [r for r in sess.execute(q) if "/" not in r.path[start:]]
        return _with_copies(sess, rows)


def files_by_path(ledger: Ledger, source_tier: str, paths: Sequence[str]) -> dict[str, LedgerFile]:
    """The known source files among ``paths``, with their copies."""
    out: dict[str, LedgerFile] = {}
    with ledger.read_session() as sess:
        for chunk in in_chunks(paths):
            rows = list(sess.execute(select(*_FILE_COLUMNS).where(SourceFile.source_tier == source_tier,
                                                                  SourceFile.path.in_(chunk))))
            out.update({f.path: f for f in _with_copies(sess, rows)})
    return out


def _with_copies(sess: Session, rows: Sequence[_FileRow]) -> list[LedgerFile]:
    copies: dict[int, dict[str, CopyInfo]] = {}
    ids = [r.id for r in rows]
    for chunk in in_chunks(ids):
        for c in sess.execute(select(*_COPY_COLUMNS).where(Copy.file_id.in_(chunk))):
            copies.setdefault(c.file_id, {})[c.tier] = CopyInfo(c.state, c.checksum, c.verified_at, c.error)
    return [LedgerFile(r.id, r.source_tier, r.path, r.size, r.mtime, r.checksum_alg, r.checksum,
                       copies.get(r.id, {})) for r in rows]


def _scan_record(sess: Session, row: CatalogueScan) -> ScanRecord:
    return _scan_records(sess, [row])[0]


def _scan_records(sess: Session, rows: Sequence[CatalogueScan]) -> list[ScanRecord]:
    """The records of ``rows`` with their files, in one query per chunk of scans (not one per scan)."""
    files: dict[int, list[tuple[int, str]]] = {}
    for chunk in in_chunks([r.id for r in rows]):
        for scan_id, file_id, path in sess.execute(
                select(CatalogueFile.scan_id, SourceFile.id, SourceFile.path)
                .join(CatalogueFile, CatalogueFile.file_id == SourceFile.id)
                .where(CatalogueFile.scan_id.in_(chunk))):
            files.setdefault(scan_id, []).append((file_id, path))
    out = []
    for row in rows:
        mine = sorted(files.get(row.id, []), key=lambda f: f[1])
        out.append(ScanRecord(row.id, row.source_tier, row.scan_key, row.state, row.pid, row.error,
                              dict(row.locations or {}), row.files_digest, row.attempts, row.updated_at,
                              frozenset(f[0] for f in mine), tuple(f[1] for f in mine)))
    return out


def files_digest(files: Iterable[LedgerFile]) -> str:
    """A digest of the (path, checksum) of ``files``: tells whether a catalogued scan's files changed since."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.checksum_alg}:{f.checksum}\n".encode())
    return h.hexdigest()


def get_scan(ledger: Ledger, source_tier: str, scan_key: str) -> ScanRecord | None:
    """The catalogue row of a scan, or None if the catalogue step never saw it."""
    with ledger.read_session() as sess:
        row = sess.scalars(select(CatalogueScan).where(CatalogueScan.source_tier == source_tier,
                                                       CatalogueScan.scan_key == scan_key)).first()
        return None if row is None else _scan_record(sess, row)


def get_scans(ledger: Ledger, source_tier: str, scan_keys: Sequence[str]) -> dict[str, ScanRecord]:
    """The catalogue rows of ``scan_keys`` (those the catalogue step has seen), by key: one read per batch."""
    out: dict[str, ScanRecord] = {}
    with ledger.read_session() as sess:
        for chunk in in_chunks(sorted(set(scan_keys))):
            rows = list(sess.scalars(select(CatalogueScan).where(CatalogueScan.source_tier == source_tier,
                                                                 CatalogueScan.scan_key.in_(chunk))))
            out.update({r.scan_key: r for r in _scan_records(sess, rows)})
    return out


#: How the reason of a scan that waits for its own files starts (``services.catalogue``): such a scan is not
#: re-checked by every batch, see ``scans_in_state(waiting_checked_before=...)``.
WAITING_PREFIX = "waiting "


def scans_in_state(ledger: Ledger, states: Sequence[str], *, limit: int | None = None,
                   waiting_checked_before: datetime | None = None) -> list[ScanRecord]:
    """Scans in any of ``states``, least recently tried first (so one stubborn scan cannot starve the rest).

    ``waiting_checked_before``: leave out the pending scans that wait for their own files (reason starting with
    ``WAITING_PREFIX``) and were last checked at or after that time -- the back-off of waiting scans."""
    with ledger.read_session() as sess:
        q = (select(CatalogueScan).where(CatalogueScan.state.in_(list(states)))
             .order_by(CatalogueScan.updated_at, CatalogueScan.id))
        if waiting_checked_before is not None:
            waiting = (CatalogueScan.state == CatalogueState.PENDING) & CatalogueScan.pid.is_(None) & \
                func.coalesce(CatalogueScan.error, "").startswith(WAITING_PREFIX, autoescape=True)
            q = q.where(~(waiting & (CatalogueScan.updated_at >= waiting_checked_before)))
        if limit is not None:
            q = q.limit(limit)
        return _scan_records(sess, list(sess.scalars(q)))


@dataclass(frozen=True)
class ScanWrite:
    """One scan's new state, as ``record_scans`` writes it (the arguments of ``record_scan``)."""

    source_tier: str
    scan_key: str
    state: CatalogueState
    files: Sequence[LedgerFile]
    pid: str | None = None
    error: str | None = None
    locations: dict[str, Any] | None = None
    attempted: bool = True


def record_scan(ledger: Ledger, source_tier: str, scan_key: str, state: CatalogueState, *,
                files: Sequence[LedgerFile], pid: str | None = None, error: str | None = None,
                locations: dict[str, Any] | None = None, attempted: bool = True) -> None:
    """Set a scan's state, link ``files`` to it, and log one event per file when the state, pid or error
    changed (a scan retried through a long outage does not flood the event log)."""
    record_scans(ledger, [ScanWrite(source_tier, scan_key, state, files, pid, error, locations, attempted)])


def record_scans(ledger: Ledger, writes: Sequence[ScanWrite]) -> None:
    """``record_scan`` for every write of a catalogue step, in order, in ONE transaction (one commit: on SQLite
    one fsync per batch of scans instead of one per scan). Writes of the same scan apply one after the other."""
    if writes:
        ledger._retry_on_conflict(_record_scans, ledger, list(writes))


def _record_scans(ledger: Ledger, writes: list[ScanWrite]) -> None:
    """Paid per step, not per scan: the step's scan rows are read in one query per chunk, the new ones inserted
    in one statement, the writes applied in memory (in order), then the file links changed in one DELETE and
    one INSERT per chunk, and the events inserted together at the commit."""
    now = utcnow()
    with ledger.session() as sess:
        rows: dict[tuple[str, str], CatalogueScan] = {}
        for tier in sorted({w.source_tier for w in writes}):
            keys = sorted({w.scan_key for w in writes if w.source_tier == tier})
            for key_chunk in in_chunks(keys):
                for row in sess.scalars(select(CatalogueScan).where(CatalogueScan.source_tier == tier,
                                                                    CatalogueScan.scan_key.in_(key_chunk))):
                    rows[(tier, row.scan_key)] = row
        fresh: set[tuple[str, str]] = set()  # scans this step sees for the first time
        for w in writes:
            key = (w.source_tier, w.scan_key)
            if key not in rows:
                rows[key] = CatalogueScan(source_tier=w.source_tier, scan_key=w.scan_key, state=w.state, pid=w.pid,
                                          error=w.error, locations=w.locations or {}, attempts=0, updated_at=now)
                fresh.add(key)
        if fresh:
            sess.add_all([rows[k] for k in sorted(fresh)])
            sess.flush()  # one multi-row INSERT: the new scans get their ids
        linked: dict[int, set[int]] = {}     # scan id -> its file ids (of the scans written here)
        owner: dict[int, int] = {}           # file id -> scan id, for those files
        for chunk in in_chunks([r.id for k, r in rows.items() if k not in fresh]):
            for scan_id, file_id in sess.execute(select(CatalogueFile.scan_id, CatalogueFile.file_id)
                                                 .where(CatalogueFile.scan_id.in_(chunk))):
                linked.setdefault(scan_id, set()).add(file_id)
                owner[file_id] = scan_id
        relinked: dict[int, int] = {}        # file id -> the scan it is linked to after this step
        events: list[Event] = []
        for w in writes:
            key = (w.source_tier, w.scan_key)
            _apply_write(rows[key], linked, owner, relinked, events, w, now, new=key in fresh)
            fresh.discard(key)
        moved = sorted(relinked)
        for chunk in in_chunks(moved):  # a file belongs to one scan: its old link goes, wherever it was
            sess.execute(delete(CatalogueFile).where(CatalogueFile.file_id.in_(chunk))
                         .execution_options(synchronize_session=False))
        if moved:
            sess.execute(insert(CatalogueFile), [{"file_id": i, "scan_id": relinked[i]} for i in moved])
        sess.add_all(events)


def _apply_write(row: CatalogueScan, linked: dict[int, set[int]], owner: dict[int, int], relinked: dict[int, int],
                 events: list[Event], w: ScanWrite, now: datetime, *, new: bool) -> None:
    """One write on its scan's row (in memory), the links it adds (``relinked``) and its events."""
    changed = new or (row.state, row.pid, row.error) != (str(w.state), w.pid, w.error)
    row.state, row.pid, row.error, row.updated_at = w.state, w.pid, w.error, now
    if w.locations is not None:
        row.locations = dict(w.locations)
    row.files_digest = files_digest(w.files) if w.state == CatalogueState.CATALOGUED else None
    if w.attempted:
        row.attempts = (row.attempts or 0) + 1
    mine = linked.setdefault(row.id, set())
    new_ids = list(dict.fromkeys(f.id for f in w.files if f.id not in mine))
    for i in new_ids:
        before = owner.get(i)
        if before is not None and before in linked:
            linked[before].discard(i)
        owner[i] = row.id
        mine.add(i)
        relinked[i] = row.id
    if changed or new_ids:
        detail: dict[str, Any] = {"scan": w.scan_key, "state": str(w.state)}
        if w.pid is not None:
            detail["pid"] = w.pid
        if w.error is not None:
            detail["reason"] = w.error
        added = set(new_ids)
        for f in w.files if changed else [f for f in w.files if f.id in added]:
            events.append(Event(at=now, file_id=f.id, path=f.path, tier=None, kind=_EVENT_OF_STATE[w.state],
                                detail=detail))


def file_states(ledger: Ledger, *, source_tier: str | None = None) -> dict[tuple[str, str], FileCatalogueState]:
    """The catalogue state of every file the catalogue step has seen, keyed by (source tier, path)."""
    with ledger.session() as sess:
        q = (select(SourceFile.source_tier, SourceFile.path, CatalogueScan.scan_key, CatalogueScan.state,
                    CatalogueScan.pid, CatalogueScan.error)
             .join(CatalogueFile, CatalogueFile.file_id == SourceFile.id)
             .join(CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id))
        if source_tier is not None:
            q = q.where(SourceFile.source_tier == source_tier)
        return {(r.source_tier, r.path): FileCatalogueState(r.scan_key, r.state, r.pid, r.error)
                for r in sess.execute(q)}


def scan_counts(ledger: Ledger) -> dict[str, int]:
    """How many scans are in each catalogue state (``reads.scan_counts``, the query ``status`` runs too)."""
    with ledger.reader() as reader:
        return reads.scan_counts(reader)


# ---------------------------------------------------------------------------------------------- pruned locations


def queue_location_update(sess: Session, *, file_id: int, path: str, tier: str, now: datetime) -> str | None:
    """Queue a catalogued scan's location update after a copy of one of its files was pruned on ``tier``.

    Called by ``ledger.prune.finish_pruned`` inside the transaction that records the deletion, so the update
    can never be lost (not by a catalogue outage, nor by a run killed right after the deletion): the file's
    scan, if ``catalogued``, becomes ``pending_catalogue`` *keeping its pid* -- "the dataset exists; only its
    locations wait" -- and ``services.catalogue.retry_pending`` (every catalogue step, ``catalog retry``) or
    the prune run itself brings the catalogue up to date. A scan not catalogued yet needs nothing: its first
    ingest records the locations as they are then. Returns the scan key when a scan was queued."""
    scan_id = sess.scalar(select(CatalogueFile.scan_id).where(CatalogueFile.file_id == file_id))
    if scan_id is None:
        return None
    reason = f"location update: copies pruned on {tier}"
    result = sess.execute(
        update(CatalogueScan).where(CatalogueScan.id == scan_id, CatalogueScan.state == CatalogueState.CATALOGUED,
                                    CatalogueScan.pid.is_not(None))
        .values(state=CatalogueState.PENDING, error=reason, updated_at=now)
        .execution_options(synchronize_session=False))
    if int(cast(CursorResult[Any], result).rowcount) != 1:
        return None  # not catalogued (yet), or already queued
    key, pid = sess.execute(select(CatalogueScan.scan_key, CatalogueScan.pid)
                            .where(CatalogueScan.id == scan_id)).one()
    sess.add(Event(at=now, file_id=file_id, path=path, tier=tier, kind=EventKind.CATALOGUE_PENDING,
                   detail={"scan": key, "state": str(CatalogueState.PENDING), "pid": pid, "reason": reason}))
    return str(key)


def queued_location_updates(ledger: Ledger, file_ids: Sequence[int]) -> list[ScanRecord]:
    """The scans of ``file_ids`` whose location update is queued (``pending_catalogue`` with a pid)."""
    with ledger.session() as sess:
        scan_ids: set[int] = set()
        for chunk in in_chunks(file_ids):
            scan_ids.update(sess.scalars(select(CatalogueFile.scan_id).where(CatalogueFile.file_id.in_(chunk))))
        if not scan_ids:
            return []
        rows = sess.scalars(select(CatalogueScan).where(CatalogueScan.id.in_(sorted(scan_ids)),
                                                        CatalogueScan.state == CatalogueState.PENDING,
                                                        CatalogueScan.pid.is_not(None))
                            .order_by(CatalogueScan.id))
        return _scan_records(sess, list(rows))


def pruned_since(ledger: Ledger, file_ids: Sequence[int], tier: str) -> datetime | None:
    """When the last of ``file_ids`` was pruned on ``tier`` (the latest ``pruned`` event), or None."""
    with ledger.session() as sess:
        latest: datetime | None = None
        for chunk in in_chunks(file_ids):
            at = sess.scalar(select(func.max(Event.at)).where(Event.kind == EventKind.PRUNED, Event.tier == tier,
                                                               Event.file_id.in_(chunk)))
            if at is not None and (latest is None or at > latest):
                latest = at
        return latest


# ---------------------------------------------------------------------------------------------- the invariant


def _verified_everywhere(source_tier: str, targets: Sequence[str]) -> Any:
    """A condition on ``SourceFile``: a verified copy on every one of ``targets``."""
    n_verified = (select(func.count()).select_from(Copy)
                  .where(Copy.file_id == SourceFile.id, Copy.tier.in_(list(targets)), Copy.state == "verified")
                  .scalar_subquery())
    return (SourceFile.source_tier == source_tier) & (n_verified == len(set(targets)))


def uncatalogued_files(ledger: Ledger, source_tier: str, targets: Sequence[str], *, verified_before: datetime,
                       limit: int) -> list[str]:
    """Paths verified on every target (the last copy verified before ``verified_before``) that the catalogue
    step never recorded in any state: the files a run killed between its copy and its catalogue step left
    behind. Oldest first, at most ``limit``."""
    if not targets:
        return []
    last_verified = (select(func.max(Copy.verified_at)).where(Copy.file_id == SourceFile.id,
                                                               Copy.tier.in_(list(targets)))
                     .scalar_subquery())
    linked = select(CatalogueFile.file_id).where(CatalogueFile.file_id == SourceFile.id).exists()
    with ledger.session() as sess:
        q = (select(SourceFile.path).where(~linked, _verified_everywhere(source_tier, targets),
                                           last_verified < verified_before)
             .order_by(SourceFile.id).limit(limit))
        return list(sess.scalars(q))
