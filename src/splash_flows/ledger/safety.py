"""Ledger queries of the data-safety page, the metrics and the alerts: is every file safe, and if not, where?

Everything is aggregated in SQL; nothing here loads all files. The per proposal and day table reads only the
files detected in a window (index ``ix_files_detected_at``) and their copies in one pass (each file's copies read
once through ``uq_copies_file_tier`` into its state per tier, ``PerFileCopies``, then counted per proposal and
day); a file list's flags
are correlated ``EXISTS`` sub-queries that probe ``uq_copies_file_tier`` (file_id, tier) and
``catalogue_files``'s primary key; totals come from the counters the database keeps (``ledger.counters``) and
``ix_copies_tier_state_due``; file lists are paged by path (keyset).

**Columns are pluggable.** A column of the page is a ``Flag``: a name, a label and a function that builds a
boolean SQL expression about one file (``files`` row aliased as ``FileRow``). A question about the file's copies is
asked as ``scope.any_copy(tiers, states, due_by=...)`` (or with the helpers below): the file list renders it as
an ``EXISTS`` probe, the per-day table as a test of its one pass over the window's copies (the file's state
per tier) -- one rule, two renderings. The page, the JSON API and the file
filter all read ``flags_for(config)``; another capability (the tape archive, the HPC reduction) adds its own with
``register_flag`` and it shows up everywhere, counted per proposal and day and usable as a file filter.

**Safe** means: every move target holds a copy that was verified (state verified, or pruning / deleting / pruned,
which only ever follow a verification and happen by policy). **Late**: not safe, and detected more than
``monitoring.safe_within_minutes`` ago. The proposal of a file is the first folder of its path
(``<proposal>/<YYYYMMDD>/...``, the 7.3.3 layout the watcher sees); the day is the UTC day it was detected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, false, func, literal, or_, select, true
from sqlalchemy.orm import Session, aliased

from splash_flows.config import Config
from splash_flows.ledger import counters
from splash_flows.ledger.models import (
    AnalysisScan,
    AnalysisState,
    CatalogueFile,
    CatalogueScan,
    CatalogueState,
    Copy,
    CopyState,
    Event,
    OutboxEntry,
    OutboxState,
    SourceFile,
)
from splash_flows.ledger.reads import SAFE_STATES, UNSAFE_STATES
from splash_flows.ledger.store import Ledger, in_chunks

FileRow = SourceFile
#: Copy states that mean "this copy was verified, and anything since happened by policy".
REACHED_SAFETY = SAFE_STATES  # the rule status uses (ledger.reads), one place
ARCHIVE_TIER = "hpss"  # the tape tier's name in the 7.3.3 layout; the archive capability may register its own flag


@dataclass(frozen=True)
class CopyCondition:
    """The file has a copy on one of ``tiers`` in one of ``states`` (and, with ``due_by``, due for pruning by
    then): the one kind of question a flag asks about a file's copies, so that it can be answered two ways."""

    tiers: tuple[str, ...]
    states: tuple[str, ...]
    due_by: datetime | None = None

    def probe(self) -> ColumnElement[bool]:
        """One ``EXISTS`` probe of the file's copies (``uq_copies_file_tier``; for many files PostgreSQL may
        hash it into a range of ``(tier, state, prune_due_at)``)."""
        tier = Copy.tier == self.tiers[0] if len(self.tiers) == 1 else Copy.tier.in_(list(self.tiers))
        state = Copy.state == self.states[0] if len(self.states) == 1 else Copy.state.in_(list(self.states))
        cond = [Copy.file_id == FileRow.id, tier, state]
        if self.due_by is not None:
            cond += [Copy.prune_due_at.is_not(None), Copy.prune_due_at <= self.due_by]
        return exists().where(*cond)


class PerFileCopies:
    """The copy conditions of the per-day table, answered by reading each file's copies once.

    A file has at most one copy per tier (``uq_copies_file_tier``), so its copies reduce to the state and the prune
    date of its copy on each tier the flags name, and every ``CopyCondition`` becomes a test of those columns. Two
    renderings of that row, each the faster one measured on its database (docs/PERFORMANCE.md section 5):

    * PostgreSQL: a LATERAL aggregate over the file's range of the index, pivoting per tier
      (``max(state) FILTER (WHERE tier = t)``), one row per file. (One outer join per tier instead made the
      planner walk the whole primary key of ``files`` to merge-join a tier it expected empty.)
    * SQLite (no LATERAL; its aggregates cost ~1 us per row and column): one LEFT JOIN of ``copies`` per tier on
      ``(file_id, tier)``, one index seek per file and tier.

    Flags are rendered twice: first to collect the tiers (``collecting``), then, once ``build`` has made the
    row, for real."""

    def __init__(self) -> None:
        self.tiers: dict[str, None] = {}
        self.columns: dict[str, tuple[Any, Any]] | None = None  # tier -> (its copy's state, its prune date)

    def column(self, cond: CopyCondition) -> ColumnElement[bool]:
        if self.columns is None:  # collecting
            self.tiers.update(dict.fromkeys(cond.tiers))
            return true()
        alts: list[ColumnElement[bool]] = []
        for tier in cond.tiers:
            state, due = self.columns[tier]
            test: ColumnElement[bool] = state == cond.states[0] if len(cond.states) == 1 else state.in_(
                list(cond.states))
            if cond.due_by is not None:
                test = and_(test, due <= cond.due_by)
            alts.append(test)
        return func.coalesce(or_(*alts), false())  # no copy on the tier: NULL, i.e. false

    def build(self, q: Any, *, lateral: bool) -> Any:
        """``q`` (a SELECT from ``files``) joined to each file's copy row (see the class)."""
        self.columns = {}
        if lateral:
            cols: list[Any] = []
            for i, tier in enumerate(self.tiers):
                cols += [func.max(Copy.state).filter(Copy.tier == tier).label(f"s{i}"),
                         func.max(Copy.prune_due_at).filter(Copy.tier == tier).label(f"d{i}")]
            # an aggregate without GROUP BY: exactly one row per file (NULLs when it has no copy)
            sub = select(*cols).where(Copy.file_id == FileRow.id).lateral("per_file")
            for i, tier in enumerate(self.tiers):
                self.columns[tier] = (sub.c[f"s{i}"], sub.c[f"d{i}"])
            return q.outerjoin(sub, true())
        for i, tier in enumerate(self.tiers):
            c = aliased(Copy, name=f"copy_{i}")
            self.columns[tier] = (c.state, c.prune_due_at)
            q = q.outerjoin(c, and_(c.file_id == FileRow.id, c.tier == tier))
        return q


@dataclass(frozen=True)
class Scope:
    """What a flag's expression may depend on: the configuration and the moment of the query (and, for the
    per-day table, the one-pass rendering of copy conditions)."""

    config: Config
    now: datetime
    per_file: PerFileCopies | None = None

    @property
    def targets(self) -> list[str]:
        return list(self.config.move.targets)

    @property
    def tiers(self) -> list[str]:
        return list(self.config.tiers)

    @property
    def late_before(self) -> datetime:
        return self.now - timedelta(minutes=self.config.monitoring.safe_within_minutes)

    def any_copy(self, tiers: Sequence[str], states: Sequence[str], *,
                 due_by: datetime | None = None) -> ColumnElement[bool]:
        """The file has a copy on one of ``tiers`` in one of ``states`` (due for pruning by ``due_by``)."""
        cond = CopyCondition(tuple(tiers), tuple(states), due_by)
        if not cond.tiers:
            return false()
        return self.per_file.column(cond) if self.per_file is not None else cond.probe()


@dataclass(frozen=True)
class Flag:
    """One yes/no fact about a file, counted per proposal and day on the page and usable as a file filter."""

    name: str
    label: str
    help: str
    expr: Callable[[Scope], ColumnElement[bool]]
    alarm: bool = False  # shown in red when non-zero
    applies: Callable[[Config], bool] = field(default=lambda _config: True)


def has_copy(scope: Scope, tier: str, states: Sequence[str]) -> ColumnElement[bool]:
    """The file has a copy on ``tier`` in one of ``states`` (one probe of ``uq_copies_file_tier``)."""
    return scope.any_copy([tier], states)


def has_copy_state(scope: Scope, state: str) -> ColumnElement[bool]:
    """Some copy of the file, on a configured tier, is in ``state``. Naming the tiers lets a planner that reads
    the flag for many files at once (PostgreSQL hashes such a sub-query) find the copies in that state through
    ``(tier, state, ...)`` instead of reading every copy (measured at 10M copies: docs/PERFORMANCE.md)."""
    return scope.any_copy(scope.tiers, [state])


def safe_expr(scope: Scope) -> ColumnElement[bool]:
    """Every move target holds a copy that reached safety."""
    if not scope.targets:
        return literal(True)
    return and_(*(has_copy(scope, t, REACHED_SAFETY) for t in scope.targets))


def late_expr(scope: Scope) -> ColumnElement[bool]:
    return and_(FileRow.detected_at < scope.late_before, ~safe_expr(scope))


def catalogue_expr(states: Sequence[str]) -> ColumnElement[bool]:
    return exists().where(CatalogueFile.file_id == FileRow.id, CatalogueScan.id == CatalogueFile.scan_id,
                          CatalogueScan.state.in_(list(states)))


def due_expr(scope: Scope) -> ColumnElement[bool]:
    return scope.any_copy(scope.tiers, [CopyState.VERIFIED], due_by=scope.now)


_FLAGS: list[Flag] = [
    Flag("safe", "safe", "verified on every move target", safe_expr),
    Flag("late", "late", "not safe, detected longer ago than the objective (monitoring.safe_within_minutes)",
         late_expr, alarm=True),
    Flag("at_risk", "at risk", "a copy held verified failed its re-check",
         lambda s: has_copy_state(s, CopyState.AT_RISK), alarm=True),
    Flag("failed", "failed", "the last copy attempt failed, or the catalogue refused the scan",
         lambda s: or_(has_copy_state(s, CopyState.FAILED), catalogue_expr([CatalogueState.FAILED])), alarm=True),
    Flag("pending_catalogue", "pending catalogue", "verified but not in the catalogue yet",
         lambda s: catalogue_expr([CatalogueState.PENDING])),
    Flag("due", "due for pruning", "a verified copy whose prune date has passed", due_expr),
    Flag("archived", "archived", f"verified on the tape tier ({ARCHIVE_TIER})",
         lambda s: has_copy(s, ARCHIVE_TIER, [CopyState.VERIFIED]), applies=lambda c: ARCHIVE_TIER in c.tiers),
]


def reduced_expr(scope: Scope) -> ColumnElement[bool]:
    """The file's scan was reduced: its catalogue scan (``catalogue_files``) has an ``analysis_scans`` row of the
    same key in state reduced (probes of ``catalogue_files``' key and ``uq_analysis_scans_key``)."""
    return exists().where(CatalogueFile.file_id == FileRow.id, CatalogueScan.id == CatalogueFile.scan_id,
                          AnalysisScan.source_tier == CatalogueScan.source_tier,
                          AnalysisScan.scan_key == CatalogueScan.scan_key,
                          AnalysisScan.state == AnalysisState.REDUCED)


_FLAGS.append(Flag("reduced", "reduced", "its scan was reduced (analysis results written and delivered)",
                   reduced_expr, applies=lambda c: bool(c.analysis.enabled)))


def register_flag(flag: Flag) -> None:
    """Add a column to the page (or replace the one of the same name): e.g. ``reduced`` from the analysis."""
    for i, existing in enumerate(_FLAGS):
        if existing.name == flag.name:
            _FLAGS[i] = flag
            return
    _FLAGS.append(flag)


def flags_for(config: Config) -> list[Flag]:
    """The flags shown for this configuration, in page order."""
    return [f for f in _FLAGS if f.applies(config)]


def flag_named(config: Config, name: str) -> Flag | None:
    return next((f for f in flags_for(config) if f.name == name), None)


def tier_flag(tier: str) -> Flag:
    """``on:<tier>``: the file has a verified copy on ``tier``."""
    return Flag(f"on:{tier}", tier, f"verified on {tier}", lambda s: has_copy(s, tier, [CopyState.VERIFIED]))


def proposal_expr(dialect: str) -> ColumnElement[str]:
    """The proposal of a file: the first folder of its path ('' for a file at the top of the tree)."""
    find = func.strpos if dialect == "postgresql" else func.instr
    pos = find(FileRow.path, "/")
    return case((pos > 0, func.substr(FileRow.path, 1, pos - 1)), else_=literal(""))


def day_expr(dialect: str) -> ColumnElement[str]:
    """The UTC day (YYYY-MM-DD) a file was detected."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", FileRow.detected_at), "YYYY-MM-DD")
    return func.substr(FileRow.detected_at, 1, 10)  # SQLite stores UTC as 'YYYY-MM-DD HH:MM:SS...'


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GroupRow:
    """One proposal on one day: file and byte counts and, per flag, how many files have it."""

    proposal: str
    day: str
    files: int
    bytes: int
    counts: dict[str, int]


@dataclass(frozen=True)
class Overview:
    """The whole ledger at a glance (what the top of the page and /metrics show)."""

    at: datetime
    files: int
    bytes: int
    copies: dict[str, dict[str, int]]  # tier -> state -> copies
    copy_bytes: dict[str, dict[str, int]]  # tier -> state -> bytes
    not_safe: int
    late: int
    oldest_not_safe: datetime | None
    at_risk: int
    failed: int
    pending_catalogue: int
    catalogue_failed: int
    due: int  # copies (not files) verified and past their prune date, on the tiers with a retention rule
    outbox: dict[str, int]
    oldest_outbox: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(), "files": self.files, "bytes": self.bytes, "copies": self.copies,
            "copy_bytes": self.copy_bytes, "not_safe": self.not_safe, "late": self.late,
            "oldest_not_safe": self.oldest_not_safe.isoformat() if self.oldest_not_safe else None,
            "at_risk": self.at_risk, "failed": self.failed, "pending_catalogue": self.pending_catalogue,
            "catalogue_failed": self.catalogue_failed, "due": self.due, "outbox": self.outbox,
            "oldest_outbox": self.oldest_outbox.isoformat() if self.oldest_outbox else None,
        }


@dataclass(frozen=True)
class FileRowView:
    """One file in a list: identity, size, when detected, each copy's state and the catalogue state."""

    id: int
    path: str
    size: int
    detected_at: datetime
    copies: dict[str, str]
    catalogue: str | None
    scan_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "size": self.size, "detected_at": self.detected_at.isoformat(),
                "copies": self.copies, "catalogue": self.catalogue, "scan_id": self.scan_id}


# ----------------------------------------------------------------------------------------------- queries


def _dialect(ledger: Ledger) -> str:
    return ledger.engine.dialect.name


#: Target copy states that leave a file not safe (every other state is in REACHED_SAFETY).
NOT_SAFE_STATES = UNSAFE_STATES
SCAN_CHUNK = 20_000
UNSAFE_IN_LIMIT = 30_000  # above this, list_files filters with the flag's expression alone


def unsafe_file_ids(sess: Session, config: Config, *, kept: dict[str, dict[str, counters.Count]] | None = None,
                    files: int | None = None) -> set[int]:
    """The ids of the files not safe, found without probing every file.

    Two kinds: (a) a target copy in a state of ``NOT_SAFE_STATES`` (a range of ``ix_copies_tier_state``), and
    (b) a target with no copy row at all (the move has not reached the file yet). For (b) the deficit is known
    from two index-only counts (files x targets - target copy rows, unique per file and tier); the files are then
    looked for from the newest id down, in chunks probed through ``uq_copies_file_tier``, until the whole deficit
    is found -- in flight files are the newest, so this usually reads one chunk. The two counts come from the
    counters the database keeps (``ledger.counters``; ``kept`` and ``files`` when the caller read them already)."""
    targets = list(config.move.targets)
    source = config.move.source
    bad = sorted(_ids_in_states(sess, targets, NOT_SAFE_STATES))
    out: set[int] = set()
    for chunk in in_chunks(bad):  # (no join above: it would make the planner walk every file of the source)
        out.update(sess.scalars(select(FileRow.id).where(FileRow.id.in_(chunk), FileRow.source_tier == source)))
    if not targets:
        return out
    kept = counters.copy_counts(sess) if kept is None else kept
    files = counters.all_files(sess).n if files is None else files
    rows = sum(c.n for t in targets for c in kept.get(t, {}).values())
    deficit = files * len(targets) - rows
    top = int(sess.scalar(select(func.max(FileRow.id))) or 0)
    while deficit > 0 and top > 0:
        low = max(0, top - SCAN_CHUNK)
        present = (select(Copy.file_id, func.count().label("n")).where(
            Copy.file_id > low, Copy.file_id <= top, Copy.tier.in_(targets)).group_by(Copy.file_id).subquery())
        q = (select(FileRow.id, FileRow.source_tier, func.coalesce(present.c.n, 0))
             .outerjoin(present, present.c.file_id == FileRow.id)
             .where(FileRow.id > low, FileRow.id <= top, func.coalesce(present.c.n, 0) < len(targets)))
        for fid, tier, n in sess.execute(q):
            deficit -= len(targets) - int(n)
            if tier == source:
                out.add(int(fid))
        top = low
    return out


def _unsafe_summary(sess: Session, ids: set[int], late_before: datetime) -> tuple[int, datetime | None]:
    """How many of ``ids`` are late, and the oldest detection among them."""
    late, oldest = 0, None
    for chunk in in_chunks(sorted(ids)):
        n, first = sess.execute(select(func.sum(case((FileRow.detected_at < late_before, 1), else_=0)),
                                       func.min(FileRow.detected_at)).where(FileRow.id.in_(chunk))).one()
        late += int(n or 0)
        first = aware_utc(first)
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return late, oldest


def overview(ledger: Ledger, config: Config, *, now: datetime | None = None) -> Overview:
    """Totals over the whole ledger, each from one index-friendly query."""
    scope = Scope(config, now or _utcnow())
    counters.fold_if_many(ledger)
    with ledger.session() as sess:
        whole = counters.all_files(sess)
        files, total_bytes = whole.n, whole.bytes
        kept = counters.copy_counts(sess)  # kept by the database: a few rows, not a scan of every copy
        copies = {t: {st: c.n for st, c in states.items()} for t, states in kept.items()}
        copy_bytes = {t: {st: c.bytes for st, c in states.items()} for t, states in kept.items()}
        unsafe = unsafe_file_ids(sess, config, kept=kept, files=files)
        late, oldest = _unsafe_summary(sess, unsafe, scope.late_before)
        not_safe = len(unsafe)
        tiers = list(config.tiers)
        at_risk = _files_with_state(sess, tiers, CopyState.AT_RISK)
        failed = _files_with_state(sess, tiers, CopyState.FAILED)
        pending_cat = _files_in_scans(sess, CatalogueState.PENDING)
        cat_failed = _files_in_scans(sess, CatalogueState.FAILED)
        due = sum(int(sess.scalar(select(func.count()).select_from(Copy).where(  # copies, not files: no DISTINCT
            Copy.tier == tier, Copy.prune_due_at <= scope.now, Copy.state == CopyState.VERIFIED)) or 0)
            for tier in config.retention.rules)
        outbox = {st: int(n) for st, n in sess.execute(
            select(OutboxEntry.state, func.count()).group_by(OutboxEntry.state))}
        oldest_outbox = sess.scalar(select(func.min(OutboxEntry.created_at))
                                    .where(OutboxEntry.state == OutboxState.PENDING))
    return Overview(scope.now, int(files), int(total_bytes), copies, copy_bytes, not_safe, late, oldest, at_risk,
                    failed, pending_cat, cat_failed, int(due), outbox,
                    aware_utc(oldest_outbox))


def aware_utc(value: Any) -> datetime | None:
    """Aggregates (min/max) bypass the column type on SQLite: parse and make UTC-aware."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ids_in_states(sess: Session, tiers: Sequence[str], states: Sequence[str]) -> set[int]:
    """Ids of the files with a copy on one of ``tiers`` in one of ``states``: one equality lookup of
    ``ix_copies_tier_state_due`` per (tier, state), which planners take even when their statistics say the
    average state is common (verified is; at_risk is not). One query with ``tier IN (...) AND state IN (...)``
    instead made SQLite read far more of the index (9.3 s instead of 2.5 s for the page's totals at 1M files)."""
    out: set[int] = set()
    for tier in tiers:
        for state in states:
            out.update(sess.scalars(select(Copy.file_id).where(Copy.tier == tier, Copy.state == state)))
    return out


def _files_with_state(sess: Session, tiers: Sequence[str], state: str) -> int:
    """How many files have a copy in ``state``."""
    return len(_ids_in_states(sess, tiers, [state]))


def _files_in_scans(sess: Session, state: str) -> int:
    return int(sess.scalar(select(func.count()).select_from(CatalogueFile).join(
        CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id).where(CatalogueScan.state == state)) or 0)


def groups(ledger: Ledger, config: Config, *, days: int, proposal: str | None = None, offset: int = 0,
           limit: int = 50, now: datetime | None = None) -> tuple[list[GroupRow], int]:
    """Per proposal and day over the files detected in the last ``days`` days, newest day first; and the number
    of groups in the window (for paging).

    One pass: the window's files (``ix_files_detected_at``), each file's copies read once into its state and
    prune date per tier (``PerFileCopies``), the flags tested on that row, then summed per proposal and day.
    Before: one ``EXISTS`` probe per file and copy question (10-11 per file); measured in docs/PERFORMANCE.md
    section 5."""
    dialect = _dialect(ledger)
    per_file = PerFileCopies()
    scope = Scope(config, now or _utcnow(), per_file)
    prop, day = proposal_expr(dialect).label("proposal"), day_expr(dialect).label("day")
    flags = [tier_flag(t) for t in config.tiers] + flags_for(config)
    where = [FileRow.detected_at >= scope.now - timedelta(days=days)]
    if proposal:
        where.append(FileRow.path.startswith(proposal.rstrip("/") + "/", autoescape=True))
    for f in flags:  # first rendering: collect the tiers the flags ask about
        f.expr(scope)
    q = select(prop, day, func.count().label("n"), func.coalesce(func.sum(FileRow.size), 0).label("b"))
    q = per_file.build(q.select_from(FileRow), lateral=dialect == "postgresql")
    cols = [func.sum(case((f.expr(scope), 1), else_=0)).label(f"c{i}") for i, f in enumerate(flags)]
    q = q.add_columns(*cols).where(*where).group_by(prop, day)
    with ledger.session() as sess:  # the window's groups are few (proposals x days): count and page them here,
        every = sess.execute(q.order_by(day.desc(), prop)).all()  # not by running the aggregate twice
    total, rows = len(every), every[offset:offset + limit]
    out = []
    for r in rows:
        counts = {f.name: int(r[4 + i] or 0) for i, f in enumerate(flags)}
        out.append(GroupRow(r[0], r[1], int(r[2]), int(r[3]), counts))
    return out, total


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


def list_files(ledger: Ledger, config: Config, *, proposal: str | None = None, day: str | None = None,
               flag: str | None = None, negate: bool = False, after: str | None = None, limit: int = 100,
               now: datetime | None = None) -> list[FileRowView]:
    """Files by path (keyset paging: the next page starts ``after`` the last path), optionally of one proposal,
    one detection day, and having (or, with ``negate``, lacking) one flag (a name of ``flags_for`` or on:<tier>)."""
    scope = Scope(config, now or _utcnow())
    where: list[ColumnElement[bool]] = [FileRow.source_tier == config.move.source]
    if proposal is not None:
        where.append(FileRow.path.startswith(proposal.rstrip("/") + "/", autoescape=True) if proposal
                     else ~FileRow.path.contains("/", autoescape=True))
    if day:
        start, end = day_bounds(day)
        where += [FileRow.detected_at >= start, FileRow.detected_at < end]
    if flag:
        f = flag_named(config, flag) or (tier_flag(flag[3:]) if flag.startswith("on:") else None)
        if f is None:
            where.append(false())
        else:
            where.append(~f.expr(scope) if negate else f.expr(scope))
    if after:
        where.append(FileRow.path > after)
    with ledger.session() as sess:
        if (flag == "late" and not negate) or (flag == "safe" and negate):
            # few files are not safe: start from them rather than probing every file for it
            unsafe = unsafe_file_ids(sess, config)
            if len(unsafe) <= UNSAFE_IN_LIMIT:
                where.append(FileRow.id.in_(sorted(unsafe)) if unsafe else false())
        files = list(sess.scalars(select(FileRow).where(*where).order_by(FileRow.path).limit(limit)))
        return _file_views(sess, files)


def _file_views(sess: Session, files: list[SourceFile]) -> list[FileRowView]:
    ids = [f.id for f in files]
    copies: dict[int, dict[str, str]] = {}
    scans: dict[int, tuple[int, str]] = {}
    if ids:
        for fid, tier, st in sess.execute(select(Copy.file_id, Copy.tier, Copy.state).where(Copy.file_id.in_(ids))):
            copies.setdefault(fid, {})[tier] = st
        rows = sess.execute(select(CatalogueFile.file_id, CatalogueScan.id, CatalogueScan.state)
                            .join(CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id)
                            .where(CatalogueFile.file_id.in_(ids)))
        scans = {fid: (sid, st) for fid, sid, st in rows}
    return [FileRowView(f.id, f.path, f.size, f.detected_at, dict(sorted(copies.get(f.id, {}).items())),
                        scans[f.id][1] if f.id in scans else None, scans[f.id][0] if f.id in scans else None)
            for f in files]


def file_detail(ledger: Ledger, file_id: int) -> dict[str, Any] | None:
    """One file: identity, every copy, its scan and its whole event log (oldest first)."""
    with ledger.session() as sess:
        f = sess.get(SourceFile, file_id)
        if f is None:
            return None
        view = _file_views(sess, [f])[0]
        copies = [{"tier": c.tier, "state": c.state, "checksum": c.checksum, "size": c.size,
                   "verified_at": _iso(c.verified_at), "error": c.error, "prune_due_at": _iso(c.prune_due_at),
                   "updated_at": _iso(c.updated_at)}
                  for c in sess.scalars(select(Copy).where(Copy.file_id == file_id).order_by(Copy.tier))]
        events = [{"id": e.id, "at": _iso(e.at), "kind": e.kind, "tier": e.tier, "detail": e.detail}
                  for e in sess.scalars(select(Event).where(Event.file_id == file_id).order_by(Event.id))]
        return {**view.to_json(), "source_tier": f.source_tier, "mtime": f.mtime, "checksum_alg": f.checksum_alg,
                "checksum": f.checksum, "copy_details": copies, "events": events}


def scan_detail(ledger: Ledger, scan_id: int) -> dict[str, Any] | None:
    """One scan (a catalogue dataset): its state, pid, locations and files with their copies."""
    with ledger.session() as sess:
        s = sess.get(CatalogueScan, scan_id)
        if s is None:
            return None
        files = list(sess.scalars(select(SourceFile).join(CatalogueFile, CatalogueFile.file_id == SourceFile.id)
                                  .where(CatalogueFile.scan_id == scan_id).order_by(SourceFile.path)))
        return {"id": s.id, "source_tier": s.source_tier, "scan_key": s.scan_key, "state": s.state, "pid": s.pid,
                "error": s.error, "locations": s.locations, "attempts": s.attempts,
                "updated_at": _iso(s.updated_at), "files": [v.to_json() for v in _file_views(sess, files)]}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Cached:
    """A value recomputed at most every ``ttl`` seconds (the page's pollers and Prometheus share one query)."""

    def __init__(self, ttl: float, compute: Callable[[], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.compute, self.clock = ttl, compute, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: Any = None

    def get(self) -> Any:
        with self._lock:
            if self._at is None or self.clock() - self._at >= self.ttl:
                self._value = self.compute()
                self._at = self.clock()
            return self._value
