"""Prometheus metrics read from the ledger at scrape time (``GET /metrics`` of ``splash-flows serve``).

Nothing is pushed and nothing is kept only in a process: gauges are the ledger's state when Prometheus asks,
and counters and histograms are folded from the append-only event log, so a scrape missed, or a restart of the
server, loses nothing (a restart re-reads the log once; afterwards each scrape reads only the events appended
since the last one, through the primary key).

| metric | what |
|---|---|
| ``splash_files`` | source files in the ledger |
| ``splash_copies{tier,state}`` / ``splash_copy_bytes{tier,state}`` | copies and their bytes per tier and state |
| ``splash_files_state{state}`` | files not_safe, late, at_risk, failed, pending_catalogue, catalogue_failed (and
  due: the copies due for pruning) |
| ``splash_backlog_age_seconds`` | age of the oldest file detected but not yet safe (0 when none) |
| ``splash_outbox_batches{state}`` / ``splash_outbox_oldest_pending_age_seconds`` | the watcher's outbox |
| ``splash_events_total{kind,tier}`` | every event of the log: copied, verified, failed, pruned, prune_refused ... |
| ``splash_transfer_batches_total{kind,status}`` | Globus tasks by kind and outcome |
| ``splash_step_latency_seconds{step,tier}`` | histogram: detected -> verified on each tier |
| ``splash_last_restore_drill_timestamp_seconds`` | when the last restore drill ended (0: never); `..._ok` 1/0 |
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import ColumnElement, Float, case, cast, func, select

from splash_flows.config import Config
from splash_flows.ledger.models import Event, EventKind, SourceFile, TransferBatch
from splash_flows.ledger.safety import Overview, aware_utc, overview
from splash_flows.ledger.store import Ledger

LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                   86400.0)


class EventTally:
    """Counters and latency histograms folded from the event log, read incrementally by event id."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.last_id = 0
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}  # tier -> non-cumulative counts per bucket (+Inf last)
        self.sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def _latency(self) -> ColumnElement[float]:
        at, detected = Event.at, SourceFile.detected_at
        if self.ledger.engine.dialect.name == "postgresql":
            return cast(func.extract("epoch", at - detected), Float)
        return (func.julianday(at) - func.julianday(detected)) * cast(86400.0, Float)

    def update(self) -> None:
        """Fold the events appended since the last call."""
        with self._lock, self.ledger.session() as sess:
            top = sess.scalar(select(func.max(Event.id))) or 0
            if top <= self.last_id:
                return
            window = (Event.id > self.last_id, Event.id <= top)
            for kind, tier, n in sess.execute(select(Event.kind, Event.tier, func.count()).where(*window)
                                              .group_by(Event.kind, Event.tier)):
                key = (kind, tier or "")
                self.counts[key] = self.counts.get(key, 0) + int(n)
            lat = self._latency()
            edges = [case((lat <= b, 1), else_=0) for b in LATENCY_BUCKETS]
            q = (select(Event.tier, func.count(), func.coalesce(func.sum(lat), 0.0),
                        *(func.sum(e) for e in edges))
                 .join(SourceFile, SourceFile.id == Event.file_id)
                 .where(*window, Event.kind == EventKind.VERIFIED).group_by(Event.tier))
            for row in sess.execute(q):
                tier, n, total = row[0] or "", int(row[1]), float(row[2] or 0.0)
                cumulative = [int(v or 0) for v in row[3:]]
                per_bucket = [cumulative[0]] + [cumulative[i] - cumulative[i - 1] for i in range(1, len(cumulative))]
                per_bucket.append(n - cumulative[-1])
                old = self.buckets.get(tier, [0] * (len(LATENCY_BUCKETS) + 1))
                self.buckets[tier] = [a + b for a, b in zip(old, per_bucket, strict=True)]
                self.sums[tier] = self.sums.get(tier, 0.0) + total
            self.last_id = top


class LedgerCollector(Collector):
    """A Prometheus collector that reads the ledger when scraped."""

    def __init__(self, ledger: Ledger, config: Config) -> None:
        self.ledger = ledger
        self.config = config
        self.tally = EventTally(ledger)

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        ov = overview(self.ledger, self.config, now=now)
        yield from self._state(ov, now)
        self.tally.update()
        events = CounterMetricFamily("splash_events", "Events in the ledger's log by kind and tier.",
                                     labels=["kind", "tier"])
        for (kind, tier), n in sorted(self.tally.counts.items()):
            events.add_metric([kind, tier], n)
        yield events
        hist = HistogramMetricFamily("splash_step_latency_seconds", "Seconds from detection to a verified copy.",
                                     labels=["step", "tier"])
        for tier, per_bucket in sorted(self.tally.buckets.items()):
            cumulative, running = [], 0
            for bound, n in zip([*(str(b) for b in LATENCY_BUCKETS), "+Inf"], per_bucket, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            hist.add_metric(["detected_to_verified", tier], cumulative, sum_value=self.tally.sums.get(tier, 0.0))
        yield hist
        yield self._transfers()
        yield from self._restore_drill()

    def _state(self, ov: Overview, now: datetime) -> Iterator[Metric]:
        yield GaugeMetricFamily("splash_files", "Source files in the ledger.", value=ov.files)
        copies = GaugeMetricFamily("splash_copies", "Copies per tier and state.", labels=["tier", "state"])
        sizes = GaugeMetricFamily("splash_copy_bytes", "Bytes of the copies per tier and state.",
                                  labels=["tier", "state"])
        for tier, states in sorted(ov.copies.items()):
            for st, n in sorted(states.items()):
                copies.add_metric([tier, st], n)
                sizes.add_metric([tier, st], ov.copy_bytes.get(tier, {}).get(st, 0))
        yield copies
        yield sizes
        files = GaugeMetricFamily("splash_files_state", "Files in a state that needs attention or action.",
                                  labels=["state"])
        for name in ("not_safe", "late", "at_risk", "failed", "pending_catalogue", "catalogue_failed", "due"):
            files.add_metric([name], getattr(ov, name))
        yield files
        age = (now - ov.oldest_not_safe).total_seconds() if ov.oldest_not_safe else 0.0
        yield GaugeMetricFamily("splash_backlog_age_seconds", "Age of the oldest file detected but not yet safe.",
                                value=max(age, 0.0))
        outbox = GaugeMetricFamily("splash_outbox_batches", "Watcher outbox batches by state.", labels=["state"])
        for st in ("pending", "sent", "failed"):
            outbox.add_metric([st], ov.outbox.get(st, 0))
        yield outbox
        oldest = (now - ov.oldest_outbox).total_seconds() if ov.oldest_outbox else 0.0
        yield GaugeMetricFamily("splash_outbox_oldest_pending_age_seconds",
                                "Age of the oldest batch the watcher could not hand to Prefect yet.",
                                value=max(oldest, 0.0))

    def _transfers(self) -> Metric:
        fam = CounterMetricFamily("splash_transfer_batches", "Globus tasks by kind and status.",
                                  labels=["kind", "status"])
        with self.ledger.session() as sess:
            for kind, status, n in sess.execute(select(TransferBatch.kind, TransferBatch.status, func.count())
                                                .group_by(TransferBatch.kind, TransferBatch.status)):
                fam.add_metric([kind, status], int(n))
        return fam

    def _restore_drill(self) -> Iterator[Metric]:
        """The last restore drill (``restore_drill_733``, an event of the archive): when it ran (0: never) and
        whether it restored its file identical (1) or not (0; absent before the first drill)."""
        from splash_flows.ledger.archive import last_drill

        drill = last_drill(self.ledger)
        when = aware_utc(drill.at) if drill is not None else None
        yield GaugeMetricFamily("splash_last_restore_drill_timestamp_seconds",
                                "When the last restore drill ran (Unix time; 0: never).",
                                value=when.timestamp() if when else 0.0)
        if drill is not None:
            ok = bool((drill.detail or {}).get("ok"))
            yield GaugeMetricFamily("splash_last_restore_drill_ok",
                                    "1 if the last restore drill restored its file identical, else 0.",
                                    value=1.0 if ok else 0.0)


def registry_for(ledger: Ledger, config: Config) -> CollectorRegistry:
    """A registry holding only the ledger collector (no process metrics of the web server itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, config))
    return registry
