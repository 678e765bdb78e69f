"""The outbox table and the "already verified" query, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text, update

from splash_flows.context import Context
from splash_flows.errors import LedgerError
from splash_flows.ledger import Ledger
from splash_flows.ledger.models import OutboxEntry, OutboxPath, OutboxState, utcnow
from splash_flows.ledger.outbox import (
    Outbox,
    in_flight_versions,
    is_in_flight,
    verified_in_folders,
    verified_versions,
)


def test_upgraded_ledger_has_the_outbox_migration_and_table(ctx: Context) -> None:
    script = ScriptDirectory.from_config(ctx.ledger._alembic_config())
    assert "0002_outbox" in {rev.revision for rev in script.walk_revisions()}
    assert ctx.ledger.current_revision() == ctx.ledger.head_revision()
    columns = {c["name"] for c in inspect(ctx.ledger.engine).get_columns("outbox")}
    assert columns == {"id", "created_at", "idempotency_key", "deployment", "paths", "state", "attempts",
                       "last_error", "flow_run_id", "sent_at"}


def test_entries_are_pending_until_sent_and_come_back_oldest_first(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    first = outbox.add("dispatcher/run_733_dispatcher", ["s1/a.edf", "s1/b c.edf"])
    second = outbox.add("dispatcher/run_733_dispatcher", ["s2/ü.edf"])
    assert first.state == "pending" and first.attempts == 0 and first.paths == ("s1/a.edf", "s1/b c.edf")
    assert first.idempotency_key != second.idempotency_key
    assert outbox.next_pending() == first

    outbox.record_attempt(first.id, "connection refused")
    again = outbox.get(first.id)
    assert again is not None and again.state == "pending" and again.attempts == 1
    assert again.last_error == "connection refused" and again.idempotency_key == first.idempotency_key
    assert outbox.next_pending() == again  # still first in line

    outbox.mark_sent(first.id, "run-1")
    sent = outbox.get(first.id)
    assert sent is not None and sent.state == "sent" and sent.flow_run_id == "run-1" and sent.sent_at is not None
    assert sent.attempts == 2
    assert outbox.next_pending() == second

    outbox.mark_failed(second.id, "422 bad parameters")
    assert outbox.next_pending() is None
    assert outbox.counts() == {"pending": 0, "sent": 1, "failed": 1}
    assert [e.state for e in outbox.entries()] == ["sent", "failed"]
    assert [e.id for e in outbox.entries("failed")] == [second.id]


def test_in_flight_is_pending_plus_recently_sent(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    old = outbox.add("d/x", ["old.edf"])
    outbox.mark_sent(old.id, "run-old")
    pending = outbox.add("d/x", ["pending.edf"])
    failed = outbox.add("d/x", ["failed.edf"])
    outbox.mark_failed(failed.id, "refused")
    ids = [e.id for e in outbox.in_flight(utcnow() - timedelta(hours=1))]
    assert ids == [old.id, pending.id]
    assert [e.id for e in outbox.in_flight(utcnow() + timedelta(seconds=1))] == [pending.id]


def test_empty_batches_and_unknown_entries_are_errors(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    with pytest.raises(LedgerError, match="empty batch"):
        outbox.add("d/x", [])
    with pytest.raises(LedgerError, match="does not exist"):
        outbox.mark_sent(12345, "run")


def test_verified_versions_needs_every_target_and_the_current_version(ctx: Context) -> None:
    ledger = ctx.ledger
    rec = {p: ledger.register_source("data733", p, size=10, mtime=1.5, checksum_alg="xxh3_128", checksum="c" + p)
           for p in ("a.edf", "b.edf", "c.edf")}
    for tier in ("lamarr", "cfs"):
        ledger.record_verified(rec["a.edf"], tier, checksum="ca.edf", size=10, skipped=False)
    ledger.record_verified(rec["b.edf"], "lamarr", checksum="cb.edf", size=10, skipped=False)
    ledger.record_failed("b.edf", "cfs", "disk full", source=rec["b.edf"])
    ledger.record_verified(rec["c.edf"], "lamarr", checksum="cc.edf", size=10, skipped=False)
    ledger.record_verified(rec["c.edf"], "cfs", checksum="cc.edf", size=10, skipped=False)
    # c changes on the source: its copies become stale, so it is no longer safe
    ledger.register_source("data733", "c.edf", size=11, mtime=2.5, checksum_alg="xxh3_128", checksum="new")
    got = verified_versions(ledger, "data733", ["lamarr", "cfs"], ["a.edf", "b.edf", "c.edf", "missing.edf"])
    assert got == {"a.edf": (10, 1.5)}
    assert verified_versions(ledger, "data733", ["lamarr"], ["a.edf", "b.edf"]) == {"a.edf": (10, 1.5),
                                                                                    "b.edf": (10, 1.5)}
    assert verified_versions(ledger, "other", ["lamarr", "cfs"], ["a.edf"]) == {}


def test_verified_in_folders_answers_as_verified_versions_whatever_lies_in_the_ranges(ctx: Context) -> None:
    """The per-folder range lookup (a leaf folder's files as one range of the path index) gives exactly the
    answer of the by-name lookup: rows inside a range that the walk did not list (a file deleted since, a file
    of a subfolder removed since, a sibling folder whose name sorts inside the range: ``s-1`` and ``s/`` are
    ordered by byte, ``-`` before ``/``) are never reported, nor are stale versions or partly verified files."""
    ledger = ctx.ledger
    on_disk = ["s/A.edf", "s/a.edf", "s/b.edf", "s/c d.edf", "s/z.edf", "s/\u00fc.edf", "s/\u65e5.edf",
               "s-1/x.edf", "s-1/y.edf", "t/one.edf", "top.edf", "s0/q.edf"]
    ledger_only = ["s/b0.edf", "s/gone/x.edf", "s/m/n.edf", "s-1/x0.edf", "s/\u00fc0.edf"]
    for path in [*on_disk, *ledger_only]:
        rec = ledger.register_source("data733", path, size=10, mtime=1.5, checksum_alg="xxh3_128", checksum="c")
        if path == "s/b.edf":  # verified on one target only
            ledger.record_verified(rec, "lamarr", checksum="c", size=10, skipped=False)
            continue
        for tier in ("lamarr", "cfs"):
            ledger.record_verified(rec, tier, checksum="c", size=10, skipped=False)
    # a new version of s/c d.edf: its copies are stale
    ledger.register_source("data733", "s/c d.edf", size=11, mtime=2.5, checksum_alg="xxh3_128", checksum="n")
    listed = [*on_disk, "s/new.edf"]  # a file the ledger does not know, in a leaf folder
    listed.sort(key=lambda p: (p.rpartition("/")[0], p))
    # leaf folders: s, s-1, t, s0 (top.edf is in the root, which holds folders: looked up by name)
    leaves: list[tuple[int, int]] = []
    for folder in ("s", "s-1", "t", "s0"):
        idx = [i for i, p in enumerate(listed) if p.rpartition("/")[0] == folder]
        leaves.append((idx[0], idx[-1] + 1))
    targets = ["lamarr", "cfs"]
    expected = verified_versions(ledger, "data733", targets, listed)
    assert set(expected) == set(on_disk) - {"s/b.edf", "s/c d.edf"}
    assert verified_in_folders(ledger, "data733", targets, listed, leaves) == expected
    assert verified_in_folders(ledger, "data733", targets, listed, []) == expected
    assert verified_in_folders(ledger, "data733", ["lamarr"], listed, leaves) == verified_versions(
        ledger, "data733", ["lamarr"], listed)
    assert verified_in_folders(ledger, "other", targets, listed, leaves) == {}
    with pytest.raises(LedgerError, match="at least one target"):
        verified_in_folders(ledger, "data733", [], listed, leaves)


def test_each_entry_indexes_its_paths_with_the_versions_batched(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    rec = outbox.add("d/x", ["s/a.edf", "s/b.edf"], [(10, 1.5), None])
    with ctx.ledger.reading() as conn:
        rows = conn.execute(select(OutboxPath.entry_id, OutboxPath.path, OutboxPath.size, OutboxPath.mtime)
                            .order_by(OutboxPath.path)).all()
    assert [tuple(r) for r in rows] == [(rec.id, "s/a.edf", 10, 1.5), (rec.id, "s/b.edf", None, None)]
    with pytest.raises(LedgerError, match="2 path"):
        outbox.add("d/x", ["s/a.edf", "s/b.edf"], [(1, 1.0)])


def test_in_flight_versions_are_those_of_pending_and_recently_sent_entries(ctx: Context) -> None:
    """The per-path lookup the watcher's scans use instead of a claim per file in memory."""
    outbox = Outbox(ctx.ledger)
    outbox.add("d/x", ["p.edf", "both.edf"], [(1, 1.0), (2, 2.0)])
    sent = outbox.add("d/x", ["sent.edf", "both.edf"], [(3, 3.0), (4, 4.0)])
    outbox.mark_sent(sent.id, "run-1")
    failed = outbox.add("d/x", ["failed.edf"], [(5, 5.0)])
    outbox.mark_failed(failed.id, "refused")
    outbox.add("d/x", ["legacy.edf"])  # no versions: any version (entries from before outbox_paths)
    paths = ["p.edf", "both.edf", "sent.edf", "failed.edf", "legacy.edf", "never.edf"]
    recent = in_flight_versions(ctx.ledger, paths, utcnow() - timedelta(hours=1))
    assert recent == {"p.edf": {(1, 1.0)}, "both.edf": {(2, 2.0), (4, 4.0)}, "sent.edf": {(3, 3.0)},
                      "legacy.edf": {None}}
    later = in_flight_versions(ctx.ledger, paths, utcnow() + timedelta(seconds=1))  # the send is too old now
    assert later == {"p.edf": {(1, 1.0)}, "both.edf": {(2, 2.0)}, "legacy.edf": {None}}
    assert is_in_flight(recent, "p.edf", (1, 1.0)) and not is_in_flight(recent, "p.edf", (1, 1.5))
    assert is_in_flight(recent, "legacy.edf", (9, 9.0)) and not is_in_flight(recent, "never.edf", (1, 1.0))


def test_upgrade_to_outbox_paths_indexes_the_entries_still_in_flight(ledger_url: str) -> None:
    """Migration 0005_watcher_scan_state: pending and recently sent entries get their paths with no version (any
    version, as the watcher assumed at a start before it); failed entries get none."""
    ledger = Ledger.open(ledger_url, upgrade=False)
    cfg = ledger._alembic_config()
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_ledger_counters")
        recent = (utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
        for i, (state, sent_at, paths) in enumerate([("pending", None, ["p/a.edf", "p/b.edf"]),
                                                      ("sent", recent, ["s/a.edf"]),
                                                      ("failed", None, ["f/a.edf"])]):
            conn.execute(text("INSERT INTO outbox (created_at, idempotency_key, deployment, paths, state, "
                              "attempts, sent_at) VALUES (:now, :key, 'd/x', :paths, :state, 0, :sent_at)"),
                         {"now": recent, "key": f"k{i}", "paths": json.dumps(paths), "state": state,
                          "sent_at": sent_at})
    ledger.upgrade()
    found = in_flight_versions(ledger, ["p/a.edf", "p/b.edf", "s/a.edf", "f/a.edf"], utcnow() - timedelta(hours=1))
    assert found == {"p/a.edf": {None}, "p/b.edf": {None}, "s/a.edf": {None}}
    ledger.close()


def test_releasing_files_that_are_gone_leaves_the_entries_and_the_other_files_in_flight(ctx: Context) -> None:
    """A file gone from the source (deleted, moved out, its volume unmounted) is no longer in flight: if it comes
    back, the ledger's verified copies alone decide whether it is sent again. By paths, by folder, or all."""
    outbox = Outbox(ctx.ledger)
    first = outbox.add("d/x", ["a/1.edf", "a/2.edf", "a_b/3.edf", "c/4.edf"], [(1, 1.0)] * 4)
    outbox.mark_sent(first.id, "run-1")
    since = utcnow() - timedelta(hours=1)
    everything = ["a/1.edf", "a/2.edf", "a_b/3.edf", "c/4.edf"]
    assert outbox.release(["a/1.edf", "missing.edf"]) == 1
    assert set(in_flight_versions(ctx.ledger, everything, since)) == {"a/2.edf", "a_b/3.edf", "c/4.edf"}
    assert outbox.release(under="a") == 1  # a/ only: not a_b/ (the prefix is a folder, escaped)
    assert set(in_flight_versions(ctx.ledger, everything, since)) == {"a_b/3.edf", "c/4.edf"}
    assert outbox.release() == 2
    assert in_flight_versions(ctx.ledger, everything, since) == {}
    assert outbox.get(first.id) is not None and outbox.get(first.id).paths == tuple(everything)  # type: ignore[union-attr]


def test_path_rows_of_entries_no_longer_in_flight_are_dropped_and_the_entries_kept(ctx: Context) -> None:
    """``outbox_paths`` holds the files in flight, not every file ever sent: rows of refused entries and of
    entries sent before the cut go; pending entries and recent sends keep theirs."""
    outbox = Outbox(ctx.ledger)
    old = outbox.add("d/x", ["old.edf"], [(1, 1.0)])
    outbox.mark_sent(old.id, "run-1")
    refused = outbox.add("d/x", ["refused.edf"], [(2, 2.0)])
    outbox.mark_failed(refused.id, "refused")
    cut = utcnow() + timedelta(seconds=1)  # "old" was sent before it
    pending = outbox.add("d/x", ["pending.edf"], [(3, 3.0)])
    everything = ["old.edf", "refused.edf", "pending.edf"]
    assert outbox.forget_settled(cut) == 2
    assert set(in_flight_versions(ctx.ledger, everything, utcnow() - timedelta(hours=1))) == {"pending.edf"}
    assert outbox.forget_settled(cut) == 0  # idempotent
    assert [e.id for e in outbox.entries()] == [old.id, refused.id, pending.id]  # the entries are kept
    outbox.mark_sent(pending.id, "run-2")
    assert outbox.forget_settled(utcnow() - timedelta(hours=1)) == 0  # sent just now: still in flight


def test_entries_settled_longer_ago_than_the_retention_are_purged_and_pending_ones_never(ctx: Context) -> None:
    """``Outbox.purge``: sent and refused entries older than the cut go with any path rows left; pending entries
    (however old) and entries settled after the cut stay; a second purge deletes nothing."""
    outbox = Outbox(ctx.ledger)
    old_sent = outbox.add("d/x", ["a.edf", "b.edf"], [(1, 1.0), (2, 2.0)])
    outbox.mark_sent(old_sent.id, "run-1")
    old_refused = outbox.add("d/x", ["c.edf"], [(3, 3.0)])
    outbox.mark_failed(old_refused.id, "refused")
    old_pending = outbox.add("d/x", ["d.edf"], [(4, 4.0)])
    cut = utcnow() + timedelta(seconds=1)
    recent = outbox.add("d/x", ["e.edf"], [(5, 5.0)])
    with ctx.ledger.session() as sess:  # "recent" was sent after the cut
        sess.execute(update(OutboxEntry).where(OutboxEntry.id == recent.id)
                     .values(state=OutboxState.SENT, sent_at=cut + timedelta(seconds=5)))
    assert outbox.purge(cut) == 2
    assert [e.id for e in outbox.entries()] == [old_pending.id, recent.id]
    with ctx.ledger.read_session() as sess:
        assert set(sess.scalars(select(OutboxPath.path))) == {"d.edf", "e.edf"}  # the purged entries' rows went
    assert outbox.purge(cut) == 0
