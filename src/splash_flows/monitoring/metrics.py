"""Prometheus metrics read from the ledger at scrape time (``GET /metrics`` of ``splash-flows serve``).

Nothing is pushed and nothing is kept only in a process: gauges are the ledger's state when Prometheus asks,
and the event counters and the latency histogram are counters the database keeps as events are appended
(``ledger.counters``, migration ``0006_event_counters``: a trigger adds each event in its own transaction), so a
scrape missed, or a restart of the server, loses nothing and costs nothing: every scrape reads a few rows,
however long the log (the first scrape of a million-file ledger used to fold the whole log: 60 s).

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

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from splash_flows.config import Config
from splash_flows.ledger import counters
from splash_flows.ledger.counters import LATENCY_BUCKETS
from splash_flows.ledger.models import TransferBatch
from splash_flows.ledger.safety import Overview, aware_utc, overview
from splash_flows.ledger.store import Ledger


class LedgerCollector(Collector):
    """A Prometheus collector that reads the ledger when scraped."""

    def __init__(self, ledger: Ledger, config: Config) -> None:
        self.ledger = ledger
        self.config = config

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        ov = overview(self.ledger, self.config, now=now)
        yield from self._state(ov, now)
        with self.ledger.session() as sess:
            counted = counters.event_counts(sess)
            latencies = counters.latencies(sess)
        events = CounterMetricFamily("splash_events", "Events in the ledger's log by kind and tier.",
                                     labels=["kind", "tier"])
        for (kind, tier), n in sorted(counted.items()):
            events.add_metric([kind, tier], n)
        yield events
        hist = HistogramMetricFamily("splash_step_latency_seconds", "Seconds from detection to a verified copy.",
                                     labels=["step", "tier"])
        for tier, lat in latencies.items():
            cumulative, running = [], 0
            for bound, n in zip([*(str(b) for b in LATENCY_BUCKETS), "+Inf"], lat.per_bucket, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            hist.add_metric(["detected_to_verified", tier], cumulative, sum_value=lat.seconds)
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
