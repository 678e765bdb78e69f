"""Ledger queries behind ``splash-flows status``, for callers holding a ``Ledger``: totals, filtered pages of
files, late files, refused paths.

The queries and their rules are written once, as SQL text, in ``ledger.reads`` (``status`` runs them on a plain
DB-API connection, without SQLAlchemy, to answer at once). Here they run through SQLAlchemy on the ledger's own
engine: ``store.ConnectionReader`` hands the same text to the same driver with ``Connection.exec_driver_sql``, so the
data-safety page, the bench, the watcher and the tests get exactly what ``status`` gets. Each function below reads
in one read-only transaction (``Ledger.reader``: no write lock on SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from splash_flows.ledger import counters, reads
from splash_flows.ledger.reads import (
    SAFE_STATES,
    UNSAFE_STATES,
    Cursor,
    Refusal,
    StatusFilter,
    StatusPage,
    StatusTotals,
    next_cursor,
)
from splash_flows.ledger.store import ConnectionReader, Ledger

__all__ = ["SAFE_STATES", "UNSAFE_STATES", "ConnectionReader", "Cursor", "Refusal", "StatusFilter", "StatusPage",
           "StatusTotals", "count_late", "count_refused", "iter_status", "next_cursor", "refusals", "status_page",
           "totals"]


def totals(ledger: Ledger, flt: StatusFilter = StatusFilter()) -> StatusTotals:
    """``reads.totals``: files, bytes and copies per (tier, state) of the files ``flt`` selects; unfiltered, from
    the counters the database keeps (PostgreSQL's shards folded first when many)."""
    if not flt.where()[0]:
        counters.fold_if_many(ledger)
    with ledger.reader() as reader:
        return reads.totals(reader, flt)


def count_late(ledger: Ledger, before: datetime, targets: tuple[str, ...] | list[str], *,
               whole: StatusTotals | None = None) -> int:
    """``reads.count_late``: files detected before ``before`` and not safe on every one of ``targets`` yet."""
    with ledger.reader() as reader:
        return reads.count_late(reader, before, targets, whole=whole)


def status_page(ledger: Ledger, flt: StatusFilter = StatusFilter(), *, limit: int | None = None,
                after: Cursor | None = None) -> StatusPage:
    """``reads.status_page``: a keyset page of the files ``flt`` selects, with their copies and catalogue states."""
    with ledger.reader() as reader:
        return reads.status_page(reader, flt, limit=limit, after=after)


def iter_status(ledger: Ledger, flt: StatusFilter = StatusFilter(), *, chunk: int = 5000) -> Iterator[StatusPage]:
    """Every file ``flt`` selects, ``chunk`` at a time (one read transaction per page)."""
    return reads.pages(lambda after: status_page(ledger, flt, limit=chunk, after=after), chunk)


def count_refused(ledger: Ledger) -> int:
    """``reads.count_refused``: distinct paths refused and never registered afterwards."""
    with ledger.reader() as reader:
        return reads.count_refused(reader)


def refusals(ledger: Ledger, *, limit: int | None = None) -> list[Refusal]:
    """``reads.refusals``: the refused paths, most recent first, with the reason of their latest refusal."""
    with ledger.reader() as reader:
        return reads.refusals(reader, limit=limit)
