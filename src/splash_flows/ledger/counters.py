"""Totals the database keeps as rows change: copies and bytes per (tier, state), files and bytes per source tier,
events per (kind, tier) and the detected -> verified latency histogram per tier.

Triggers (migration ``0004_ledger_counters``) add every change of ``copies`` and ``files`` to ``copy_counts`` and
``file_counts`` in the writing transaction, as ``n = n + delta`` (never read, then written); migration
``0006_event_counters`` does the same for every event appended to the log (``event_counts``, ``latency_counts``:
only ever increased, so ``/metrics`` serves them as Prometheus counters, whatever the server's restarts).
Reading the totals is a sum over a few rows, however many millions of files the ledger holds: ``status`` and the
data-safety page show them first.

On PostgreSQL each backend adds to its own row (``shard`` = its process id), so concurrent writers never wait for
one another on a counter; ``fold`` moves the rows of backends that have gone into shard 0, under an advisory lock
so two folds never overlap. Readers fold when more than ``FOLD_AT`` rows have piled up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from splash_flows.ledger.models import CopyCount, EventCount, FileCount, LatencyCount
from splash_flows.ledger.store import Ledger

FOLD_AT = 512  # counter rows (all shards) above which a reader folds the gone backends' rows first
_FOLD_LOCK = 733734  # advisory lock key (the migration lock is 733733; named locks use the two-key form)
#: Upper bounds (seconds) of the detected -> verified latency histogram. Baked into the trigger of migration
#: ``0006_event_counters`` (its ``LATENCY_BUCKETS``; a test checks they agree): change both with a new migration.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                   86400.0)
#: counters table -> (its key columns, its value columns): what ``fold`` sums per key into shard 0
_SHARDED = {
    "copy_counts": ("tier, state", ("n", "bytes")),
    "file_counts": ("source_tier", ("n", "bytes")),
    "event_counts": ("kind, tier", ("n",)),
    "latency_counts": ("tier, bucket", ("n", "seconds")),
}


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


def event_counts(sess: Session) -> dict[tuple[str, str], int]:
    """(kind, tier) -> events appended to the log ever (tier '' for an event without one)."""
    q = select(EventCount.kind, EventCount.tier, func.sum(EventCount.n)).group_by(EventCount.kind, EventCount.tier)
    return {(str(k), str(t)): int(n) for k, t, n in sess.execute(q) if int(n or 0)}


@dataclass(frozen=True)
class Latencies:
    """One tier's detected -> verified histogram: verified events per bucket of ``LATENCY_BUCKETS`` (not
    cumulative; the last one is +Inf) and the sum of their latencies in seconds."""

    per_bucket: tuple[int, ...]
    seconds: float


def latencies(sess: Session) -> dict[str, Latencies]:
    """tier -> its detected -> verified latency histogram (tiers with no verified event left out)."""
    q = (select(LatencyCount.tier, LatencyCount.bucket, func.sum(LatencyCount.n), func.sum(LatencyCount.seconds))
         .group_by(LatencyCount.tier, LatencyCount.bucket))
    counts: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for tier, bucket, n, seconds in sess.execute(q):
        per = counts.setdefault(str(tier), [0] * (len(LATENCY_BUCKETS) + 1))
        per[min(int(bucket), len(LATENCY_BUCKETS))] += int(n or 0)
        sums[str(tier)] = sums.get(str(tier), 0.0) + float(seconds or 0.0)
    return {t: Latencies(tuple(per), sums[t]) for t, per in sorted(counts.items()) if sum(per)}


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
        for table, (keys, values) in _SHARDED.items():
            cols = ", ".join(values)
            sums = ", ".join(f"sum({v})" for v in values)
            adds = ", ".join(f"{v} = c.{v} + excluded.{v}" for v in values)
            result = sess.execute(text(
                f"WITH gone AS (DELETE FROM {table} WHERE shard <> 0 AND shard NOT IN "
                f"(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING {keys}, {cols}), "
                f"folded AS (INSERT INTO {table} AS c ({keys}, shard, {cols}) "
                f"SELECT {keys}, 0, {sums} FROM gone GROUP BY {keys} ORDER BY {keys} "
                f"ON CONFLICT ({keys}, shard) DO UPDATE SET {adds} "
                f"RETURNING 1) SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded)"))
            folded += int(result.one()[0])
    return folded


def fold_if_many(ledger: Ledger) -> None:
    """``fold`` when the copy or event counters have more than ``FOLD_AT`` rows (counts of two small tables)."""
    if ledger.engine.dialect.name != "postgresql":
        return
    with ledger.session() as sess:
        rows = max(int(sess.scalar(select(func.count()).select_from(table)) or 0) for table in (CopyCount, EventCount))
    if rows > FOLD_AT:
        fold(ledger)
