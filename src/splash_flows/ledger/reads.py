"""The ledger's read queries behind ``splash-flows status``, written once as SQL text, with no SQLAlchemy.

``status`` must answer at once (issue 12.5: under half a second on the demo), and importing SQLAlchemy alone costs
more than that budget allows on the beamline VM, so ``status`` reads the ledger through the Python DB-API
(``ledger.dbapi``: the standard library's ``sqlite3``, or ``psycopg``). Every other caller -- the ledger-taking
functions of ``ledger.overview`` and ``ledger.counters`` that the data-safety page, ``/metrics``, the watcher,
the catalogue and tests use -- runs **the same SQL text** through SQLAlchemy (``ConnectionReader`` in
``ledger.overview``: ``Connection.exec_driver_sql``). There is one version of each query, here; a caller only
chooses the connection.

A query is SQL text with ``:name`` parameters. ``run`` hands it to a ``Reader`` in the form its driver takes
(``sqlite3`` reads ``:name`` itself; ``psycopg`` takes ``%(name)s``) with its values bound as SQLAlchemy's
column types would (``UTCDateTime``: SQLite stores naive UTC text, PostgreSQL aware timestamps), and turns the
values read back into what the ORM gives (aware UTC datetimes, JSON objects, ints).

The rules live here once: a copy is *safe* on a tier when it is verified there or was deliberately pruned after
being verified (``SAFE_STATES``); a file is *late* when it was detected before a given time and is not safe on
every target tier yet; a path is *refused* when a ``refused`` event names it and the ledger never registered it
afterwards. Everything is counted, filtered and paged in SQL: unfiltered totals come from the counters the
database keeps (migration ``0004_ledger_counters``), filtered ones are GROUP BY queries, and a page is keyset-paged
(``WHERE (source_tier, path) > cursor ORDER BY source_tier, path LIMIT n``) over the unique
``(source_tier, path)`` index, its copies and catalogue states read afterwards for the page's files only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: Copy states in which the data is safe on that tier (verified, or verified and then pruned on purpose). The
#: values of ``models.CopyState``, kept here as text so this module needs no SQLAlchemy (a test checks them).
SAFE_STATES: tuple[str, ...] = ("verified", "pruning", "deleting", "pruned")
#: The others, listed (not negated) so the ``(tier, state)`` index finds them directly.
UNSAFE_STATES: tuple[str, ...] = ("pending", "failed", "stale", "at_risk")
#: ``models.EventKind.REFUSED`` and ``ledger.archive.RESTORE_DRILL``
REFUSED = "refused"
RESTORE_DRILL = "restore_drill"
IN_CHUNK = 500  # values per SQL IN (...) list: well under every backend's bind-parameter limit
#: PostgreSQL session option of every ledger connection: no JIT (the ledger's queries are short and
#: index-driven; compiling one took seconds on a busy machine, docs/PERFORMANCE.md section 5).
PG_NO_JIT = "-c jit=off"
#: counter rows (all shards) above which a reader folds the gone backends' rows first (``ledger.counters``)
FOLD_AT = 512
FOLD_LOCK = 733734  # advisory lock key of a fold (the migration lock is 733733; named locks use the two-key form)
#: counters table -> (its key columns, its value columns): what a fold sums per key into shard 0
SHARDED = {
    "copy_counts": ("tier, state", ("n", "bytes")),
    "file_counts": ("source_tier", ("n", "bytes")),
    "event_counts": ("kind, tier", ("n",)),
    "latency_counts": ("tier, bucket", ("n", "seconds")),
}


class Reader(Protocol):
    """A connection to the ledger that runs SQL text as its driver takes it and returns the rows as tuples."""

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""

    def execute(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``sql`` (in the driver's parameter style) with ``params``; every row it returns."""


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def driver_sql(sql: str, dialect: str) -> str:
    """``sql`` written with ``:name`` parameters, in the style of the dialect's driver: ``sqlite3`` reads
    ``:name`` as it is; ``psycopg`` wants ``%(name)s`` (and a literal ``%`` doubled). ``::`` casts are kept."""
    if dialect == "sqlite":
        return sql
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def bind(value: Any, dialect: str) -> Any:
    """A parameter as ``models.UTCDateTime`` binds it: on SQLite an aware datetime becomes the naive UTC text
    SQLAlchemy stores (``2026-11-30 09:12:00.000000``, so comparisons with stored values are text order); on
    PostgreSQL it stays an aware datetime. Other values are bound as they are."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect == "sqlite":
            return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond:06d}"
    return value


def run(reader: Reader, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (``:name`` parameters) with ``params``, through ``reader``."""
    dialect = reader.dialect
    return reader.execute(driver_sql(sql, dialect), {k: bind(v, dialect) for k, v in (params or {}).items()})


def as_utc(value: Any) -> datetime | None:
    """A datetime read back as ``models.UTCDateTime`` gives it: aware, in UTC (SQLite hands back text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a datetime from the ledger: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: Any) -> datetime:
    out = as_utc(value)
    if out is None:
        raise TypeError("a NOT NULL datetime of the ledger was NULL")
    return out


def as_json(value: Any) -> dict[str, Any]:
    """A JSON column read back as an object (SQLite, and SQLAlchemy's psycopg connections, hand back text)."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value)


def in_chunks(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in slices of ``IN_CHUNK``, for queries with an IN list."""
    for start in range(0, len(values), IN_CHUNK):
        yield list(values[start:start + IN_CHUNK])


def in_list(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(:name0, :name1, ...)`` and its parameters, for ``IN`` with the values given (at least one)."""
    if not values:
        raise ValueError(f"an empty IN list ({name})")
    params = {f"{name}{i}": v for i, v in enumerate(values)}
    return "(" + ", ".join(f":{k}" for k in params) + ")", params


# ------------------------------------------------------------------------------------------ schema revision

MIGRATIONS = Path(__file__).with_name("migrations")
_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def migration_head(versions: Path = MIGRATIONS / "versions") -> str | None:
    """The single head of the migrations in ``versions``, read from each file's ``revision`` and
    ``down_revision`` lines without importing Alembic; None when that is not certain (a file without a
    readable ``revision``, several heads), and the caller then asks Alembic. A test checks it agrees with
    Alembic's ``ScriptDirectory``."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py":
            continue
        source = path.read_text(encoding="utf-8")
        rev, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if rev is None or down is None:
            return None
        revisions.add(rev.group(1))
        parents.update(re.findall(r"[\"']([^\"']+)[\"']", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None



def current_revision(reader: Reader) -> str | None:
    """The Alembic revision the database is at (None: no revision row). Raises the driver's error when there is
    no ``alembic_version`` table. Several rows (a broken upgrade) raise ValueError."""
    versions = [str(r[0]) for r in run(reader, "SELECT version_num FROM alembic_version")]
    if len(versions) > 1:
        raise ValueError(f"the ledger is at several revisions at once ({versions})")
    return versions[0] if versions else None


# ------------------------------------------------------------------------------------------ counters


@dataclass(frozen=True)
class Count:
    """How many rows, and their bytes."""

    n: int
    bytes: int


def copy_counts(reader: Reader) -> dict[str, dict[str, Count]]:
    """tier -> state -> copies and bytes, from the counters the database keeps (states with no copy left out)."""
    out: dict[str, dict[str, Count]] = {}
    for tier, state, n, size in run(reader, "SELECT tier, state, sum(n), sum(bytes) FROM copy_counts "
                                            "GROUP BY tier, state"):
        if int(n or 0):
            out.setdefault(str(tier), {})[str(state)] = Count(int(n), int(size or 0))
    return {t: dict(sorted(v.items())) for t, v in sorted(out.items())}


def file_counts(reader: Reader) -> dict[str, Count]:
    """source tier -> files and bytes, from the counters the database keeps."""
    rows = run(reader, "SELECT source_tier, sum(n), sum(bytes) FROM file_counts GROUP BY source_tier")
    return {str(t): Count(int(n), int(b or 0)) for t, n, b in rows if int(n or 0)}


def all_files(reader: Reader) -> Count:
    """Every file of every source tier."""
    counts = file_counts(reader).values()
    return Count(sum(c.n for c in counts), sum(c.bytes for c in counts))


def fold_statements() -> list[str]:
    """One statement per sharded counters table: delete the rows of PostgreSQL backends that no longer exist and
    add them into shard 0; each returns (rows deleted, rows written). Run after ``pg_try_advisory_xact_lock
    (FOLD_LOCK)`` succeeded, in the same transaction (``counters.fold``)."""
    out = []
    for table, (keys, values) in SHARDED.items():
        cols = ", ".join(values)
        sums = ", ".join(f"sum({v})" for v in values)
        adds = ", ".join(f"{v} = c.{v} + excluded.{v}" for v in values)
        out.append(f"WITH gone AS (DELETE FROM {table} WHERE shard <> 0 AND shard NOT IN "
                   f"(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING {keys}, {cols}), "
                   f"folded AS (INSERT INTO {table} AS c ({keys}, shard, {cols}) "
                   f"SELECT {keys}, 0, {sums} FROM gone GROUP BY {keys} ORDER BY {keys} "
                   f"ON CONFLICT ({keys}, shard) DO UPDATE SET {adds} "
                   f"RETURNING 1) SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded)")
    return out


def fold(reader: Reader) -> int:
    """Fold the counter rows of PostgreSQL backends that are gone into shard 0, in the reader's transaction
    (which must be able to write, and commit afterwards); how many rows were folded (0 on SQLite, or when
    another fold holds the lock). Safe at any time: a live backend's row is never touched, and a row being
    folded while a new backend with the same process id writes it is either folded with that write (the DELETE
    waits for it) or recreated after the fold (the upsert waits for the DELETE)."""
    if reader.dialect != "postgresql":
        return 0
    if not run(reader, f"SELECT pg_try_advisory_xact_lock({FOLD_LOCK})")[0][0]:
        return 0
    return sum(int(run(reader, sql)[0][0]) for sql in fold_statements())


def fold_if_many(reader: Reader) -> int:
    """``fold`` when the copy or event counters have more than ``FOLD_AT`` rows (counts of two small tables)."""
    if reader.dialect != "postgresql":
        return 0
    rows = max(int(run(reader, f"SELECT count(*) FROM {table}")[0][0]) for table in ("copy_counts", "event_counts"))
    return fold(reader) if rows > FOLD_AT else 0


# ------------------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class CopyInfo:
    """What status and the catalogue step need of a copy."""

    state: str
    checksum: str | None
    verified_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class FileStatus:
    """One row of ``splash-flows status``: a source file and the state of each of its copies."""

    path: str
    source_tier: str
    size: int
    checksum_alg: str
    checksum: str
    detected_at: datetime
    copies: dict[str, CopyInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class FileCatalogueState:
    """The catalogue state of one file (its scan's)."""

    scan_key: str
    state: str
    pid: str | None
    error: str | None


@dataclass(frozen=True)
class StatusFilter:
    """Which files a status query is about. Every criterion given must hold (states: any one of them)."""

    source_tier: str | None = None
    prefix: str | None = None
    #: (tier or None for any tier, copy state): the file has a copy in that state
    states: tuple[tuple[str | None, str], ...] = ()
    #: with ``targets``: only files detected before this time and not safe on every target yet
    late_before: datetime | None = None
    targets: tuple[str, ...] = ()

    def where(self) -> tuple[list[str], dict[str, Any]]:
        """The conditions on ``files`` this filter stands for (ANDed), and their parameters."""
        conds: list[str] = []
        params: dict[str, Any] = {}
        if self.source_tier:
            conds.append("files.source_tier = :f_source_tier")
            params["f_source_tier"] = self.source_tier
        if self.prefix:
            # substr, not LIKE: LIKE is case-insensitive on SQLite, and a prefix of a path is exact
            conds.append("substr(files.path, 1, :f_prefix_len) = :f_prefix")
            params.update(f_prefix_len=len(self.prefix), f_prefix=self.prefix)
        if self.states:  # one IN over the copies (the (tier, state) index when a tier is named), not a probe per file
            parts = []
            for i, (tier, state) in enumerate(self.states):
                params[f"f_state{i}"] = state
                if tier is None:  # the tiers the counters hold such copies on: the (tier, state) index again
                    parts.append(f"SELECT file_id FROM copies WHERE state = :f_state{i} AND tier IN "
                                 f"(SELECT tier FROM copy_counts WHERE state = :f_state{i})")
                else:
                    parts.append(f"SELECT file_id FROM copies WHERE state = :f_state{i} AND tier = :f_tier{i}")
                    params[f"f_tier{i}"] = tier
            conds.append(f"files.id IN ({' UNION '.join(parts)})")
        if self.late_before is not None:
            late, late_params = late_condition(self.late_before, self.targets)
            conds.append(late)
            params.update(late_params)
        return conds, params


def _where(conds: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conds)}" if conds else ""


def late_condition(before: datetime, targets: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Files detected before ``before`` that are not safe (``SAFE_STATES``) on at least one of ``targets``."""
    if not targets:
        return "1 = 0", {}
    safe, params = in_list("late_safe", SAFE_STATES)
    params["late_before"] = before
    missing = []
    for i, tier in enumerate(targets):
        params[f"late_tier{i}"] = tier
        missing.append(f"NOT EXISTS (SELECT 1 FROM copies AS late_c{i} WHERE late_c{i}.file_id = files.id "
                       f"AND late_c{i}.tier = :late_tier{i} AND late_c{i}.state IN {safe})")
    return f"(files.detected_at < :late_before AND ({' OR '.join(missing)}))", params


@dataclass
class StatusTotals:
    """What ``status`` prints first: how many files (and bytes), and per tier how many copies in each state."""

    files: int = 0
    bytes: int = 0
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)

    def copies_on(self, tier: str, states: Sequence[str] | None = None) -> int:
        """Copies on ``tier`` (in one of ``states``, or in any state)."""
        counts = self.tiers.get(tier, {})
        return sum(n for s, n in counts.items() if states is None or s in states)


def totals(reader: Reader, flt: StatusFilter = StatusFilter()) -> StatusTotals:
    """Files, bytes and copies per (tier, state) of the files ``flt`` selects, counted by the database. Without
    a filter they are read from the counters the database keeps: a few rows, not millions (the caller folds
    PostgreSQL's counter shards first when it may write: ``fold_if_many``)."""
    conds, params = flt.where()
    if not conds:
        files = all_files(reader)
        return StatusTotals(files=files.n, bytes=files.bytes,
                            tiers={t: {s: c.n for s, c in states.items()} for t, states in copy_counts(reader).items()})
    n, size = run(reader, f"SELECT count(*), coalesce(sum(files.size), 0) FROM files{_where(conds)}", params)[0]
    out = StatusTotals(files=int(n), bytes=int(size))
    rows = run(reader, "SELECT copies.tier, copies.state, count(*) FROM copies JOIN files ON files.id = copies.file_id"
                       f"{_where(conds)} GROUP BY copies.tier, copies.state", params)
    for tier, state, count in rows:
        out.tiers.setdefault(str(tier), {})[str(state)] = int(count)
    return out


def count_late(reader: Reader, before: datetime, targets: Sequence[str], *,
               whole: StatusTotals | None = None) -> int:
    """How many files were detected before ``before`` and are not safe on every one of ``targets`` yet.

    ``whole`` (the unfiltered ``totals``) lets the usual cases skip the per-file check: when every file has a
    safe copy on every target nothing is late, and when every file at least has a copy row on every target
    only the files with an unsafe copy (found through the ``(tier, state)`` index) can be."""
    if not targets:
        return 0
    if whole is not None:
        if all(whole.copies_on(t, SAFE_STATES) == whole.files for t in targets):
            return 0
        if all(whole.copies_on(t) == whole.files for t in targets):
            tiers, params = in_list("tier", targets)
            unsafe, unsafe_params = in_list("unsafe", UNSAFE_STATES)
            rows = run(reader, "SELECT count(*) FROM files WHERE files.id IN (SELECT file_id FROM copies WHERE "
                               f"tier IN {tiers} AND state IN {unsafe}) AND files.detected_at < :before",
                       {**params, **unsafe_params, "before": before})
            return int(rows[0][0] or 0)
    cond, params = late_condition(before, targets)
    return int(run(reader, f"SELECT count(*) FROM files WHERE {cond}", params)[0][0] or 0)


@dataclass(frozen=True)
class StatusPage:
    """One page of files (ordered by source tier and path) with their copies and catalogue states."""

    rows: list[FileStatus]
    catalogue: dict[tuple[str, str], FileCatalogueState]


Cursor = tuple[str, str]  # (source tier, path) of the last file of a page


def status_page(reader: Reader, flt: StatusFilter = StatusFilter(), *, limit: int | None = None,
                after: Cursor | None = None) -> StatusPage:
    """The files ``flt`` selects that sort after ``after`` (source tier, path), at most ``limit`` of them (None:
    all). Keyset paging over the unique ``(source_tier, path)`` index: page 10,000 costs what page 1 costs."""
    conds, params = flt.where()
    if after is not None:
        # a row comparison, which both databases read as a range of the (source_tier, path) index (the equivalent
        # OR of two conditions made PostgreSQL walk the index from its start: 0.6 s mid-way through 1M files)
        conds = [*conds, "(files.source_tier, files.path) > (:after_tier, :after_path)"]
        params.update(after_tier=after[0], after_path=after[1])
    sql = ("SELECT files.id, files.path, files.source_tier, files.size, files.checksum_alg, files.checksum, "
           f"files.detected_at FROM files{_where(conds)} ORDER BY files.source_tier, files.path")
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    files = run(reader, sql, params)
    copies: dict[int, dict[str, CopyInfo]] = {}
    catalogue: dict[int, FileCatalogueState] = {}
    for chunk in in_chunks([int(f[0]) for f in files]):
        ids, id_params = in_list("id", chunk)
        for file_id, tier, state, checksum, verified_at, error in run(
                reader, f"SELECT file_id, tier, state, checksum, verified_at, error FROM copies WHERE file_id IN {ids}",
                id_params):
            copies.setdefault(int(file_id), {})[str(tier)] = CopyInfo(str(state), checksum, as_utc(verified_at), error)
        for file_id, scan_key, state, pid, error in run(
                reader, "SELECT catalogue_files.file_id, catalogue_scans.scan_key, catalogue_scans.state, "
                        "catalogue_scans.pid, catalogue_scans.error FROM catalogue_files JOIN catalogue_scans "
                        f"ON catalogue_scans.id = catalogue_files.scan_id WHERE catalogue_files.file_id IN {ids}",
                id_params):
            catalogue[int(file_id)] = FileCatalogueState(str(scan_key), str(state), pid, error)
    rows = [FileStatus(str(path), str(tier), int(size), str(alg), str(checksum), _utc(detected),
                       dict(sorted(copies.get(int(file_id), {}).items())))
            for file_id, path, tier, size, alg, checksum, detected in files]
    cat = {(str(f[2]), str(f[1])): catalogue[int(f[0])] for f in files if int(f[0]) in catalogue}
    return StatusPage(rows, cat)


def next_cursor(page: StatusPage) -> Cursor | None:
    """Where the page after ``page`` starts (None: ``page`` is empty)."""
    return (page.rows[-1].source_tier, page.rows[-1].path) if page.rows else None


def pages(fetch: Callable[[Cursor | None], StatusPage], chunk: int) -> Iterator[StatusPage]:
    """Keyset pages of ``chunk`` rows: ``fetch(after)`` for the page after the cursor (None: the first), until a
    short or empty page. The one paging loop, whoever reads the pages (one transaction or one per page)."""
    after: Cursor | None = None
    while True:
        page = fetch(after)
        if not page.rows:
            return
        yield page
        if len(page.rows) < chunk:
            return
        after = next_cursor(page)


def iter_status(reader: Reader, flt: StatusFilter = StatusFilter(), *, chunk: int = 5000) -> Iterator[StatusPage]:
    """Every file ``flt`` selects, ``chunk`` at a time (``status_page`` after ``status_page``)."""
    return pages(lambda after: status_page(reader, flt, limit=chunk, after=after), chunk)


@dataclass(frozen=True)
class Refusal:
    """A path refused before any work (outside the root, missing, export-controlled...) and never registered."""

    tier: str | None
    path: str
    reason: str
    at: datetime
    times: int  # how many refused events name it (the watcher and the dispatcher both record them)


_REFUSED = ("SELECT events.tier, events.path, max(events.id) AS last, count(*) AS times FROM events "
            "WHERE events.kind = :refused AND events.path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM files "
            "WHERE files.path = events.path AND files.source_tier = events.tier) GROUP BY events.tier, events.path")


def count_refused(reader: Reader) -> int:
    """How many distinct paths are refused and were never registered afterwards."""
    return int(run(reader, f"SELECT count(*) FROM ({_REFUSED}) AS refused", {"refused": REFUSED})[0][0] or 0)


def refusals(reader: Reader, *, limit: int | None = None) -> list[Refusal]:
    """The refused paths (see ``Refusal``), most recent first, with the reason of their latest refusal."""
    sql = f"{_REFUSED} ORDER BY max(events.id) DESC"
    params: dict[str, Any] = {"refused": REFUSED}
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    groups = run(reader, sql, params)
    details: dict[int, tuple[datetime, dict[str, Any]]] = {}
    for chunk in in_chunks([int(g[2]) for g in groups]):
        ids, id_params = in_list("id", chunk)
        for ev_id, at, detail in run(reader, f"SELECT id, at, detail FROM events WHERE id IN {ids}", id_params):
            details[int(ev_id)] = (_utc(at), as_json(detail))
    out = []
    for tier, path, last, times in groups:
        at, detail = details[int(last)]
        out.append(Refusal(tier, str(path), str(detail.get("reason", "")), at, int(times)))
    return out


# ------------------------------------------------------------------------------------------ the other lines of status


def scan_counts(reader: Reader) -> dict[str, int]:
    """How many scans are in each catalogue state."""
    return {str(s): int(n) for s, n in run(reader, "SELECT state, count(*) FROM catalogue_scans GROUP BY state")}


def analysis_counts(reader: Reader) -> dict[str, int]:
    """Number of scans per reduction state."""
    return {str(s): int(n) for s, n in run(reader, "SELECT state, count(*) FROM analysis_scans GROUP BY state")}


@dataclass(frozen=True)
class Drill:
    """One restore drill's result (its event): when, which file, and the detail (``ok``, ``bundle``,
    ``reason``...)."""

    at: datetime
    path: str | None
    detail: dict[str, Any]


def last_drill(reader: Reader) -> Drill | None:
    """The newest restore drill (``restore_drill_733``), or None."""
    rows = run(reader, "SELECT at, path, detail FROM events WHERE kind = :kind ORDER BY id DESC LIMIT 1",
               {"kind": RESTORE_DRILL})
    return Drill(_utc(rows[0][0]), rows[0][1], as_json(rows[0][2])) if rows else None
