"""Ledger access: every read and write of the system of record goes through ``Ledger``.

Each public method is one short transaction. State changes and their events are written in the same
transaction, so the log and the current state can never disagree, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from splash_flows.config import redact_url
from splash_flows.errors import LedgerError
from splash_flows.ledger.models import Copy, CopyState, Event, EventKind, SourceFile, utcnow
from splash_flows.ledger.reads import PG_NO_JIT, migration_head

# the light status read path's types and rules (ledger.reads), re-exported where the ledger's callers find them
from splash_flows.ledger.reads import CopyInfo as CopyInfo
from splash_flows.ledger.reads import FileStatus as FileStatus
from splash_flows.ledger.reads import in_chunks as in_chunks

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class SourceRecord:
    """A source file as the ledger knows it."""

    id: int
    tier: str
    path: str
    size: int
    mtime: float
    checksum_alg: str
    checksum: str


class NewSource(NamedTuple):
    """A source file to register: its tier-relative path, size, mtime and checksum."""

    path: str
    size: int
    mtime: float
    checksum_alg: str
    checksum: str


@dataclass(frozen=True)
class VerifiedCopy:
    """A copy found verified on a tier, to record (``skipped``: it was already there, nothing written)."""

    source: SourceRecord
    checksum: str
    size: int
    skipped: bool
    detail: dict[str, Any] = field(default_factory=dict)


def _record(row: SourceFile) -> SourceRecord:
    return SourceRecord(row.id, row.source_tier, row.path, row.size, row.mtime, row.checksum_alg, row.checksum)


# the tables, for Core statements (a batch's rows as plain executemany: no ORM unit of work per row)
_FILES = cast(Table, SourceFile.__table__)
_COPIES = cast(Table, Copy.__table__)
_EVENTS = cast(Table, Event.__table__)
# a copy row updated by primary key, executemany (the SET columns are the keys of the parameter rows)
_UPDATE_COPY_BY_ID = update(_COPIES).where(_COPIES.c.id == bindparam("copy_id"))


def copy_info(c: Copy) -> CopyInfo:
    """What status and the catalogue step need of a copy: from a ``Copy`` or a row selecting the same columns."""
    return CopyInfo(c.state, c.checksum, c.verified_at, c.error)


def _source_query(tier: str, path: str) -> Select[SourceFile]:
    return select(SourceFile).where(SourceFile.source_tier == tier, SourceFile.path == path)


def _event(kind: str, source: SourceRecord | SourceFile | None, tier: str | None, detail: dict[str, Any],
           *, path: str | None = None, at: datetime | None = None) -> Event:
    return Event(at=at or utcnow(), file_id=source.id if source else None,
                 path=path if path is not None else (source.path if source else None),
                 tier=tier, kind=kind, detail=detail)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # isolation_level=None hands transaction control to us, so writers can BEGIN IMMEDIATE (below) and wait
    # on the busy timeout instead of failing with "database is locked" on a read->write upgrade.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


#: Execution option of the engine behind ``Ledger.read_session``: its transactions only read.
READ_ONLY = "splash_read_only"


def _sqlite_begin(conn: Any) -> None:
    # A writer takes the write lock at BEGIN (and waits on the busy timeout for it); a read-only transaction
    # takes none: in WAL mode it reads its snapshot while writers write, and never waits for them.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


class ConnectionReader:
    """``reads.Reader`` over a SQLAlchemy connection: the SQL text goes to the driver as it is
    (``exec_driver_sql``), as on ``status``'s DB-API connection (``ledger.dbapi``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    def execute(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row of ``sql`` (in the driver's parameter style: ``reads.run`` wrote it so)."""
        result = self.conn.exec_driver_sql(sql, dict(params))
        return [tuple(row) for row in result] if result.returns_rows else []


class Ledger:
    """The system of record. Build one per process with ``Ledger.open(url)``; it is safe to share across threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._read_session = sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    # ------------------------------------------------------------------------------------------ setup

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Ledger:
        """Connect to the ledger at ``url``; with ``upgrade`` bring its schema to the newest revision first."""
        try:
            parsed = make_url(url)
        except SQLAlchemyError as err:
            raise LedgerError(f"ledger URL {redact_url(url)!r} is not valid: {err}") from None
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            # No JIT: the ledger's queries are short and index-driven, and compiling one took seconds on a busy
            # machine (the page's per-day table: 0.2 s without, 3.5-9 s with; docs/PERFORMANCE.md section 5).
            user_options = parsed.query.get("options")
            kwargs["connect_args"] = {"options": " ".join(filter(None, [str(user_options or ""), PG_NO_JIT]))}
        try:
            engine = create_engine(parsed, **kwargs)
        except (ImportError, SQLAlchemyError) as err:
            raise LedgerError(f"ledger URL {redact_url(url)!r}: cannot load its database driver: {err}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        ledger = cls(engine)
        if upgrade:
            ledger.upgrade()
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    def _alembic_config(self) -> AlembicConfig:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def head_revision(self) -> str | None:
        """The newest migration, as Alembic computes it from ``migrations/versions``."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        """The revision the database is at (None: no schema yet). One SELECT; Alembic is not imported."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                versions = [str(v) for v in conn.scalars(text("SELECT version_num FROM alembic_version"))]
        except OperationalError as err:
            raise LedgerError(f"cannot reach the ledger at {self.describe()}: {err.orig}") from None
        if len(versions) > 1:
            raise LedgerError(f"the ledger at {self.describe()} is at several revisions at once ({versions}); "
                              "run `splash-flows ledger upgrade`")
        return versions[0] if versions else None

    def describe(self) -> str:
        return redact_url(self.engine.url.render_as_string(hide_password=False))

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Serialise concurrent upgrades: a file lock for SQLite, an advisory lock for PostgreSQL."""
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if not db or db == ":memory:":
                yield
                return
            with open(f"{db}.migrate.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        elif self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(733733)"))
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(733733)"))
                    conn.commit()
        else:
            yield

    @contextlib.contextmanager
    def named_lock(self, name: str) -> Iterator[None]:
        """Serialise one piece of work across every process using this ledger (e.g. find-then-create of one
        scan's dataset, which two concurrent runs must not both do): a PostgreSQL advisory lock on a hash of
        ``name`` (two-key form, so it never collides with the migration lock), a byte-range lock in one
        file next to a SQLite file."""
        digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=4).digest()
        key = int.from_bytes(digest, "big", signed=True)
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if not db or db == ":memory:":
                yield
                return
            with open(f"{db}.locks", "a") as lock:  # one byte-range lock per name (65536 stripes) in one file
                fcntl.lockf(lock, fcntl.LOCK_EX, 1, key & 0xFFFF)
                try:
                    yield
                finally:
                    fcntl.lockf(lock, fcntl.LOCK_UN, 1, key & 0xFFFF)
        elif self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(7330, :k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(7330, :k)"), {"k": key})
                    conn.commit()
        else:
            yield

    def upgrade(self) -> str | None:
        """Bring the schema to the newest migration (a no-op when already there). Returns the revision.

        When the database is at the head already (every start but the first after an upgrade), this costs one
        SELECT and no Alembic import: the head is read from the migration files' ``revision`` lines
        (``migration_head``), and only a difference brings Alembic in."""
        if (fast := migration_head()) is not None and self.current_revision() == fast:
            return fast
        from alembic import command

        head = self.head_revision()
        if self.current_revision() == head:
            return head
        with self._migration_lock():
            if self.current_revision() == head:
                return head
            cfg = self._alembic_config()
            try:
                with self.engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            except SQLAlchemyError as err:
                raise LedgerError(f"upgrading the ledger at {self.describe()} failed: {err}") from None
        return head

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """One read-only transaction on a plain connection (rows, not ORM objects), for the scans' bulk
        lookups; like ``read_session`` it takes no write lock on SQLite, so a rescan's reads do not queue behind
        the outbox's writes. Database errors become LedgerError naming the ledger."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{READ_ONLY: True})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as err:
            raise LedgerError(f"ledger {self.describe()}: {type(err).__name__}: {err}") from None

    @contextlib.contextmanager
    def reader(self) -> Iterator[ConnectionReader]:
        """``reading`` as a ``reads.Reader``: the queries ``status`` runs (SQL text in ``ledger.reads``), run
        through this ledger's engine."""
        with self.reading() as conn:
            yield ConnectionReader(conn)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction. Database errors become LedgerError naming the ledger."""
        try:
            with self._session.begin() as sess:
                yield sess
        except IntegrityError:
            raise
        except SQLAlchemyError as err:
            raise LedgerError(f"ledger {self.describe()}: {type(err).__name__}: {err}") from None

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """One transaction that only reads. On SQLite it takes no write lock (``session`` takes it at BEGIN so
        that writers wait their turn instead of failing on a read->write upgrade): the watcher's and the
        flows' frequent reads then never queue behind another process's writes, nor make writers queue behind
        them. Never write in it. Database errors become LedgerError naming the ledger."""
        try:
            with self._read_session.begin() as sess:
                yield sess
        except SQLAlchemyError as err:
            raise LedgerError(f"ledger {self.describe()}: {type(err).__name__}: {err}") from None

    def _retry_on_conflict(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a read-then-write transaction; if a concurrent writer inserted the same row first, run it again."""
        for attempt in range(3):
            try:
                return fn(*args, **kwargs)
            except IntegrityError as err:
                if attempt == 2:
                    raise LedgerError(f"ledger {self.describe()}: conflicting writes: {err.orig}") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ sources

    def register_source(
        self, tier: str, path: str, *, size: int, mtime: float, checksum_alg: str, checksum: str
    ) -> SourceRecord:
        """Record a source file (idempotent). A file whose size, mtime or checksum changed is a new version:
        its other copies become ``stale`` and a ``source_changed`` event keeps the old values."""
        return self.register_sources(tier, [NewSource(path, size, mtime, checksum_alg, checksum)])[0]

    def register_sources(self, tier: str, sources: Sequence[NewSource]) -> list[SourceRecord]:
        """``register_source`` for a whole batch in ONE transaction (one commit, one fsync on SQLite), in order."""
        if not sources:
            return []
        return self._retry_on_conflict(self._register_sources, tier, sources)  # type: ignore[no-any-return]

    def _register_sources(self, tier: str, sources: Sequence[NewSource]) -> list[SourceRecord]:
        now = utcnow()
        with self.session() as sess:
            known: dict[str, SourceFile] = {}
            for chunk in in_chunks(list(dict.fromkeys(s.path for s in sources))):
                q = select(SourceFile).where(SourceFile.source_tier == tier, SourceFile.path.in_(chunk))
                known.update({r.path: r for r in sess.scalars(q)})
            fresh: dict[str, int] = {}  # path -> index of its first occurrence, for paths never seen
            for i, new in enumerate(sources):
                if new.path not in known:
                    fresh.setdefault(new.path, i)
            ids = self._insert_new_sources(sess, tier, [sources[i] for i in fresh.values()], now) if fresh else {}
            out = []
            for i, new in enumerate(sources):
                if fresh.get(new.path) == i:  # inserted just now: its record is what was inserted
                    out.append(SourceRecord(ids[new.path], tier, *new))
                elif new.path in known:
                    out.append(self._register_in(sess, tier, new, now, known[new.path]))
                else:  # the same path twice in one batch: its first occurrence registered it
                    first = sources[fresh[new.path]]
                    out.append(SourceRecord(ids[new.path], tier, *first) if first == new else
                               self._register_in(sess, tier, new, now, sess.get_one(SourceFile, ids[new.path])))
            return out

    @staticmethod
    def _insert_new_sources(sess: Session, tier: str, sources: Sequence[NewSource], now: datetime) -> dict[str, int]:
        """Insert never-seen sources, their verified source-tier copies and ``detected`` events as three
        multi-row Core INSERTs (the ORM's bulk path, and reading the rows back as objects, cost more than the
        disk for small files); the new files' ids by path."""
        result = sess.execute(
            insert(_FILES).returning(_FILES.c.path, _FILES.c.id, sort_by_parameter_order=True),
            [{"source_tier": tier, "path": s.path, "size": s.size, "mtime": s.mtime, "checksum_alg": s.checksum_alg,
              "checksum": s.checksum, "detected_at": now, "updated_at": now} for s in sources])
        ids: dict[str, int] = {path: file_id for path, file_id in result}
        sess.execute(insert(_COPIES), [
            {"file_id": ids[s.path], "tier": tier, "state": CopyState.VERIFIED, "size": s.size,
             "checksum": s.checksum, "verified_at": now, "updated_at": now} for s in sources])
        sess.execute(insert(_EVENTS), [
            {"at": now, "file_id": ids[s.path], "path": s.path, "tier": tier, "kind": EventKind.DETECTED,
             "detail": {"size": s.size, "mtime": s.mtime, "checksum_alg": s.checksum_alg, "checksum": s.checksum}}
            for s in sources])
        return ids

    @staticmethod
    def _register_in(sess: Session, tier: str, new: NewSource, now: datetime, row: SourceFile) -> SourceRecord:
        """A known source seen again: unchanged -> its record; changed -> a new version (see register_source)."""
        _path, size, mtime, checksum_alg, checksum = new
        if (row.size, row.mtime, row.checksum_alg, row.checksum) == (size, mtime, checksum_alg, checksum):
            return _record(row)
        sess.add(_event(EventKind.SOURCE_CHANGED, row, tier, at=now, detail={
            "old": {"size": row.size, "mtime": row.mtime, "checksum": row.checksum},
            "new": {"size": size, "mtime": mtime, "checksum": checksum}}))
        row.size, row.mtime, row.checksum_alg, row.checksum = size, mtime, checksum_alg, checksum
        row.updated_at = now
        for copy in row.copies:
            if copy.tier == tier:
                copy.state, copy.size, copy.checksum, copy.verified_at = CopyState.VERIFIED, size, checksum, now
            elif copy.state == CopyState.VERIFIED:
                copy.state = CopyState.STALE
            copy.updated_at = now
        return _record(row)

    def mark_source_changed(self, tier: str, seen: Sequence[tuple[str, int, float]], *, seen_by: str) -> list[str]:
        """Files seen on ``tier`` with a (size, mtime) other than the registered one: rewritten in place. Their
        verified copies on other tiers become ``stale`` at once (``status`` shows it) and a ``source_changed``
        event records what was seen; the file row keeps the old version and checksum until the move registers
        the new one (which logs the old checksum). Returns the paths marked; unknown or unchanged ones are
        left alone. One transaction."""
        if not seen:
            return []
        now = utcnow()
        marked: list[str] = []
        by_path = {path: (size, mtime) for path, size, mtime in seen}
        with self.session() as sess:
            for chunk in in_chunks(list(by_path)):
                rows = sess.scalars(select(SourceFile).where(SourceFile.source_tier == tier,
                                                             SourceFile.path.in_(chunk)))
                for row in rows:
                    size, mtime = by_path[row.path]
                    if (row.size, row.mtime) == (size, mtime):
                        continue
                    staled = []
                    for copy in row.copies:
                        if copy.tier != tier and copy.state == CopyState.VERIFIED:
                            copy.state, copy.updated_at = CopyState.STALE, now
                            staled.append(copy.tier)
                    if not staled:
                        continue
                    sess.add(_event(EventKind.SOURCE_CHANGED, row, tier, at=now, detail={
                        "seen_by": seen_by, "stale": sorted(staled),
                        "old": {"size": row.size, "mtime": row.mtime, "checksum": row.checksum},
                        "new": {"size": size, "mtime": mtime, "checksum": None}}))
                    marked.append(row.path)
        return marked

    def get_source(self, tier: str, path: str) -> SourceRecord | None:
        with self.session() as sess:
            row = sess.scalars(_source_query(tier, path)).first()
            return None if row is None else _record(row)

    def sources(self, tier: str, paths: Sequence[str]) -> dict[str, SourceRecord]:
        """The known source records among ``paths`` on ``tier``."""
        out: dict[str, SourceRecord] = {}
        with self.read_session() as sess:
            for chunk in in_chunks(paths):
                q = select(SourceFile).where(SourceFile.source_tier == tier, SourceFile.path.in_(chunk))
                rows = sess.scalars(q)
                out.update({r.path: _record(r) for r in rows})
        return out

    # ------------------------------------------------------------------------------------------ copies

    def record_verified(self, source: SourceRecord, tier: str, *, checksum: str, size: int, skipped: bool,
                        detail: dict[str, Any] | None = None) -> None:
        """Mark ``source``'s copy on ``tier`` verified and log how (copied+verified, or skipped as already there)."""
        self.record_verified_many(tier, [VerifiedCopy(source, checksum, size, skipped, detail or {})])

    def record_verified_many(self, tier: str, copies: Sequence[VerifiedCopy]) -> None:
        """``record_verified`` for a whole batch on one tier in ONE transaction."""
        if copies:
            self._retry_on_conflict(self._record_verified_many, tier, copies)

    def _record_verified_many(self, tier: str, copies: Sequence[VerifiedCopy]) -> None:
        now = utcnow()
        with self.session() as sess:
            existing: dict[int, int] = {}
            for chunk in in_chunks([c.source.id for c in copies]):
                q = select(Copy.file_id, Copy.id).where(Copy.tier == tier, Copy.file_id.in_(chunk))
                existing.update({file_id: copy_id for file_id, copy_id in sess.execute(q)})
            values = {"state": CopyState.VERIFIED, "verified_at": now, "error": None, "updated_at": now}
            updates: dict[int, dict[str, Any]] = {}
            inserts: dict[int, dict[str, Any]] = {}
            events: list[dict[str, Any]] = []
            for v in copies:
                row = {**values, "size": v.size, "checksum": v.checksum}
                if v.source.id in existing:
                    updates[v.source.id] = {"copy_id": existing[v.source.id], **row}
                else:
                    inserts[v.source.id] = {"file_id": v.source.id, "tier": tier, **row}
                base = {"checksum_alg": v.source.checksum_alg, "checksum": v.checksum, "size": v.size, **v.detail}
                kinds = [EventKind.SKIPPED] if v.skipped else [EventKind.COPIED, EventKind.VERIFIED]
                events += [{"at": now, "file_id": v.source.id, "path": v.source.path, "tier": tier, "kind": kind,
                            "detail": base} for kind in kinds]
            # multi-row Core statements: one UPDATE by primary key, one INSERT each for new copies and for events
            if updates:
                sess.execute(_UPDATE_COPY_BY_ID, list(updates.values()))
            if inserts:
                sess.execute(insert(_COPIES), list(inserts.values()))
            sess.execute(insert(_EVENTS), events)

    def record_failed(self, path: str, tier: str, reason: str, *, source: SourceRecord | None = None,
                      kind: EventKind = EventKind.FAILED) -> None:
        """Log a failure (or a refusal) with its reason; mark the copy failed when the file is known."""
        self._retry_on_conflict(self._record_failed, path, tier, reason, source, kind)

    def _record_failed(self, path: str, tier: str, reason: str, source: SourceRecord | None, kind: EventKind) -> None:
        now = utcnow()
        with self.session() as sess:
            if source is not None and source.tier != tier:
                copy = self._copy_row(sess, source.id, tier, now)
                copy.state, copy.error, copy.updated_at = CopyState.FAILED, reason, now
            sess.add(_event(kind, source, tier, {"reason": reason}, path=path, at=now))

    def record_event(self, kind: str, *, path: str | None = None, tier: str | None = None,
                     source: SourceRecord | None = None, detail: dict[str, Any] | None = None) -> None:
        with self.session() as sess:
            sess.add(_event(kind, source, tier, detail or {}, path=path))

    @staticmethod
    def _copy_row(sess: Session, file_id: int, tier: str, now: datetime) -> Copy:
        copy = sess.scalars(select(Copy).where(Copy.file_id == file_id, Copy.tier == tier)).first()
        if copy is None:
            copy = Copy(file_id=file_id, tier=tier, state=CopyState.PENDING, updated_at=now)
            sess.add(copy)
        return copy

    def copy_state(self, source: SourceRecord, tier: str) -> CopyInfo | None:
        with self.session() as sess:
            c = sess.scalars(select(Copy).where(Copy.file_id == source.id, Copy.tier == tier)).first()
            return None if c is None else copy_info(c)

    # ------------------------------------------------------------------------------------------ reading

    def status(self, *, source_tier: str | None = None, path_prefix: str | None = None) -> list[FileStatus]:
        """Every known file with the state of each copy, ordered by path (``overview.status_page`` pages them)."""
        with self.session() as sess:
            q = select(SourceFile).order_by(SourceFile.path)
            if source_tier:
                q = q.where(SourceFile.source_tier == source_tier)
            if path_prefix:
                q = q.where(SourceFile.path.startswith(path_prefix, autoescape=True))
            return self._with_copies(sess, list(sess.scalars(q)))

    @staticmethod
    def _with_copies(sess: Session, files: list[SourceFile]) -> list[FileStatus]:
        copies: dict[int, dict[str, CopyInfo]] = {}
        for chunk in in_chunks([f.id for f in files]):
            for c in sess.scalars(select(Copy).where(Copy.file_id.in_(chunk))):
                copies.setdefault(c.file_id, {})[c.tier] = copy_info(c)
        return [FileStatus(f.path, f.source_tier, f.size, f.checksum_alg, f.checksum, f.detected_at,
                           dict(sorted(copies.get(f.id, {}).items()))) for f in files]

    def count_verified(self, tier: str, paths: Sequence[str], source_tier: str) -> int:
        """How many of ``paths`` are verified on ``tier`` (for progress display)."""
        with self.session() as sess:
            n = 0
            for chunk in in_chunks(paths):
                n += sess.scalar(
                    select(func.count()).select_from(Copy).join(SourceFile)
                    .where(SourceFile.source_tier == source_tier, SourceFile.path.in_(chunk),
                           Copy.tier == tier, Copy.state == CopyState.VERIFIED)) or 0
            return n

    def events(self, *, path: str | None = None, kind: str | None = None, limit: int | None = None) -> list[Event]:
        with self.session() as sess:
            q = select(Event).order_by(Event.id)
            if path is not None:
                q = q.where(Event.path == path)
            if kind is not None:
                q = q.where(Event.kind == kind)
            if limit is not None:
                q = q.limit(limit)
            return list(sess.scalars(q))

    def counts(self) -> dict[str, int]:
        """Row counts per table (used by tests and ``status`` summaries to show nothing was duplicated)."""
        with self.session() as sess:
            return {
                "files": sess.scalar(select(func.count()).select_from(SourceFile)) or 0,
                "copies": sess.scalar(select(func.count()).select_from(Copy)) or 0,
                "events": sess.scalar(select(func.count()).select_from(Event)) or 0,
            }
