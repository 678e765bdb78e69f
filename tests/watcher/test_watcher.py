"""The watcher in-process, on real files in tmp folders, with a fake trigger (no Prefect).

Quiet periods are short (0.2 s); every wait is a bounded poll on a condition, and "not sent" is checked either
while the writer still holds the file or after a barrier file written later has been sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.ledger import EventKind, Ledger
from splash_flows.ledger.outbox import Outbox
from splash_flows.services.move import move_files
from tests.fakes.trigger import FakeTrigger
from tests.support.watching import detector_write, wait_for
from tests.watcher.conftest import Harness, with_watcher

MakeHarness = Callable[..., Harness]


def _not_barrier(paths: tuple[str, ...]) -> bool:
    return not paths[0].startswith("zz_barrier/")


def test_detector_write_sent_once_only_after_close(watch_config: Config, make_harness: MakeHarness) -> None:
    """Chunks written with pauses longer than the quiet period: still held until the file is closed."""
    h = make_harness(watch_config)
    rel = "scan_0001/frame_00001.edf"
    pause = 2 * watch_config.watcher.quiet_period_s

    def still_held(_i: int) -> None:
        assert h.sent_count(rel) == 0, "a file still open for writing was sent"
        assert not [e for e in h.events.of("ready") if rel in e.paths]

    detector_write(h.root / rel, [os.urandom(4096)] * 4, pause, between=still_held)
    h.wait_sent(rel)
    h.barrier()
    assert h.sent_count(rel) == 1
    ready = [e for e in h.events.of("ready") if rel in e.paths]
    assert len(ready) == 1 and ready[0].detail["size"] == 4 * 4096
    closed_at = ready[0].detail["closed_at"]
    assert closed_at is not None and ready[0].at >= closed_at  # the close is the signal (ready_on_close)


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_file_growing_past_quiet_period_is_held(watch_config: Config, make_harness: MakeHarness,
                                                mode: str) -> None:
    """Reopened and appended every 0.05 s for several quiet periods: held until it stops, sent once, whole
    (inotify mode without ``ready_on_close``: every close waits the quiet period)."""
    # a quiet period of 1 s, 20x the pause between appends: on a loaded 2-core machine this thread can be held
    # off the CPU for a few tenths of a second (with 0.3 s the file sometimes looked quiet mid-growth under load)
    h = make_harness(with_watcher(watch_config, mode=mode, quiet_period_s=1.0, ready_on_close=False))
    rel = f"scan_grow_{mode}/growing.edf"
    path = h.root / rel
    path.parent.mkdir(parents=True)
    rounds = 60  # 60 x 0.05 s = 3 s = 3 quiet periods
    for i in range(rounds):
        with open(path, "ab") as fh:
            fh.write(b"x" * 1000)
        assert h.sent_count(rel) == 0, f"sent while still growing (after {i} appends)"
        time.sleep(0.05)
    h.wait_sent(rel)
    h.barrier()
    assert h.sent_count(rel) == 1
    (ready,) = [e for e in h.events.of("ready") if rel in e.paths]
    assert ready.detail["size"] == rounds * 1000


def test_file_reopened_after_its_first_close_is_sent_whole_last(watch_config: Config,
                                                                make_harness: MakeHarness) -> None:
    """ready_on_close: the first close of a new file sends it at once (it may be half of what the writer will
    append); every later write waits the quiet period after its close, so while the writer keeps appending
    nothing more is sent, and the last version sent is the whole file."""
    h = make_harness(with_watcher(watch_config, quiet_period_s=0.3))
    rel = "scan_reopen/growing.edf"
    path = h.root / rel
    path.parent.mkdir(parents=True)
    rounds = 30
    for _ in range(rounds):
        with open(path, "ab") as fh:
            fh.write(b"x" * 1000)
        time.sleep(0.05)
    wait_for(lambda: any(e.detail["size"] == rounds * 1000 for e in h.events.of("ready") if rel in e.paths),
             "the whole file to be ready", timeout=30)
    h.barrier()
    sizes = [e.detail["size"] for e in h.events.of("ready") if rel in e.paths]
    assert sizes[-1] == rounds * 1000 and len(sizes) <= 2, sizes  # at most one early (first-close) version
    assert h.sent_count(rel) == len(sizes)


def test_deleted_before_ready_is_dropped_with_one_info_line(watch_config: Config, make_harness: MakeHarness,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="splash_flows.watcher")
    h = make_harness(with_watcher(watch_config, quiet_period_s=1.0))
    rel = "scan_del/gone.edf"
    path = h.root / rel
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:  # partially written, then deleted while still open
        fh.write(b"partial")
        fh.flush()
        wait_for(lambda: h.watcher.pending_files() >= 1, "the watcher to see the new file")
        path.unlink()
    closed_rel = "scan_del/closed_then_deleted.edf"
    (h.root / closed_rel).write_bytes(b"complete")  # closed, deleted within its quiet period
    wait_for(lambda: h.watcher.pending_files() >= 1, "the watcher to see the closed file")
    (h.root / closed_rel).unlink()
    h.barrier()
    assert h.sent_count(rel) == 0 and h.sent_count(closed_rel) == 0
    lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert {r.levelno for r in lines} == {logging.INFO}
    assert sum(rel in r.getMessage() for r in lines) == 1
    assert sum(closed_rel in r.getMessage() for r in lines) == 1


def test_zero_byte_spaces_and_non_ascii_names_sent_in_one_batch(watch_config: Config,
                                                                make_harness: MakeHarness) -> None:
    h = make_harness(with_watcher(watch_config, batch_window_s=0.5))
    names = ["scan_names/empty.edf", "scan_names/with space.edf", "scan_names/ñandú_é.edf",
             "scan_names/日本語 データ.edf"]
    for i, rel in enumerate(names):
        p = h.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"" if i == 0 else os.urandom(100))
    h.wait_sent(*names)
    h.barrier()
    runs = [r for r in h.trigger.runs_snapshot() if _not_barrier(r.paths)]
    assert sorted(p for r in runs for p in r.paths) == sorted(names)
    assert len(runs) <= 2  # batched, not one run per file (at most split by the window edge)


def test_symlinks_are_never_sent_and_out_of_root_ones_are_refused(
        watch_config: Config, make_harness: MakeHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="splash_flows.watcher")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.edf").write_bytes(b"not beamline data")
    h = make_harness(watch_config)
    scan = h.root / "scan_links"
    scan.mkdir()
    (scan / "real.edf").write_bytes(b"real data")
    (scan / "evil.edf").symlink_to(outside / "secret.edf")
    (scan / "evil_dir").symlink_to(outside, target_is_directory=True)
    (scan / "alias.edf").symlink_to(scan / "real.edf")  # inside the root: skipped, the target is sent
    h.wait_sent("scan_links/real.edf")
    h.watcher.rescan()  # a rescan meets the links again: still no second refusal line
    h.barrier()
    sent = h.trigger.sent_paths()
    assert not [p for p in sent if "evil" in p or "alias" in p or "secret" in p]
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert sorted(r.getMessage().split(":")[1] for r in refusals) == ["scan_links/evil.edf", "scan_links/evil_dir"]
    assert all(r.levelno == logging.WARNING and "outside" in r.getMessage() for r in refusals)
    refused_events = h.ledger.events(kind=EventKind.REFUSED)
    assert sorted(e.path or "" for e in refused_events) == ["scan_links/evil.edf", "scan_links/evil_dir"]

    # a restart meets the same links: one summary line, no new WARNING, no new ledger event (issue 12.6)
    h.watcher.stop()
    caplog.clear()
    again = make_harness(watch_config)
    again.barrier()
    wait_for(lambda: any("still refused" in r.getMessage() for r in caplog.records), "the summary line")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "evil" in r.getMessage()]
    summary = [r for r in caplog.records if "still refused" in r.getMessage()]
    assert len(summary) == 1 and summary[0].getMessage().startswith("2 path(s) still refused")
    assert len(again.ledger.events(kind=EventKind.REFUSED)) == 2


def test_temporary_hidden_and_renamed_files(watch_config: Config, make_harness: MakeHarness) -> None:
    """Ignored names are never sent; the write-then-rename pattern sends the final name once."""
    h = make_harness(watch_config)
    scan = h.root / "scan_tmp"
    scan.mkdir()
    detector_write(scan / "frame.edf.tmp", [b"a" * 100, b"b" * 100], 0.3)
    os.rename(scan / "frame.edf.tmp", scan / "frame.edf")
    for name in (".hidden.edf", "x.part", "x.swp", "backup~"):
        (scan / name).write_bytes(b"ignored")
    (h.root / ".cache").mkdir()
    (h.root / ".cache" / "visible_name.edf").write_bytes(b"in a hidden folder")
    outside = h.root.parent / "staging_outside_root.edf"
    outside.write_bytes(b"written elsewhere, moved in whole")
    os.rename(outside, scan / "moved_in.edf")  # no close event inside the tree: the move itself says "complete"
    h.wait_sent("scan_tmp/frame.edf", "scan_tmp/moved_in.edf")
    h.barrier()
    sent = [p for p in h.trigger.sent_paths() if not p.startswith("zz_barrier/")]
    assert sorted(sent) == ["scan_tmp/frame.edf", "scan_tmp/moved_in.edf"]


def test_a_symlinked_root_is_watched_through_its_target(watch_config: Config, make_harness: MakeHarness,
                                                        tmp_path: Path) -> None:
    real = Path(watch_config.tiers["data733"].root)
    link = tmp_path / "data733-link"
    link.symlink_to(real, target_is_directory=True)
    tiers = dict(watch_config.tiers)
    tiers["data733"] = tiers["data733"].model_copy(update={"root": link})
    h = make_harness(watch_config.model_copy(update={"tiers": tiers}))
    detector_write(link / "scan_l" / "f.edf", [b"a" * 10, b"b" * 10], 0.05)
    h.wait_sent("scan_l/f.edf")


def test_many_files_in_one_folder_make_few_batches(watch_config: Config, make_harness: MakeHarness) -> None:
    h = make_harness(with_watcher(watch_config, batch_window_s=0.5, max_batch_files=20, batch_idle_s=0))
    rels = [f"scan_many/frame_{i:04d}.edf" for i in range(100)] + [f"scan_other/f_{i}.edf" for i in range(5)]
    for rel in rels:
        p = h.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(64))
    h.wait_sent(*rels)
    h.barrier()
    runs = [r for r in h.trigger.runs_snapshot() if _not_barrier(r.paths)]
    assert sorted(p for r in runs for p in r.paths) == sorted(rels)  # each exactly once
    assert all(len(r.paths) <= 20 for r in runs)
    assert all(len({p.split("/")[0] for p in r.paths}) == 1 for r in runs)  # one folder per batch
    assert len(runs) <= 12, f"{len(runs)} runs for {len(rels)} files: not batched"
    assert len(runs) == len(Outbox(h.ledger).entries()) - 1  # one outbox entry, one trigger per batch


def test_backfill_sends_unseen_and_changed_files_not_verified_ones(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context) -> None:
    root = Path(watch_config.tiers["data733"].root)
    for rel in ("old/a.edf", "old/b.edf", "old/c.edf", "new/d.edf"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(500))
    report = move_files(ctx_sqlite, ["old/a.edf", "old/b.edf"])
    assert sorted(report.verified_everywhere()) == ["old/a.edf", "old/b.edf"]
    with open(root / "old/b.edf", "ab") as fh:  # a new version of b after it was verified
        fh.write(b"more")
    h = make_harness(watch_config)
    h.wait_sent("old/b.edf", "old/c.edf", "new/d.edf")
    h.barrier()
    sent = [p for p in h.trigger.sent_paths() if not p.startswith("zz_barrier/")]
    assert sorted(sent) == ["new/d.edf", "old/b.edf", "old/c.edf"]


def test_a_large_backfill_holds_a_bounded_backlog_and_sends_every_file_once(
        watch_config: Config, make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan thread waits while too many found files wait to become ready (memory stays flat however large
    the tree), and still sends every file exactly once."""
    from splash_flows.watcher import scan

    monkeypatch.setattr(scan, "SCAN_BACKLOG", 5)
    monkeypatch.setattr(scan, "SCAN_CHUNK", 4)
    config = with_watcher(watch_config, max_batch_files=2)  # backlog limit max(5, 4 x 2) = 8 candidates
    root = Path(config.tiers["data733"].root)
    rels = [f"s{f}/frame_{i:03d}.edf" for f in range(6) for i in range(10)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    h = make_harness(config, start=False)
    peak = [0]
    offer = h.watcher._offer_found

    def counting(found: list[scan.Found], *, new_folder: bool = False) -> int:
        n = offer(found, new_folder=new_folder)
        peak[0] = max(peak[0], len(h.watcher._candidates))
        return n

    monkeypatch.setattr(h.watcher, "_offer_found", counting)
    h.watcher.start()
    h.wait_sent(*rels, timeout=60)
    h.barrier()
    sent = [p for p in h.trigger.sent_paths() if not p.startswith("zz_barrier/")]
    assert sorted(sent) == sorted(rels)  # each exactly once
    assert 0 < peak[0] <= 8 + 4, f"{peak[0]} candidates held at once: the scan did not wait for the loop"


def test_a_backfill_keeps_no_claim_per_file_and_a_restart_asks_the_ledger_what_is_in_flight(
        watch_config: Config, make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files in the outbox are in flight by the ledger's ``outbox_paths``, not by a claim per file in memory: the
    watcher keeps at most ``CLAIM_CACHE`` claims however many files it queued, a rescan offers none of them
    again, and a restart (as after ``kill -9``: nothing loaded per file) sends each exactly once."""
    from splash_flows.watcher import base

    monkeypatch.setattr(base, "CLAIM_CACHE", 3)
    rels = [f"c{f}/frame_{i:02d}.edf" for f in range(3) for i in range(10)]
    for rel in rels:
        (Path(watch_config.tiers["data733"].root) / rel).parent.mkdir(parents=True, exist_ok=True)
        (Path(watch_config.tiers["data733"].root) / rel).write_bytes(b"x")
    down = FakeTrigger()
    down.down = True
    first = make_harness(watch_config, down)
    outbox = Outbox(first.ledger)
    wait_for(lambda: sum(len(e.paths) for e in outbox.entries("pending")) == len(rels), "every file queued")
    assert len(first.watcher._claims) <= 3
    assert first.watcher.rescan() == 0  # in flight (pending), as the ledger says
    first.watcher.stop()

    up = FakeTrigger()
    second = make_harness(watch_config, up)
    assert not second.watcher._claims  # nothing loaded per file at start
    second.wait_sent(*rels)
    assert second.watcher.rescan() == 0  # sent within resend_after_s: still in flight
    second.barrier()
    sent = [p for p in up.sent_paths() if not p.startswith("zz_barrier/")]
    assert sorted(sent) == sorted(rels)  # each exactly once


def test_rescan_catches_files_the_observer_missed(watch_config: Config, make_harness: MakeHarness) -> None:
    h = make_harness(with_watcher(watch_config, rescan_interval_s=0.5))
    h.barrier()
    assert h.watcher.observer is not None
    h.watcher.observer.unschedule_all()  # from now on the observer sees nothing, as after a queue overflow
    (h.root / "missed").mkdir()
    (h.root / "missed" / "one.edf").write_bytes(b"1")
    h.wait_sent("missed/one.edf")  # found by the periodic rescan
    (h.root / "missed" / "two.edf").write_bytes(b"2")
    assert h.watcher.rescan() == 1  # a direct rescan finds exactly the new file...
    h.wait_sent("missed/two.edf")
    assert h.watcher.rescan() == 0  # ...and nothing already in flight
    assert h.sent_count("missed/one.edf") == 1 and h.sent_count("missed/two.edf") == 1


def test_repeated_events_and_rescans_do_not_resend(watch_config: Config, make_harness: MakeHarness) -> None:
    h = make_harness(watch_config)
    rel = "scan_rep/frame.edf"
    (h.root / "scan_rep").mkdir()
    (h.root / rel).write_bytes(b"data")
    h.wait_sent(rel)
    for _ in range(3):  # opened for writing and closed without a write: a close event, same version
        open(h.root / rel, "ab").close()
    assert h.watcher.rescan() == 0
    h.barrier()
    assert h.sent_count(rel) == 1


def test_trigger_down_then_up_replays_outbox_in_order_once(
        watch_config: Config, make_harness: MakeHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="splash_flows.watcher")
    trigger = FakeTrigger()
    trigger.down = True
    h = make_harness(watch_config, trigger)
    outbox = Outbox(h.ledger)
    folders = ["s1", "s2", "s3"]
    for n, folder in enumerate(folders, start=1):
        (h.root / folder).mkdir()
        for i in range(3):
            (h.root / folder / f"f{i}.edf").write_bytes(os.urandom(10))
        wait_for(lambda n=n: len(outbox.entries()) == n, f"outbox entry {n}")  # type: ignore[misc]
    first = wait_for(lambda: e if (e := outbox.entries()[0]).attempts >= 2 else None, "repeated attempts")
    assert first.state == "pending" and "down" in (first.last_error or "")
    assert [e.state for e in outbox.entries()] == ["pending"] * 3
    assert trigger.runs == []
    trigger.down = False
    wait_for(lambda: outbox.counts()["pending"] == 0, "the outbox to drain")
    runs = trigger.runs_snapshot()
    assert [r.paths[0].split("/")[0] for r in runs] == folders  # replayed in order
    assert [r.key for r in runs] == [e.idempotency_key for e in outbox.entries()]
    assert sorted(trigger.sent_paths()) == sorted(f"{d}/f{i}.edf" for d in folders for i in range(3))
    warnings = [r for r in caplog.records if "cannot trigger" in r.getMessage()]
    assert len(warnings) == 1, "one WARNING per outage, not one per attempt"
    assert any("accepts triggers again" in r.getMessage() for r in caplog.records)


def test_busy_answers_are_retried_at_once_and_recorded_once_per_streak(
        watch_config: Config, make_harness: MakeHarness, caplog: pytest.LogCaptureFixture) -> None:
    """A 503 from a SQLite-backed server that another write holds (``OrchestratorBusy``) is not an outage: the
    entry is replayed after 0.2-0.4 s each time (no doubling back-off), with the same key, and the streak is
    one outbox attempt (each record is a ledger write), one INFO line and no WARNING."""
    caplog.set_level(logging.INFO, logger="splash_flows.watcher")
    trigger = FakeTrigger()
    trigger.busy = 6
    h = make_harness(watch_config, trigger)
    outbox = Outbox(h.ledger)
    (h.root / "b").mkdir()
    (h.root / "b" / "f.edf").write_bytes(b"frame")
    wait_for(lambda: len(outbox.entries("sent")) == 1 or None, "the entry to be sent")
    entry, = outbox.entries()
    assert len(trigger.calls) == 7 and {key for _, key in trigger.calls} == {entry.idempotency_key}
    assert entry.attempts == 2 and "503" in (entry.last_error or "")  # the busy streak, then the send
    assert len(h.events.of("send_failed")) == 6
    assert [r.paths for r in trigger.runs_snapshot()] == [("b/f.edf",)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("Prefect is busy" in r.getMessage() for r in caplog.records) == 1


def test_busy_delay_is_short_whatever_the_attempts() -> None:
    from splash_flows.watcher.outbox import busy_delay, replay_delay

    assert all(0.2 <= busy_delay(5.0) <= 0.4 for _ in range(100))
    assert busy_delay(0.1) == 0.1
    assert replay_delay(4, 5.0) == 5.0  # the outage back-off is unchanged


def test_pending_outbox_survives_a_restart_and_is_replayed_first(
        watch_config: Config, make_harness: MakeHarness) -> None:
    down = FakeTrigger()
    down.down = True
    first = make_harness(watch_config, down)
    for folder in ("r1", "r2"):
        (first.root / folder).mkdir()
        (first.root / folder / "x.edf").write_bytes(b"x")
    wait_for(lambda: Outbox(first.ledger).counts()["pending"] == 2, "two pending entries")
    first.watcher.stop()
    up = FakeTrigger()
    second = make_harness(watch_config, up)
    second.wait_sent("r1/x.edf", "r2/x.edf")
    second.barrier()
    in_outbox_order = [e.paths[0] for e in Outbox(second.ledger).entries()[:2]]
    assert sorted(in_outbox_order) == ["r1/x.edf", "r2/x.edf"]
    assert up.sent_paths()[:2] == in_outbox_order  # replayed first, oldest first
    assert up.sent_paths().count("r1/x.edf") == 1 and up.sent_paths().count("r2/x.edf") == 1


def test_replay_of_an_accepted_entry_returns_the_same_run(watch_config: Config, make_harness: MakeHarness) -> None:
    """Crash after Prefect accepted an entry but before it was marked sent: the replay reuses the key."""
    trigger = FakeTrigger()
    ledger = Ledger.open(watch_config.ledger.url_value())
    entry = Outbox(ledger).add(watch_config.watcher.deployment, ["k/a.edf"])
    run_id = trigger.trigger(["k/a.edf"], entry.idempotency_key)  # accepted; the process "died" here
    ledger.close()
    h = make_harness(watch_config, trigger)
    wait_for(lambda: Outbox(h.ledger).counts()["pending"] == 0, "the replay")
    assert len(trigger.runs) == 1
    assert Outbox(h.ledger).entries()[0].flow_run_id == run_id


def test_rejected_batch_is_marked_failed_and_the_queue_goes_on(watch_config: Config,
                                                               make_harness: MakeHarness) -> None:
    trigger = FakeTrigger()
    trigger.reject = True
    h = make_harness(watch_config, trigger)
    (h.root / "bad").mkdir()
    (h.root / "bad" / "x.edf").write_bytes(b"x")
    outbox = Outbox(h.ledger)
    wait_for(lambda: outbox.counts()["failed"] == 1, "the entry to be marked failed")
    trigger.reject = False
    h.barrier()
    assert outbox.entries()[0].state == "failed" and "422" in (outbox.entries()[0].last_error or "")


def test_polling_mode_sends_files_once_stable(watch_config: Config, make_harness: MakeHarness) -> None:
    h = make_harness(with_watcher(watch_config, mode="polling", quiet_period_s=0.5, poll_interval_s=0.1))
    rel = "scan_poll/frame.edf"
    detector_write(h.root / rel, [b"a" * 1000] * 5, 0.05,
                   between=lambda _i: None if h.sent_count(rel) == 0 else pytest.fail("sent while writing"))
    (h.root / "scan_poll" / "empty.edf").write_bytes(b"")
    h.wait_sent(rel, "scan_poll/empty.edf")
    h.barrier()
    assert h.sent_count(rel) == 1
    (ready,) = [e for e in h.events.of("ready") if rel in e.paths]
    assert ready.detail["size"] == 5000


def test_unreadable_file_is_sent_and_named(watch_config: Config, make_harness: MakeHarness,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Decision: the watcher only stats; the move records read failures per file. So: sent (with a line)."""
    caplog.set_level(logging.INFO, logger="splash_flows.watcher")
    h = make_harness(watch_config)
    p = h.root / "scan_perm" / "locked.edf"
    p.parent.mkdir()
    p.write_bytes(b"secret")
    p.chmod(0)
    h.wait_sent("scan_perm/locked.edf")
    if not os.access(p, os.R_OK):  # as root every file is readable: no line then
        assert any("not readable" in r.getMessage() and "locked.edf" in r.getMessage() for r in caplog.records)


def test_stop_writes_ready_files_to_the_outbox(watch_config: Config, make_harness: MakeHarness) -> None:
    """Files already ready when the watcher stops are not left in memory: they wait in the outbox."""
    trigger = FakeTrigger()
    trigger.down = True
    h = make_harness(with_watcher(watch_config, batch_window_s=60.0), trigger)
    (h.root / "late").mkdir()
    (h.root / "late" / "f.edf").write_bytes(b"f")
    wait_for(lambda: h.events.of("ready") or None, "the file to be ready")
    assert Outbox(h.ledger).entries() == []  # still inside its 60 s batching window
    h.watcher.stop()
    (entry,) = Outbox(h.ledger).entries()
    assert entry.paths == ("late/f.edf",) and entry.state == "pending"


def test_a_file_sent_at_its_first_close_and_then_appended_is_caught_by_the_rewrite_path(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context) -> None:
    """ready_on_close sends a file at its close; a writer that reopens it for more writes after that makes the
    sent version a half-written one. The rewrite path catches it: the verified copies of the first version go
    stale in the ledger and the whole file is sent again and verified."""
    from splash_flows.ledger.catalogue import files_by_path

    h = make_harness(watch_config)
    rel = "scan_append/frame.edf"
    path = h.root / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first half " * 100)
    h.wait_sent(rel)
    assert sorted(move_files(ctx_sqlite, [rel]).verified_everywhere()) == [rel]  # the run of the first send
    with open(path, "ab") as fh:  # the writer reopens it for the second half
        fh.write(b"second half " * 100)
    wait_for(lambda: h.sent_count(rel) == 2, "the appended file to be sent again", timeout=30)
    copies = files_by_path(ctx_sqlite.ledger, "data733", [rel])[rel].copies
    assert {t: copies[t].state for t in ("lamarr", "cfs")} == {"lamarr": "stale", "cfs": "stale"}
    report = move_files(ctx_sqlite, [rel])
    assert sorted(report.verified_everywhere()) == [rel]
    for tier in ("lamarr", "cfs"):
        assert (Path(watch_config.tiers[tier].root) / rel).read_bytes() == path.read_bytes()
    h.barrier()
    assert h.sent_count(rel) == 2


def test_a_busy_prefect_server_delays_a_batch_but_never_loses_or_doubles_it(
        watch_config: Config, make_harness: MakeHarness) -> None:
    """The real trigger against a server that answers 503, then creates the run but answers too late (the
    client's timeout), then 503 again: each attempt is one bounded request (the sender is never stuck in the
    Prefect client's back-off), the entry stays pending in the outbox, and the replays carry the same key, so
    the run created by the timed-out attempt is the one the entry records. Nothing lost, nothing doubled."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from splash_flows.flows.trigger import PrefectDeploymentTrigger
    from tests.fakes.prefect_api import busy_prefect_api

    with busy_prefect_api(["503", "hang", "503"], hang_s=30) as api, \
            temporary_settings({PREFECT_API_URL: api.url, PREFECT_CLIENT_MAX_RETRIES: 5}):
        trigger = PrefectDeploymentTrigger(watch_config.watcher.deployment, None, timeout=0.5)
        h = make_harness(watch_config, trigger)  # type: ignore[arg-type]  # the real trigger, not a fake
        (h.root / "busy").mkdir()
        (h.root / "busy" / "a.edf").write_bytes(b"frame")
        outbox = Outbox(h.ledger)
        wait_for(lambda: len(outbox.entries("sent")) == 1 or None, "the entry to be sent")
        h.watcher.stop()
        trigger.close()
    entry, = outbox.entries()
    assert entry.state == "sent" and entry.paths == ("busy/a.edf",)
    assert api.create_keys == [entry.idempotency_key] * 4  # 503, timeout, 503, then the run found again
    assert list(api.runs) == [entry.idempotency_key]
    assert entry.flow_run_id == str(api.runs[entry.idempotency_key].id)
    failed = h.events.of("send_failed")
    assert len(failed) == 3 and not any(e.detail["permanent"] for e in failed)
    assert "within 0.5 s" in str(failed[1].detail["error"])


def test_a_light_rescan_passes_over_settled_folders_and_a_full_one_checks_every_file(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context) -> None:
    """Settled folders (ledger.scan_state): a full scan records the leaf folders it found all verified; a light
    rescan does not list one whose mtime is unchanged, so it misses a file rewritten in place with no event (the
    observer is not running here) -- which the full scan then finds. A folder that changed is listed again, and
    batching a file of a folder unsettles it."""
    from splash_flows.ledger.scan_state import settled_folders

    h = make_harness(watch_config, start=False)  # no observer: every change is found by scans alone
    rels = [f"{d}/frame_{i}.edf" for d in ("p/a", "p/b") for i in range(3)]
    for rel in rels:
        (h.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (h.root / rel).write_bytes(os.urandom(100))
    move_files(ctx_sqlite, rels).raise_for_failures()
    old = time.time() - 60  # settled only when untouched for a while (coarse mtimes)
    for folder in ("p/a", "p/b", "p"):
        os.utime(h.root / folder, (old, old))
    assert h.watcher.rescan() == 0
    settled = settled_folders(h.ledger, "data733", ["p", "p/a", "p/b"])
    assert {f: n for f, (_, n) in settled.items()} == {"p/a": 3, "p/b": 3}  # leaf folders only
    assert h.watcher.rescan(light=True) == 0

    with open(h.root / "p/a/frame_0.edf", "r+b") as fh:  # rewritten in place: p/a's mtime does not change
        fh.write(os.urandom(100))
    os.utime(h.root / "p/a/frame_0.edf", (old + 30, old + 30))
    (h.root / "p/b/frame_new.edf").write_bytes(b"new")  # p/b's mtime changes: listed again
    assert h.watcher.rescan(light=True) == 1
    assert set(h.watcher._candidates) == {"p/b/frame_new.edf"}
    assert h.watcher.rescan() == 1  # the full scan checks every file: the rewrite is found
    assert set(h.watcher._candidates) == {"p/b/frame_new.edf", "p/a/frame_0.edf"}
    assert settled_folders(h.ledger, "data733", ["p/a", "p/b"]) == {}  # neither is all verified now

    Outbox(h.ledger).add("d/x", ["p/c/x.edf"])  # no source tier: settled folders untouched
    (h.root / "p/c").mkdir()
    (h.root / "p/c/x.edf").write_bytes(b"x")
    move_files(ctx_sqlite, ["p/c/x.edf"]).raise_for_failures()
    os.utime(h.root / "p/c", (old, old))
    h.watcher.rescan()
    assert "p/c" in settled_folders(h.ledger, "data733", ["p/c"])
    Outbox(h.ledger).add("d/x", ["p/c/x.edf"], source_tier="data733")  # a file of p/c is being sent
    assert settled_folders(h.ledger, "data733", ["p/c"]) == {}


def test_a_full_rescan_looks_up_leaf_folders_by_range_and_still_finds_every_change(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context) -> None:
    """A full scan asks the ledger about a leaf folder's files as one range of the path index (SQLite). It
    still finds each file not verified on every target at its current version -- a copy no longer verified,
    a size change, an mtime-only change, a new name (a file renamed: the old name's verified row lies in the
    range), a file in a sibling folder whose name sorts inside the range -- and nothing else: rows in the range
    the walk did not list (a file deleted, a subfolder removed) are never offered."""
    h = make_harness(watch_config, start=False)  # no observer: every change is found by the scan alone
    rels = [f"q/a/frame_{i}.edf" for i in range(6)] + ["q/a/gone/x.edf", "q/a-1/y.edf", "q/b/z.edf"]
    for rel in rels:
        (h.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (h.root / rel).write_bytes(os.urandom(100))
    move_files(ctx_sqlite, rels).raise_for_failures()
    assert h.watcher.rescan() == 0
    shutil.rmtree(h.root / "q/a/gone")  # q/a is a leaf folder now; its subfolder's verified row stays
    (h.root / "q/a/frame_5.edf").unlink()  # deleted: its verified row stays too
    source = h.ledger.get_source("data733", "q/a/frame_0.edf")
    assert source is not None
    h.ledger.record_failed("q/a/frame_0.edf", "cfs", "copy lost", source=source)  # no longer verified on cfs
    (h.root / "q/a/frame_1.edf").write_bytes(os.urandom(101))  # a new size
    st = (h.root / "q/a/frame_2.edf").stat()
    os.utime(h.root / "q/a/frame_2.edf", ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))  # mtime only
    (h.root / "q/a/frame_3.edf").rename(h.root / "q/a/frame_3b.edf")  # same size and mtime, a new name
    (h.root / "q/a-1/new.edf").write_bytes(b"new")
    assert h.watcher.rescan() == 5
    assert set(h.watcher._candidates) == {"q/a/frame_0.edf", "q/a/frame_1.edf", "q/a/frame_2.edf",
                                          "q/a/frame_3b.edf", "q/a-1/new.edf"}


def test_a_periodic_light_rescan_request_is_made_full_by_any_full_one(
        watch_config: Config, make_harness: MakeHarness) -> None:
    w = make_harness(watch_config, start=False).watcher
    w.request_scan("", light=True)
    assert w._scan_light
    w.request_scan("")  # an overflow's rescan meanwhile: the one scan that runs is full
    w.request_scan("", light=True)
    assert not w._scan_light


def test_a_whole_tree_scan_deletes_outbox_entries_settled_before_the_retention(
        watch_config: Config, make_harness: MakeHarness) -> None:
    """``watcher.outbox_keep_days``: after a whole-tree scan, entries sent longer ago than the retention are
    deleted (the table does not grow with every batch ever sent); recent and pending ones stay."""
    from datetime import timedelta

    from sqlalchemy import update

    from splash_flows.ledger.models import OutboxEntry, utcnow

    harness = make_harness(watch_config, FakeTrigger())
    outbox = Outbox(harness.ledger)
    old = outbox.add("d/x", ["gone/old.edf"], [(1, 1.0)])
    outbox.mark_sent(old.id, "run-old")
    recent = outbox.add("d/x", ["gone/recent.edf"], [(2, 2.0)])
    outbox.mark_sent(recent.id, "run-recent")
    keep = watch_config.watcher.outbox_keep_days
    with harness.ledger.session() as sess:
        sess.execute(update(OutboxEntry).where(OutboxEntry.id == old.id)
                     .values(sent_at=utcnow() - timedelta(days=keep + 1)))
    harness.watcher.rescan()
    ids = {e.id for e in outbox.entries()}
    assert old.id not in ids and recent.id in ids
