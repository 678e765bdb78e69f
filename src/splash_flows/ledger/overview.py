"""Ledger queries behind ``splash-flows status``: totals, filtered pages of files, late files, refused paths.

Everything is counted, filtered and paged in SQL, so a page of a ledger with 100,000 files (or ten million
copies) costs about what a page of ten does: the unfiltered totals are read from the counters the database keeps
(``ledger.counters``), filtered ones are GROUP BY queries; a page is keyset-paged (``WHERE (source_tier, path) >
cursor ORDER BY source_tier, path LIMIT n``) over the unique ``(source_tier, path)`` index, and only the page's
copies and catalogue states are read afterwards. ``status``, the bench and the page's file lists page this way.

The rules live here once: a copy is *safe* on a tier when it is verified there or was deliberately pruned after
being verified (``SAFE_STATES``); a file is *late* when it was detected before a given time and is not safe on
every target tier yet; a path is *refused* when a ``refused`` event names it and the ledger never registered it
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, literal, or_, select, tuple_, union
from sqlalchemy.orm import aliased

from splash_flows.ledger import counters
from splash_flows.ledger.catalogue import FileCatalogueState
from splash_flows.ledger.models import CatalogueFile, CatalogueScan, Copy, CopyState, Event, EventKind, SourceFile
from splash_flows.ledger.store import CopyInfo, FileStatus, Ledger, copy_info, in_chunks

#: Copy states in which the data is safe on that tier (verified, or verified and then pruned on purpose).
SAFE_STATES = (CopyState.VERIFIED, CopyState.PRUNING, CopyState.DELETING, CopyState.PRUNED)
#: The others, listed (not negated) so the ``(tier, state)`` index finds them directly.
UNSAFE_STATES = tuple(s for s in CopyState if s not in SAFE_STATES)


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

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses on ``files`` this filter stands for."""
        out: list[ColumnElement[bool]] = []
        if self.source_tier:
            out.append(SourceFile.source_tier == self.source_tier)
        if self.prefix:
            # substr, not LIKE: LIKE is case-insensitive on SQLite, and a prefix of a path is exact
            out.append(func.substr(SourceFile.path, 1, len(self.prefix)) == self.prefix)
        if self.states:  # one IN over the copies (the (tier, state) index when a tier is named), not a probe per file
            out.append(SourceFile.id.in_(union(*(_files_with(tier, state) for tier, state in self.states))))
        if self.late_before is not None:
            out.append(late_condition(self.late_before, self.targets))
        return out


def _files_with(tier: str | None, state: str) -> Any:
    q = select(Copy.file_id).where(Copy.state == state)
    return q.where(Copy.tier == tier) if tier is not None else q


def _has_copy(tier: str | None, states: Sequence[str]) -> ColumnElement[bool]:
    other = aliased(Copy)  # never correlated with a ``copies`` of the outer query (the totals join one)
    cond = and_(other.file_id == SourceFile.id, other.state.in_(list(states)))
    if tier is not None:
        cond = and_(cond, other.tier == tier)
    return select(other.id).where(cond).correlate(SourceFile).exists()


def late_condition(before: datetime, targets: Sequence[str]) -> ColumnElement[bool]:
    """Files detected before ``before`` that are not safe (``SAFE_STATES``) on at least one of ``targets``."""
    if not targets:
        return false()
    return and_(SourceFile.detected_at < before, or_(*(~_has_copy(t, SAFE_STATES) for t in targets)))


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


def totals(ledger: Ledger, flt: StatusFilter = StatusFilter()) -> StatusTotals:
    """Files, bytes and copies per (tier, state) of the files ``flt`` selects, counted by the database. Without
    a filter they are read from the counters the database keeps (``ledger.counters``): a few rows, not millions."""
    conds = flt.conditions()
    if not conds:
        counters.fold_if_many(ledger)
        with ledger.session() as sess:
            files = counters.all_files(sess)
            out = StatusTotals(files=files.n, bytes=files.bytes)
            out.tiers = {t: {s: c.n for s, c in states.items()} for t, states in counters.copy_counts(sess).items()}
        return out
    with ledger.session() as sess:
        n, size = sess.execute(select(func.count(), func.coalesce(func.sum(SourceFile.size), 0))
                               .select_from(SourceFile).where(*conds)).one()
        out = StatusTotals(files=int(n), bytes=int(size))
        q = select(Copy.tier, Copy.state, func.count()).group_by(Copy.tier, Copy.state)
        if conds:
            q = q.join(SourceFile, SourceFile.id == Copy.file_id).where(*conds)
        for tier, state, count in sess.execute(q):
            out.tiers.setdefault(str(tier), {})[str(state)] = int(count)
    return out


def count_late(ledger: Ledger, before: datetime, targets: Sequence[str], *,
               whole: StatusTotals | None = None) -> int:
    """How many files were detected before ``before`` and are not safe on every one of ``targets`` yet.

    ``whole`` (the unfiltered ``totals``) lets the usual cases skip the per-file check: when every file has a
    safe copy on every target nothing is late, and when every file at least has a copy row on every target
    only the files with an unsafe copy (found through the ``(tier, state)`` index) can be."""
    if not targets:
        return 0
    with ledger.session() as sess:
        if whole is not None:
            if all(whole.copies_on(t, SAFE_STATES) == whole.files for t in targets):
                return 0
            if all(whole.copies_on(t) == whole.files for t in targets):
                unsafe = (select(Copy.file_id).where(Copy.tier.in_(list(targets)),
                                                     Copy.state.in_(list(UNSAFE_STATES))))
                q = (select(func.count()).select_from(SourceFile)
                     .where(SourceFile.id.in_(unsafe), SourceFile.detected_at < before))
                return int(sess.scalar(q) or 0)
        q = select(func.count()).select_from(SourceFile).where(late_condition(before, targets))
        return int(sess.scalar(q) or 0)


@dataclass(frozen=True)
class StatusPage:
    """One page of files (ordered by source tier and path) with their copies and catalogue states."""

    rows: list[FileStatus]
    catalogue: dict[tuple[str, str], FileCatalogueState]


def _files_query(flt: StatusFilter) -> Any:
    return (select(SourceFile.id, SourceFile.path, SourceFile.source_tier, SourceFile.size,
                   SourceFile.checksum_alg, SourceFile.checksum, SourceFile.detected_at)
            .where(*flt.conditions()).order_by(SourceFile.source_tier, SourceFile.path))


def _page(sess: Any, files: Sequence[Any]) -> StatusPage:
    ids = [f.id for f in files]
    copies: dict[int, dict[str, CopyInfo]] = {}
    catalogue: dict[int, FileCatalogueState] = {}
    for chunk in in_chunks(ids):
        for c in sess.execute(select(Copy.file_id, Copy.tier, Copy.state, Copy.checksum, Copy.verified_at,
                                     Copy.error).where(Copy.file_id.in_(chunk))):
            copies.setdefault(c.file_id, {})[c.tier] = copy_info(c)
        q = (select(CatalogueFile.file_id, CatalogueScan.scan_key, CatalogueScan.state, CatalogueScan.pid,
                    CatalogueScan.error)
             .join(CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id).where(CatalogueFile.file_id.in_(chunk)))
        for r in sess.execute(q):
            catalogue[r.file_id] = FileCatalogueState(r.scan_key, r.state, r.pid, r.error)
    rows = [FileStatus(f.path, f.source_tier, f.size, f.checksum_alg, f.checksum, f.detected_at,
                       dict(sorted(copies.get(f.id, {}).items()))) for f in files]
    cat = {(f.source_tier, f.path): catalogue[f.id] for f in files if f.id in catalogue}
    return StatusPage(rows, cat)


Cursor = tuple[str, str]  # (source tier, path) of the last file of a page


def _after(q: Any, after: Cursor | None) -> Any:
    if after is None:
        return q
    # a row comparison, which both databases read as a range of the (source_tier, path) index (the equivalent
    # OR of two conditions made PostgreSQL walk the index from its start: 0.6 s mid-way through 1M files)
    return q.where(tuple_(SourceFile.source_tier, SourceFile.path) > tuple_(literal(after[0]), literal(after[1])))


def status_page(ledger: Ledger, flt: StatusFilter = StatusFilter(), *, limit: int | None = None,
                after: Cursor | None = None) -> StatusPage:
    """The files ``flt`` selects that sort after ``after`` (source tier, path), at most ``limit`` of them (None:
    all). Keyset paging over the unique ``(source_tier, path)`` index: page 10,000 costs what page 1 costs."""
    q = _after(_files_query(flt), after)
    if limit is not None:
        q = q.limit(limit)
    with ledger.session() as sess:
        return _page(sess, list(sess.execute(q)))


def next_cursor(page: StatusPage) -> Cursor | None:
    """Where the page after ``page`` starts (None: ``page`` is empty)."""
    return (page.rows[-1].source_tier, page.rows[-1].path) if page.rows else None


def iter_status(ledger: Ledger, flt: StatusFilter = StatusFilter(), *, chunk: int = 5000) -> Iterator[StatusPage]:
    """Every file ``flt`` selects, ``chunk`` at a time (``status_page`` after ``status_page``)."""
    after: Cursor | None = None
    while True:
        page = status_page(ledger, flt, limit=chunk, after=after)
        if not page.rows:
            return
        yield page
        if len(page.rows) < chunk:
            return
        after = next_cursor(page)


@dataclass(frozen=True)
class Refusal:
    """A path refused before any work (outside the root, missing, export-controlled...) and never registered."""

    tier: str | None
    path: str
    reason: str
    at: datetime
    times: int  # how many refused events name it (the watcher and the dispatcher both record them)


def _refused_query() -> Any:
    registered = exists().where(SourceFile.path == Event.path, SourceFile.source_tier == Event.tier)
    return (select(Event.tier, Event.path, func.max(Event.id).label("last"), func.count().label("times"))
            .where(Event.kind == EventKind.REFUSED, Event.path.is_not(None), ~registered)
            .group_by(Event.tier, Event.path))


def count_refused(ledger: Ledger) -> int:
    """How many distinct paths are refused and were never registered afterwards."""
    with ledger.session() as sess:
        return int(sess.scalar(select(func.count()).select_from(_refused_query().subquery())) or 0)


def refusals(ledger: Ledger, *, limit: int | None = None) -> list[Refusal]:
    """The refused paths (see ``Refusal``), most recent first, with the reason of their latest refusal."""
    q = _refused_query().order_by(func.max(Event.id).desc())
    if limit is not None:
        q = q.limit(limit)
    with ledger.session() as sess:
        groups = list(sess.execute(q))
        details: dict[int, tuple[datetime, dict[str, Any]]] = {}
        for chunk in in_chunks([g.last for g in groups]):
            for ev_id, at, detail in sess.execute(select(Event.id, Event.at, Event.detail).where(Event.id.in_(chunk))):
                details[ev_id] = (at, detail or {})
    out = []
    for g in groups:
        at, detail = details[g.last]
        out.append(Refusal(g.tier, g.path, str(detail.get("reason", "")), at, int(g.times)))
    return out
