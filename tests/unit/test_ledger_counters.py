"""The counters the database keeps (migrations 0004_ledger_counters and 0006_event_counters, ``ledger.counters``)
always equal a count of the rows: after every kind of write the ledger does, after bulk statements and cascaded
deletes, after the upgrade of a ledger that already held rows (the backfill), and with several writers at once --
on SQLite and on PostgreSQL (where each backend adds to its own row and ``fold`` gathers the rows of backends that
have gone). The event counters (what ``/metrics`` serves) equal a count of the event log and its latencies."""

from __future__ import annotations

import importlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import delete, update

from splash_flows.ledger import Ledger, NewSource, VerifiedCopy, counters
from splash_flows.ledger import overview as ov
from splash_flows.ledger.models import Copy, CopyState, Event, SourceFile

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def counted(ledger: Ledger) -> tuple[dict[str, dict[str, tuple[int, int]]], dict[str, tuple[int, int]]]:
    """What the counters say: (tier -> state -> (copies, bytes), source tier -> (files, bytes))."""
    with ledger.session() as sess:
        copies = {t: {s: (c.n, c.bytes) for s, c in v.items()} for t, v in counters.copy_counts(sess).items()}
        files = {t: (c.n, c.bytes) for t, c in counters.file_counts(sess).items()}
    return copies, files


def truth(ledger: Ledger) -> tuple[dict[str, dict[str, tuple[int, int]]], dict[str, tuple[int, int]]]:
    """The same, counted from the rows."""
    with ledger.engine.connect() as conn:
        copies: dict[str, dict[str, tuple[int, int]]] = {}
        for tier, state, n, b in conn.execute(sa.text(
                "SELECT tier, state, count(*), coalesce(sum(size), 0) FROM copies GROUP BY tier, state")):
            copies.setdefault(tier, {})[state] = (int(n), int(b))
        files = {t: (int(n), int(b)) for t, n, b in conn.execute(sa.text(
            "SELECT source_tier, count(*), coalesce(sum(size), 0) FROM files GROUP BY source_tier"))}
    return {t: dict(sorted(v.items())) for t, v in sorted(copies.items())}, files


def assert_counts_true(ledger: Ledger) -> None:
    assert counted(ledger) == truth(ledger)


def events_truth(ledger: Ledger) -> tuple[dict[tuple[str, str], int], dict[str, tuple[list[int], float]]]:
    """Events per (kind, tier) counted from the log, and per tier the detected -> verified histogram computed
    here from each verified event and its file (non-cumulative counts per bucket, +Inf last; sum of seconds)."""
    with ledger.session() as sess:
        counts: dict[tuple[str, str], int] = {}
        for kind, tier in sess.execute(sa.select(Event.kind, Event.tier)):
            counts[(kind, tier or "")] = counts.get((kind, tier or ""), 0) + 1
        hist: dict[str, tuple[list[int], float]] = {}
        q = (sa.select(Event.tier, Event.at, SourceFile.detected_at).join(SourceFile, SourceFile.id == Event.file_id)
             .where(Event.kind == "verified"))
        for tier, at, detected in sess.execute(q):
            lat = (at - detected).total_seconds()
            per, total = hist.get(tier or "", ([0] * (len(counters.LATENCY_BUCKETS) + 1), 0.0))
            bounds = counters.LATENCY_BUCKETS
            per[next((i for i, b in enumerate(bounds) if lat <= b), len(bounds))] += 1
            hist[tier or ""] = (per, total + lat)
    return counts, hist


def assert_events_true(ledger: Ledger) -> None:
    counts, hist = events_truth(ledger)
    with ledger.session() as sess:
        assert counters.event_counts(sess) == counts
        kept = counters.latencies(sess)
    assert {t: list(h.per_bucket) for t, h in kept.items()} == {t: per for t, (per, _s) in hist.items()}
    for tier, (per, seconds) in hist.items():  # SQLite computes times to the millisecond
        assert kept[tier].seconds == pytest.approx(seconds, abs=2e-3 * sum(per) + 1e-3)


def _sources(n: int, start: int = 0, size: int = 10) -> list[NewSource]:
    return [NewSource(f"p/f{i:04d}.edf", size + i, float(i), "xxh3_128", f"{i:032x}") for i in range(start, start + n)]


def test_every_kind_of_write_keeps_the_counters_true(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        assert counted(ledger) == ({}, {})
        recs = ledger.register_sources("data733", _sources(20))
        assert_counts_true(ledger)
        ledger.record_verified_many("lamarr", [VerifiedCopy(r, r.checksum, r.size, False) for r in recs[::2]])
        ledger.record_failed(recs[1].path, "cfs", "disk full", source=recs[1])
        ledger.record_verified_many("cfs", [VerifiedCopy(recs[1], recs[1].checksum, recs[1].size, False)])
        assert_counts_true(ledger)
        # a changed source: a new version (size changes, verified copies elsewhere become stale)
        ledger.register_sources("data733", [NewSource(recs[0].path, 999, 5.0, "xxh3_128", "f" * 32)])
        ledger.mark_source_changed("data733", [(recs[2].path, 1, 1.0)], seen_by="test")
        assert_counts_true(ledger)
        with ledger.session() as sess:  # bulk statements, as prune and the archive write them
            sess.execute(update(Copy).where(Copy.tier == "lamarr").values(state=CopyState.PRUNED))
            sess.execute(update(Copy).where(Copy.tier == "data733", Copy.file_id == recs[3].id).values(size=None))
            sess.execute(delete(Copy).where(Copy.tier == "cfs"))
            sess.execute(delete(SourceFile).where(SourceFile.id == recs[4].id))  # its copies go by cascade
        assert_counts_true(ledger)
        assert ov.totals(ledger).tiers == {t: {s: n for s, (n, _b) in v.items()} for t, v in truth(ledger)[0].items()}
        whole = ov.totals(ledger)
        assert (whole.files, whole.bytes) == truth(ledger)[1]["data733"]
    finally:
        ledger.close()


def test_the_upgrade_counts_the_rows_a_ledger_already_holds(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, upgrade=False)
    cfg = ledger._alembic_config()
    try:
        with ledger.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003_scale_indexes")  # before both counter migrations
        with ledger.engine.begin() as conn:
            ids = list(conn.scalars(sa.insert(SourceFile.__table__).returning(SourceFile.__table__.c.id), [
                {"source_tier": "data733" if i % 5 else "other", "path": f"f{i}", "size": i, "mtime": 0.0,
                 "checksum_alg": "xxh3_128", "checksum": "0", "detected_at": T0, "updated_at": T0}
                for i in range(1, 31)]))
            conn.execute(sa.insert(Copy.__table__), [
                {"file_id": fid, "tier": tier, "state": list(CopyState)[(i + j) % len(CopyState)],
                 "size": None if i % 7 == 0 else i, "updated_at": T0}
                for i, fid in enumerate(ids, start=1) for j, tier in enumerate(("data733", "lamarr", "cfs"))])
            conn.execute(sa.insert(Event.__table__), [
                {"at": T0 + timedelta(seconds=5 ** (i % 9) + 0.25), "file_id": fid, "path": f"f{i}",
                 "tier": ("lamarr", "cfs", None)[i % 3], "kind": ("verified", "failed")[i % 4 == 0], "detail": {}}
                for i, fid in enumerate(ids, start=1)])
        assert ledger.upgrade() == ledger.head_revision()
        assert_counts_true(ledger)
        assert_events_true(ledger)
        with ledger.session() as sess:
            assert sum(h.per_bucket[-1] for h in counters.latencies(sess).values()) > 0  # 5**8 s is over a day
        assert counted(ledger)[1]["other"] == (6, 5 + 10 + 15 + 20 + 25 + 30)
        ledger.register_sources("data733", _sources(3, start=100))  # and the triggers go on from there
        assert_counts_true(ledger)
        assert_events_true(ledger)
    finally:
        ledger.close()


def _writer(url: str, worker: int, rounds: int, errors: list[Exception]) -> None:
    """One process's worth of writes: its own files, then state changes on every file (shared rows included,
    always in the same order, as the ledger's batch writes take them), and bulk updates of its own rows."""
    ledger = Ledger.open(url)
    try:
        recs = ledger.register_sources("data733", _sources(10, start=1000 * (worker + 1)))
        shared = list(ledger.sources("data733", [s.path for s in _sources(10)]).values())
        for r in range(rounds):
            tier = ("lamarr", "cfs")[r % 2]
            ledger.record_verified_many(tier, [VerifiedCopy(x, x.checksum, x.size, False) for x in recs + shared])
            for x in (recs + shared)[r % 3::3]:
                ledger.record_failed(x.path, tier, f"round {r}", source=x)
            with ledger.session() as sess:
                sess.execute(update(Copy).where(Copy.file_id.in_([x.id for x in recs[:4]]), Copy.tier == tier)
                             .values(state=(CopyState.STALE, CopyState.PENDING)[r % 2]))
    except Exception as err:  # noqa: BLE001 -- reported by the test in the main thread
        errors.append(err)
    finally:
        ledger.close()


def _folder(ledger: Ledger, stop: threading.Event, folded: list[int]) -> None:
    while not stop.is_set():
        folded.append(counters.fold(ledger))


@pytest.mark.parametrize("writers", [4])
def test_concurrent_writers_keep_the_counters_true(ledger_url: str, writers: int) -> None:
    """Several writers at once, on their own rows and on shared ones, while another thread folds: no update is
    lost (each adds ``n = n + delta``), none waits forever (PostgreSQL: each backend has its own counter row)."""
    ledger = Ledger.open(ledger_url)
    try:
        ledger.register_sources("data733", _sources(10))
        errors: list[Exception] = []
        stop, folded = threading.Event(), []  # type: ignore[var-annotated]
        folder = threading.Thread(target=_folder, args=(ledger, stop, folded))
        folder.start()
        threads = [threading.Thread(target=_writer, args=(ledger_url, w, 6, errors)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        folder.join()
        assert not errors, errors
        assert_counts_true(ledger)
        assert_events_true(ledger)
        before = counted(ledger)
        counters.fold(ledger)  # the writers' connections are closed: their rows fold into shard 0
        assert counted(ledger) == before
        assert_events_true(ledger)
        if ledger.engine.dialect.name == "postgresql":
            with ledger.engine.connect() as conn:
                pids = {int(p) for p in conn.scalars(sa.text("SELECT pid FROM pg_stat_activity"))}
                shards = {int(s) for s in conn.scalars(sa.text("SELECT DISTINCT shard FROM copy_counts"))}
            assert shards <= pids | {0}, (shards, pids)
            assert sum(folded) > 0 or 0 in shards
    finally:
        ledger.close()


def test_fold_is_a_no_op_on_sqlite(tmp_path: Any) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        ledger.register_sources("data733", _sources(3))
        assert counters.fold(ledger) == 0
        assert_counts_true(ledger)
    finally:
        ledger.close()


def test_event_counters_follow_the_log(ledger_url: str) -> None:
    """Every event the ledger appends is counted once, by kind and tier; each verified event's latency lands in
    the bucket of its detected -> verified time; a deleted file does not take its events' counts back."""
    ledger = Ledger.open(ledger_url)
    try:
        recs = ledger.register_sources("data733", _sources(12))
        with ledger.session() as sess:  # detections spread over 0.1 s .. two days ago
            for i, r in enumerate(recs):
                back = timedelta(seconds=(0.1, 0.7, 3, 40, 700, 4000, 90_000, 200_000)[i % 8])
                sess.execute(update(SourceFile).where(SourceFile.id == r.id)
                             .values(detected_at=datetime.now(UTC) - back))
        ledger.record_verified_many("lamarr", [VerifiedCopy(r, r.checksum, r.size, False) for r in recs])
        ledger.record_failed(recs[0].path, "cfs", "disk full", source=recs[0])
        ledger.record_verified_many("cfs", [VerifiedCopy(r, r.checksum, r.size, False) for r in recs[1:7]])
        assert_events_true(ledger)
        counts, hist = events_truth(ledger)
        assert counts[("verified", "lamarr")] == 12 and counts[("failed", "cfs")] == 1
        assert sum(hist["lamarr"][0]) == 12 and hist["lamarr"][0][-1] == 2  # more than a day: +Inf
        with ledger.session() as sess:
            before = counters.event_counts(sess)
            sess.execute(delete(SourceFile).where(SourceFile.id == recs[5].id))
        with ledger.session() as sess:
            assert counters.event_counts(sess) == before  # counters never go down
    finally:
        ledger.close()


def test_latency_buckets_agree_with_the_migration() -> None:
    migration = importlib.import_module("splash_flows.ledger.migrations.versions.event_counters")
    assert migration.LATENCY_BUCKETS == counters.LATENCY_BUCKETS
