"""Totals the database keeps as rows change: copies and bytes per (tier, state), files and bytes per source tier.

Triggers (migration ``0004_ledger_counters``) add every change of ``copies`` and ``files`` to ``copy_counts`` and
``file_counts`` in the writing transaction, as ``n = n + delta`` (never read, then written). Reading the totals is
a sum over a few rows, however many millions of files the ledger holds: ``status`` and the data-safety page show
them first.

On PostgreSQL each backend adds to its own row (``shard`` = its process id), so concurrent writers never wait for
one another on a counter; ``fold`` moves the rows of backends that have gone into shard 0, under an advisory lock
so two folds never overlap. Readers fold when more than ``FOLD_AT`` rows have piled up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from splash_flows.ledger.models import CopyCount, FileCount
from splash_flows.ledger.store import Ledger

FOLD_AT = 512  # counter rows (all shards) above which a reader folds the gone backends' rows first
_FOLD_LOCK = 733734  # advisory lock key (the migration lock is 733733; named locks use the two-key form)


@dataclass(frozen=True)
class Count:
    """How many rows, and their bytes."""

    n: int
    bytes: int


def copy_counts(sess: Session) -> dict[str, dict[str, Count]]:
    """tier -> state -> copies and bytes (states with no copy left out)."""
    out: dict[str, dict[str, Count]] = {}
    q = (select(CopyCount.tier, CopyCount.state, func.sum(CopyCount.n), func.sum(CopyCount.bytes))
         .group_by(CopyCount.tier, CopyCount.state))
    for tier, state, n, size in sess.execute(q):
        if int(n or 0):
            out.setdefault(str(tier), {})[str(state)] = Count(int(n), int(size or 0))
    return {t: dict(sorted(v.items())) for t, v in sorted(out.items())}


def file_counts(sess: Session) -> dict[str, Count]:
    """source tier -> files and bytes."""
    q = select(FileCount.source_tier, func.sum(FileCount.n), func.sum(FileCount.bytes)).group_by(FileCount.source_tier)
    return {str(t): Count(int(n), int(b or 0)) for t, n, b in sess.execute(q) if int(n or 0)}


def all_files(sess: Session) -> Count:
    """Every file of every source tier."""
    counts = file_counts(sess).values()
    return Count(sum(c.n for c in counts), sum(c.bytes for c in counts))


def fold(ledger: Ledger) -> int:
    """Fold the counter rows of PostgreSQL backends that no longer exist into shard 0; returns how many rows were
    folded (0 on SQLite, or when another fold holds the lock). Safe at any time: a live backend's row is never
    touched, and a row being folded while a new backend with the same process id writes it is either folded
    with that write (the DELETE waits for it) or recreated after the fold (the upsert waits for the DELETE)."""
    if ledger.engine.dialect.name != "postgresql":
        return 0
    folded = 0
    with ledger.session() as sess:
        if not sess.scalar(text(f"SELECT pg_try_advisory_xact_lock({_FOLD_LOCK})")):
            return 0
        for table, keys in (("copy_counts", "tier, state"), ("file_counts", "source_tier")):
            result = sess.execute(text(
                f"WITH gone AS (DELETE FROM {table} WHERE shard <> 0 AND shard NOT IN "
                f"(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING {keys}, n, bytes), "
                f"folded AS (INSERT INTO {table} AS c ({keys}, shard, n, bytes) "
                f"SELECT {keys}, 0, sum(n), sum(bytes) FROM gone GROUP BY {keys} ORDER BY {keys} "
                f"ON CONFLICT ({keys}, shard) DO UPDATE SET n = c.n + excluded.n, bytes = c.bytes + excluded.bytes "
                f"RETURNING 1) SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded)"))
            folded += int(result.one()[0])
    return folded


def fold_if_many(ledger: Ledger) -> None:
    """``fold`` when the counters have more than ``FOLD_AT`` rows (one index-only count of a small table)."""
    if ledger.engine.dialect.name != "postgresql":
        return
    with ledger.session() as sess:
        rows = int(sess.scalar(select(func.count()).select_from(CopyCount)) or 0)
    if rows > FOLD_AT:
        fold(ledger)
