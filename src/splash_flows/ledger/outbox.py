"""The watcher's side of the ledger: the durable outbox of dispatcher triggers, and which files are already safe.

The outbox makes triggering crash-safe: a batch is written (committed) here *before* Prefect is asked to run it,
and marked ``sent`` with the flow run id only after Prefect accepted it. Pending entries are replayed oldest
first. Each entry carries an idempotency key fixed at write time, so replaying an entry Prefect accepted just
before a crash returns the same flow run instead of creating a second one.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, insert, or_, select

from splash_flows.errors import LedgerError
from splash_flows.ledger.models import (
    Copy,
    CopyState,
    OutboxEntry,
    OutboxPath,
    OutboxState,
    ScanFolder,
    SourceFile,
    utcnow,
)
from splash_flows.ledger.store import Ledger, in_chunks


@dataclass(frozen=True)
class OutboxRecord:
    """One outbox entry as stored."""

    id: int
    created_at: datetime
    idempotency_key: str
    deployment: str
    paths: tuple[str, ...]
    state: str
    attempts: int
    last_error: str | None
    flow_run_id: str | None
    sent_at: datetime | None


_ADD_ENTRY = insert(OutboxEntry).returning(OutboxEntry.id)
_ADD_PATHS = insert(OutboxPath)
_UNSETTLE = delete(ScanFolder).where(ScanFolder.tier == bindparam("tier"),
                                     ScanFolder.path.in_(bindparam("paths", expanding=True)))


def _record(row: OutboxEntry) -> OutboxRecord:
    return OutboxRecord(row.id, row.created_at, row.idempotency_key, row.deployment, tuple(row.paths), row.state,
                        row.attempts, row.last_error, row.flow_run_id, row.sent_at)


def _rowcount(result: Any) -> int:
    """Rows a DELETE removed (a ``CursorResult``; typed as a plain ``Result`` by ``Session.execute``)."""
    return int(result.rowcount or 0)


def new_idempotency_key() -> str:
    """A key unique to one outbox entry (random, so a recreated ledger cannot reuse a key an older run holds)."""
    return f"splash-watch-{uuid.uuid4().hex}"


class Outbox:
    """Reads and writes of the ``outbox`` table. Each method is one short transaction."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def add(self, deployment: str, paths: Sequence[str],
            versions: Sequence[tuple[int, float] | None] | None = None, *,
            source_tier: str | None = None) -> OutboxRecord:
        """Write a pending entry for ``paths`` (committed when this returns), with one ``outbox_paths`` row per
        path in the same transaction: ``versions[i]`` is the (size, mtime) of ``paths[i]`` the watcher batched,
        None (or no ``versions``) for "any version" (``in_flight_versions``). With ``source_tier``, the folders
        of ``paths`` stop being settled (``ledger.scan_state``) in the same transaction: a file of theirs is
        being sent, so light rescans list them again until a full scan finds them all verified."""
        return self.add_many(deployment, [(paths, versions)], source_tier=source_tier)[0]

    def add_many(self, deployment: str,
                 batches: Sequence[tuple[Sequence[str], Sequence[tuple[int, float] | None] | None]], *,
                 source_tier: str | None = None) -> list[OutboxRecord]:
        """``add`` for several entries, in order (their ids increase as ``batches`` go), in ONE transaction:
        either every entry is written or none is. A backfill writes hundreds of entries a second; one commit
        and one ``executemany`` of path rows per flush instead of per entry."""
        if not batches:
            return []
        members: list[dict[str, tuple[int, float] | None]] = []
        for paths, versions in batches:
            if not paths:
                raise LedgerError("refusing to write an empty batch to the outbox")
            if versions is not None and len(versions) != len(paths):
                raise LedgerError(f"outbox entry of {len(paths)} path(s) given {len(versions)} version(s)")
            members.append({path: versions[i] if versions is not None else None for i, path in enumerate(paths)})
        now = utcnow()
        keys = [new_idempotency_key() for _ in batches]
        with self.ledger.session() as sess:
            conn = sess.connection()  # Core statements: the ORM's unit of work cost a backfill 10% of its CPU
            ids: list[int] = []
            for (paths, _), key in zip(batches, keys, strict=True):
                ids.append(conn.execute(_ADD_ENTRY, {
                    "created_at": now, "idempotency_key": key, "deployment": deployment, "paths": list(paths),
                    "state": OutboxState.PENDING, "attempts": 0}).scalar_one())
            conn.execute(_ADD_PATHS, [
                {"entry_id": entry_id, "path": path, "size": v[0] if v else None, "mtime": v[1] if v else None}
                for entry_id, entry in zip(ids, members, strict=True) for path, v in entry.items()])
            if source_tier is not None:
                folders = list({p.rpartition("/")[0] for entry in members for p in entry})
                for chunk in in_chunks(folders):
                    conn.execute(_UNSETTLE, {"tier": source_tier, "paths": chunk})
        return [OutboxRecord(entry_id, now, key, deployment, tuple(paths), OutboxState.PENDING, 0, None, None, None)
                for entry_id, key, (paths, _) in zip(ids, keys, batches, strict=True)]

    def release(self, paths: Sequence[str] | None = None, *, under: str | None = None) -> int:
        """Forget that files are in flight (``in_flight_versions``): ``paths``, or every file under the folder
        ``under``, or (both None) every file. For files that are gone -- deleted, moved out, their volume
        unmounted -- so the run they were sent to cannot copy them: if they come back, the ledger's verified
        copies alone decide whether they are sent again. The entries themselves are kept (a pending one is still
        replayed; the move is idempotent). Returns how many path rows were released."""
        stmt = delete(OutboxPath)
        if paths is not None:
            released = 0
            with self.ledger.session() as sess:
                for chunk in in_chunks(list(dict.fromkeys(paths))):
                    released += _rowcount(sess.execute(stmt.where(OutboxPath.path.in_(chunk))))
            return released
        if under:
            stmt = stmt.where(OutboxPath.path.startswith(f"{under}/", autoescape=True))
        with self.ledger.session() as sess:
            return _rowcount(sess.execute(stmt))

    def forget_settled(self, sent_before: datetime) -> int:
        """Delete the ``outbox_paths`` rows of entries that hold no file in flight any more: refused ones, and
        ones sent before ``sent_before`` (the watcher's ``resend_after_s`` ago). ``in_flight_versions`` never
        reads them, and without this the table would grow by a row per file ever sent. The entries themselves
        (with their paths, run ids and errors) are kept. Returns how many rows were deleted."""
        dead = select(OutboxEntry.id).where(or_(
            OutboxEntry.state == OutboxState.FAILED,
            (OutboxEntry.state == OutboxState.SENT) & (OutboxEntry.sent_at < sent_before)))
        with self.ledger.session() as sess:
            return _rowcount(sess.execute(delete(OutboxPath).where(OutboxPath.entry_id.in_(dead))))

    def purge(self, settled_before: datetime) -> int:
        """Delete the entries that settled before ``settled_before``: sent (``sent_at``) or refused
        (``created_at``) that long ago, with any path rows left. The watcher keeps ``outbox_keep_days`` of them
        (an entry holds every path of its batch, so without this the table grows by the paths of every file ever
        sent); each file's own history stays in the ledger's event log. Pending entries are never deleted.
        Returns how many entries were deleted."""
        old = select(OutboxEntry.id).where(or_(
            (OutboxEntry.state == OutboxState.SENT) & (OutboxEntry.sent_at < settled_before),
            (OutboxEntry.state == OutboxState.FAILED) & (OutboxEntry.created_at < settled_before)))
        with self.ledger.session() as sess:
            ids = list(sess.scalars(old))
            deleted = 0
            for chunk in in_chunks(ids):
                sess.execute(delete(OutboxPath).where(OutboxPath.entry_id.in_(chunk)))
                deleted += _rowcount(sess.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(chunk))))
            return deleted

    def get(self, entry_id: int) -> OutboxRecord | None:
        with self.ledger.read_session() as sess:
            row = sess.get(OutboxEntry, entry_id)
            return None if row is None else _record(row)

    def next_pending(self, skip: Collection[int] = ()) -> OutboxRecord | None:
        """The oldest pending entry (replay order) whose id is not in ``skip``, or None."""
        with self.ledger.read_session() as sess:
            q = select(OutboxEntry).where(OutboxEntry.state == OutboxState.PENDING)
            if skip:
                q = q.where(OutboxEntry.id.notin_(list(skip)))
            row = sess.scalars(q.order_by(OutboxEntry.id).limit(1)).first()
            return None if row is None else _record(row)

    def entries(self, state: str | None = None) -> list[OutboxRecord]:
        """Every entry (or those in ``state``), oldest first."""
        with self.ledger.read_session() as sess:
            q = select(OutboxEntry).order_by(OutboxEntry.id)
            if state is not None:
                q = q.where(OutboxEntry.state == state)
            return [_record(r) for r in sess.scalars(q)]

    def in_flight(self, sent_since: datetime) -> list[OutboxRecord]:
        """Entries whose files must not be batched again yet: pending ones, and those sent after ``sent_since``."""
        with self.ledger.read_session() as sess:
            q = (select(OutboxEntry)
                 .where(or_(OutboxEntry.state == OutboxState.PENDING,
                            (OutboxEntry.state == OutboxState.SENT) & (OutboxEntry.sent_at >= sent_since)))
                 .order_by(OutboxEntry.id))
            return [_record(r) for r in sess.scalars(q)]

    def mark_sent(self, entry_id: int, flow_run_id: str) -> None:
        """Prefect accepted the entry and created (or returned) ``flow_run_id``."""
        with self.ledger.session() as sess:
            row = sess.get(OutboxEntry, entry_id)
            if row is None:
                raise LedgerError(f"outbox entry {entry_id} does not exist in ledger {self.ledger.describe()}")
            row.state, row.flow_run_id, row.sent_at = OutboxState.SENT, flow_run_id, utcnow()
            row.attempts += 1

    def record_attempt(self, entry_id: int, error: str) -> None:
        """An attempt failed transiently: count it and keep the reason; the entry stays pending."""
        with self.ledger.session() as sess:
            row = sess.get(OutboxEntry, entry_id)
            if row is None:
                raise LedgerError(f"outbox entry {entry_id} does not exist in ledger {self.ledger.describe()}")
            row.attempts += 1
            row.last_error = error

    def mark_failed(self, entry_id: int, error: str) -> None:
        """Prefect refused the entry for good: it is not replayed (its files are sent again by a later rescan)."""
        with self.ledger.session() as sess:
            row = sess.get(OutboxEntry, entry_id)
            if row is None:
                raise LedgerError(f"outbox entry {entry_id} does not exist in ledger {self.ledger.describe()}")
            row.state, row.last_error = OutboxState.FAILED, error
            row.attempts += 1

    def counts(self) -> dict[str, int]:
        """Entries per state (every state present, zero when none)."""
        with self.ledger.read_session() as sess:
            rows = sess.execute(select(OutboxEntry.state, func.count()).group_by(OutboxEntry.state)).all()
        out = {s.value: 0 for s in OutboxState}
        out.update({state: n for state, n in rows})
        return out


# One statement for every lookup: the IN lists are expanding parameters, so SQLAlchemy compiles it once (a
# statement built per chunk coerced every path and compiled anew: a third of a rescan's ledger time). "Verified on
# every target" is a correlated count per file (``uq_copies_file_tier`` makes (file, tier) unique, so the count is
# of distinct tiers), not a join grouped by file: SQLite stepped the grouped join at 0.70 s of CPU per 100,000
# paths, the correlated count at 0.44 s (docs/PERFORMANCE.md, section 4).
def _verified_targets(tiers: Any) -> Any:
    """How many of ``tiers`` (a bound expression) hold a verified copy of the outer query's file."""
    return (select(func.count()).select_from(Copy)
            .where(Copy.file_id == SourceFile.id, Copy.tier.in_(tiers), Copy.state == CopyState.VERIFIED)
            .scalar_subquery())


_VERIFIED = (select(SourceFile.path, SourceFile.size, SourceFile.mtime)
             .where(SourceFile.source_tier == bindparam("tier"),
                    SourceFile.path.in_(bindparam("paths", expanding=True)),
                    _verified_targets(bindparam("targets", expanding=True)) == bindparam("n_targets")))
# PostgreSQL keeps the grouped join whose plan was measured at 10M copies (docs/PERFORMANCE.md, section 5,
# "rescan chunk"); same answer (tests/unit/watcher/test_outbox.py runs on both).
_VERIFIED_JOINED = (select(SourceFile.path, SourceFile.size, SourceFile.mtime)
                    .join(Copy, Copy.file_id == SourceFile.id)
                    .where(SourceFile.source_tier == bindparam("tier"),
                           SourceFile.path.in_(bindparam("paths", expanding=True)),
                           Copy.tier.in_(bindparam("targets", expanding=True)), Copy.state == CopyState.VERIFIED)
                    .group_by(SourceFile.id, SourceFile.path, SourceFile.size, SourceFile.mtime)
                    .having(func.count(func.distinct(Copy.tier)) == bindparam("n_targets")))


@functools.cache
def _verified_range(n_targets: int) -> Select[str, int, float]:
    """The same question for the paths of one folder, as a range of the (source_tier, path) index between the
    first and the last of them: no IN list of paths to bind, the index walked once. The targets are ``n_targets``
    plain parameters (``t0``, ``t1``...), not an expanding list: expanding parameters are rendered into the SQL
    at every execution, which with one execution per folder cost more than the lookup. SQLite only: its BINARY
    collation orders UTF-8 paths as Python orders ``str``, while PostgreSQL orders a range by the column's
    collation."""
    return (select(SourceFile.path, SourceFile.size, SourceFile.mtime)
            .where(SourceFile.source_tier == bindparam("tier"),
                   SourceFile.path >= bindparam("lo"), SourceFile.path <= bindparam("hi"),
                   _verified_targets([bindparam(f"t{i}") for i in range(n_targets)]) == n_targets))


def verified_versions(ledger: Ledger, source_tier: str, targets: Sequence[str],
                      paths: Sequence[str]) -> dict[str, tuple[int, float]]:
    """Among ``paths`` on ``source_tier``, those verified on every tier of ``targets``, with the (size, mtime)
    of the source version that was verified. A file whose current size or mtime differs is a new version and
    is not safe yet. Indexed lookups (``ix_files_tier_path_pattern``, ``uq_copies_file_tier``) in chunks of
    ``IN_CHUNK`` paths, all in one read transaction, returning plain rows (no ORM objects)."""
    wanted = sorted(set(targets))
    out: dict[str, tuple[int, float]] = {}
    if not wanted:
        raise LedgerError("verified_versions needs at least one target tier")
    stmt = _VERIFIED if ledger.engine.dialect.name == "sqlite" else _VERIFIED_JOINED
    with ledger.reading() as conn:  # plain rows, statements compiled once (expanding IN lists)
        _verified_by_name(conn, stmt, source_tier, wanted, paths, out)
    return out


def _verified_by_name(conn: Connection, stmt: Select[str, int, float], source_tier: str, wanted: list[str],
                      paths: Sequence[str], out: dict[str, tuple[int, float]]) -> None:
    """``stmt`` (``_VERIFIED`` or ``_VERIFIED_JOINED``) for ``paths`` in IN lists of ``IN_CHUNK``, into ``out``."""
    for chunk in in_chunks(list(dict.fromkeys(paths))):
        rows = conn.execute(stmt, {"tier": source_tier, "paths": chunk, "targets": wanted,
                                   "n_targets": len(wanted)}).all()
        out.update({path: (size, mtime) for path, size, mtime in rows})


def verified_in_folders(ledger: Ledger, source_tier: str, targets: Sequence[str], paths: Sequence[str],
                        leaves: Sequence[tuple[int, int]]) -> dict[str, tuple[int, float]]:
    """``verified_versions`` of ``paths``, a walk's listing in which each ``(start, end)`` of ``leaves`` is the
    slice holding every file of one leaf folder (no folder below it on disk). On SQLite each such folder is one
    range scan of the path index between its first and last path (rows in that range the walk did not list --
    a file deleted since, a file of a subfolder removed since -- are read and dropped), the other paths go
    through ``verified_versions``' IN lists, as every path does on other databases (a range there is ordered
    by the column's collation). Same answer either way (``tests/unit/watcher/test_outbox.py``), one read
    transaction."""
    wanted = sorted(set(targets))
    if not wanted:
        raise LedgerError("verified_versions needs at least one target tier")
    if ledger.engine.dialect.name != "sqlite" or not leaves:
        return verified_versions(ledger, source_tier, wanted, paths)
    others: list[str] = []
    if sum(end - start for start, end in leaves) < len(paths):
        inside = bytearray(len(paths))
        for start, end in leaves:
            inside[start:end] = b"\1" * (end - start)
        others = [p for p, leaf in zip(paths, inside, strict=True) if not leaf]
    out: dict[str, tuple[int, float]] = {}
    by_range = _verified_range(len(wanted))
    params: dict[str, object] = {f"t{i}": tier for i, tier in enumerate(wanted)}
    params["tier"] = source_tier
    with ledger.reading() as conn:
        for start, end in leaves:
            if start >= end:
                continue
            names = set(paths[start:end])
            params["lo"], params["hi"] = min(names), max(names)
            # one fetchall: iterating a result fetches row by row
            out.update({path: (size, mtime) for path, size, mtime in conn.execute(by_range, params).all()
                        if path in names})
        _verified_by_name(conn, _VERIFIED, source_tier, wanted, others, out)
    return out


# Two statements, not a join: joined, SQLite's planner walked every pending entry (``ix_outbox_state_id``) and
# probed each for the chunk's paths -- quadratic in a backfill, whose pending entries grow to thousands. The
# paths first (``ix_outbox_paths_path``; a backfill's new files find none), then only the entries they name.
_MEMBERS = (select(OutboxPath.path, OutboxPath.size, OutboxPath.mtime, OutboxPath.entry_id)
            .where(OutboxPath.path.in_(bindparam("paths", expanding=True))))
_LIVE_ENTRIES = (select(OutboxEntry.id)
                 .where(OutboxEntry.id.in_(bindparam("ids", expanding=True)),
                        or_(OutboxEntry.state == OutboxState.PENDING,
                            (OutboxEntry.state == OutboxState.SENT) & (OutboxEntry.sent_at >= bindparam("since")))))

InFlight = dict[str, set[tuple[int, float] | None]]


def in_flight_versions(ledger: Ledger, paths: Sequence[str], sent_since: datetime) -> InFlight:
    """Among ``paths``, those in an outbox entry that is pending or was sent at or after ``sent_since``, with the
    versions (size, mtime) batched -- None for "any version" (entries written before ``outbox_paths`` existed).
    A file is in flight when its current version, or None, is among them: the watcher does not batch it again.
    Indexed lookups (``ix_outbox_paths_path``, then the entries named, by primary key) in chunks of
    ``IN_CHUNK``, one read transaction, plain rows."""
    out: InFlight = {}
    unique = list(dict.fromkeys(paths))
    with ledger.reading() as conn:
        for chunk in in_chunks(unique):
            members = conn.execute(_MEMBERS, {"paths": chunk}).all()
            if not members:
                continue
            ids = list({m[3] for m in members})
            live: set[int] = set()
            for id_chunk in in_chunks(ids):
                live.update(conn.execute(_LIVE_ENTRIES, {"ids": id_chunk, "since": sent_since}).scalars())
            for path, size, mtime, entry_id in members:
                if entry_id in live:
                    out.setdefault(path, set()).add(None if size is None or mtime is None else (size, mtime))
    return out


def is_in_flight(in_flight: InFlight, path: str, version: tuple[int, float]) -> bool:
    """Whether ``path`` at ``version`` is in flight according to ``in_flight_versions``' answer."""
    versions = in_flight.get(path)
    return versions is not None and (version in versions or None in versions)
