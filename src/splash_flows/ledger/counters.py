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
so two folds never overlap. Readers fold when more than ``FOLD_AT`` rows have piled up. The SQL of the totals and
of the fold is written once in ``ledger.reads``, which ``status`` runs on a plain DB-API connection too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from splash_flows.ledger import reads
from splash_flows.ledger.models import EventCount, LatencyCount
from splash_flows.ledger.reads import FOLD_AT, Count
from splash_flows.ledger.store import ConnectionReader, Ledger

__all__ = ["FOLD_AT", "LATENCY_BUCKETS", "Count", "Latencies", "all_files", "copy_counts", "event_counts",
           "file_counts", "fold", "fold_if_many", "latencies"]

#: Upper bounds (seconds) of the detected -> verified latency histogram. Baked into the trigger of migration
#: ``0006_event_counters`` (its ``LATENCY_BUCKETS``; a test checks they agree): change both with a new migration.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                   86400.0)


def copy_counts(sess: Session) -> dict[str, dict[str, Count]]:
    """tier -> state -> copies and bytes (states with no copy left out): ``reads.copy_counts``, the query
    ``status`` runs too."""
    return reads.copy_counts(ConnectionReader(sess.connection()))


def file_counts(sess: Session) -> dict[str, Count]:
    """source tier -> files and bytes (``reads.file_counts``)."""
    return reads.file_counts(ConnectionReader(sess.connection()))


def all_files(sess: Session) -> Count:
    """Every file of every source tier (``reads.all_files``)."""
    return reads.all_files(ConnectionReader(sess.connection()))


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
    """Fold the counter rows of PostgreSQL backends that no longer exist into shard 0 (``reads.fold``, in one
    transaction); returns how many rows were folded (0 on SQLite, or when another fold holds the lock)."""
    if ledger.engine.dialect.name != "postgresql":
        return 0
    with ledger.session() as sess:
        return reads.fold(ConnectionReader(sess.connection()))


def fold_if_many(ledger: Ledger) -> None:
    """``fold`` when the copy or event counters have more than ``FOLD_AT`` rows (``reads.fold_if_many``)."""
    if ledger.engine.dialect.name != "postgresql":
        return
    with ledger.session() as sess:
        reads.fold_if_many(ConnectionReader(sess.connection()))
