"""Readiness and batching rules driven by hand (no observer thread, no clock): a close after writing is the
signal a file is complete (issue 14 item 2), the quiet period stays for polling mode and reopened files, and a
batch closes once idle."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent

from splash_flows.config import Config
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher
from splash_flows.watcher.base import _Claim, chunk_bounds
from splash_flows.watcher.scan import SETTLED_AGE_S
from tests.fakes.trigger import FakeTrigger

QUIET = 3600.0  # so long that a file ready "now" cannot have waited for it


@pytest.fixture
def make_watcher(sqlite_config: Config) -> Iterator[Callable[..., Watcher]]:
    ledgers: list[Ledger] = []

    def make(**settings: Any) -> Watcher:
        config = sqlite_config.model_copy(update={"watcher": sqlite_config.watcher.model_copy(
            update={"quiet_period_s": QUIET, "batch_window_s": QUIET, **settings})})
        ledger = Ledger.open(config.ledger.url_value())
        ledgers.append(ledger)
        return Watcher(config, ledger, FakeTrigger())  # not started: events are fed by hand

    yield make
    for ledger in ledgers:
        ledger.close()


def _write(w: Watcher, rel: str, data: bytes, *, append: bool = False) -> str:
    path = w.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as fh:
        fh.write(data)
    return str(path)


def _written_and_closed(w: Watcher, path: str, *, created: bool = True) -> None:
    if created:
        w._on_fs_event(FileCreatedEvent(path))
    w._on_fs_event(FileModifiedEvent(path))
    w._on_fs_event(FileClosedEvent(path))


def _batched(w: Watcher) -> list[str]:
    return sorted(p for b in w._batches.values() for p in b.paths)


def test_a_file_closed_after_writing_is_ready_at_once(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher()
    path = _write(w, "scan/a.edf", os.urandom(100))
    _written_and_closed(w, path)
    assert w.check_candidates(time.monotonic()) == 1  # no quiet period of QUIET seconds was waited
    assert _batched(w) == ["scan/a.edf"]


def test_without_ready_on_close_the_quiet_period_follows_the_close(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(ready_on_close=False)
    path = _write(w, "scan/a.edf", os.urandom(100))
    _written_and_closed(w, path)
    now = w._candidates["scan/a.edf"].stable_since
    assert w.check_candidates(now) == 0
    assert w.check_candidates(now + QUIET + 1) == 1


def test_polling_mode_keeps_the_quiet_period(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(mode="polling")
    path = _write(w, "scan/a.edf", os.urandom(100))
    w._on_fs_event(FileModifiedEvent(path))
    now = w._candidates["scan/a.edf"].stable_since
    assert w.check_candidates(now) == 0
    assert w.check_candidates(now + QUIET + 1) == 1


def test_a_file_written_again_after_its_close_waits_the_quiet_period(make_watcher: Callable[..., Watcher]) -> None:
    """Closed, then reopened for more writes before the watcher looked: the second close alone is not trusted."""
    w = make_watcher()
    path = _write(w, "scan/a.edf", b"header")
    _written_and_closed(w, path)
    _write(w, "scan/a.edf", os.urandom(100), append=True)
    _written_and_closed(w, path, created=False)
    now = w._candidates["scan/a.edf"].stable_since
    assert w.check_candidates(now) == 0
    assert w.check_candidates(now + QUIET / 2) == 0
    assert w.check_candidates(now + QUIET + 1) == 1
    assert _batched(w) == ["scan/a.edf"]


def test_a_file_written_again_after_it_was_sent_waits_the_quiet_period(
        make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher()
    path = _write(w, "scan/a.edf", b"first part")
    st = os.stat(path)
    w._claims["scan/a.edf"] = _Claim((st.st_size, st.st_mtime), until=1e12)  # sent, in flight
    _write(w, "scan/a.edf", os.urandom(100), append=True)
    _written_and_closed(w, path, created=False)
    now = w._candidates["scan/a.edf"].stable_since
    assert w.check_candidates(now) == 0
    assert w.check_candidates(now + QUIET + 1) == 1


def test_a_batch_closes_once_no_file_joined_it_for_batch_idle_s(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(batch_idle_s=0.1)
    for name in ("a", "b"):
        _written_and_closed(w, _write(w, f"scan/{name}.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 2
    assert w.flush_batches(now + 0.05) == 0  # still collecting
    assert w.flush_batches(now + 0.2) == 1
    assert [e.paths for e in w.outbox.entries()] == [("scan/a.edf", "scan/b.edf")]


def test_with_batch_idle_zero_a_batch_waits_for_its_window(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(batch_idle_s=0, batch_window_s=5.0)
    _written_and_closed(w, _write(w, "scan/a.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 1
    assert w.flush_batches(now + 4.0) == 0
    assert w.flush_batches(now + 5.5) == 1


def test_a_full_batch_is_sent_without_its_remainder_which_keeps_filling(
        make_watcher: Callable[..., Watcher]) -> None:
    """A burst of 1000 is 5 runs of 200, not 200 + the few files that joined in the same tick + 200 + ...: each
    run costs its own Prefect overhead. The remainder stays open (window and idle rules still bound its wait)."""
    w = make_watcher(max_batch_files=4, batch_idle_s=0.1)
    for i in range(6):
        _written_and_closed(w, _write(w, f"scan/f{i}.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 6
    assert w.flush_batches(now) == 1  # the full chunk of 4
    assert [len(e.paths) for e in w.outbox.entries()] == [4]
    assert _batched(w) == ["scan/f4.edf", "scan/f5.edf"]
    for i in range(6, 8):
        _written_and_closed(w, _write(w, f"scan/f{i}.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 2
    assert w.flush_batches(now) == 1  # full again: f4..f7
    assert [len(e.paths) for e in w.outbox.entries()] == [4, 4]
    _written_and_closed(w, _write(w, "scan/f8.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 1
    assert w.flush_batches(now + 0.05) == 0  # one file, still collecting
    assert w.flush_batches(now + 0.2) == 1  # idle: sent
    assert [e.paths[-1] for e in w.outbox.entries()] == ["scan/f3.edf", "scan/f7.edf", "scan/f8.edf"]


def test_chunk_bounds_cut_by_files_and_by_bytes() -> None:
    assert chunk_bounds([1] * 7, 3, 100) == [3, 6, 7]
    assert chunk_bounds([40, 40, 40, 10], 10, 100) == [2, 4]  # the third file would take the run over 100 bytes
    assert chunk_bounds([500, 1, 1], 10, 100) == [1, 3]  # a file larger than the cap is a run of its own
    assert chunk_bounds([], 10, 100) == [0]


def test_a_batch_is_full_by_bytes_as_well_as_by_files(make_watcher: Callable[..., Watcher]) -> None:
    """Small files go in large runs (max_batch_files), large ones in runs bounded by max_batch_bytes."""
    w = make_watcher(max_batch_files=100, max_batch_bytes=25, batch_idle_s=0.1)
    for i in range(5):
        _written_and_closed(w, _write(w, f"scan/f{i}.edf", os.urandom(10)))
    now = time.monotonic()
    assert w.check_candidates(now) == 5
    assert w.flush_batches(now) == 2  # 10 + 10 bytes per run: the next file would make 30 > 25
    assert [len(e.paths) for e in w.outbox.entries()] == [2, 2]
    assert _batched(w) == ["scan/f4.edf"]
    assert w.flush_batches(now + 0.2) == 1  # idle: the rest goes
    assert [len(e.paths) for e in w.outbox.entries()] == [2, 2, 1]


def test_files_closed_before_a_new_folder_was_watched_are_ready_without_the_quiet_period(
        make_watcher: Callable[..., Watcher]) -> None:
    """A folder created while watched: the files written into it before its watch was in place had their close
    events missed. The scan of that folder makes each ready once no process holds it open for writing (what its
    close event would have said), not a quiet period later; one still open waits for its close event."""
    w = make_watcher()
    _write(w, "new/closed.edf", os.urandom(10))
    w._on_fs_event(FileCreatedEvent(str(w.root / "new/closed.edf")))  # watchdog's report of a new folder's file
    _write(w, "new/unseen.edf", os.urandom(10))
    path = w.root / "new/open.edf"
    with open(path, "wb") as writer:
        writer.write(b"partial")
        writer.flush()
        assert w.rescan("new", new_folder=True) == 2  # closed.edf was a candidate already
        now = time.monotonic()
        assert w.check_candidates(now) == 2
        assert _batched(w) == ["new/closed.edf", "new/unseen.edf"]
        writer.write(b" rest")
    w._on_fs_event(FileModifiedEvent(str(path)))
    w._on_fs_event(FileClosedEvent(str(path)))
    assert w.check_candidates(time.monotonic()) == 1
    assert _batched(w) == ["new/closed.edf", "new/open.edf", "new/unseen.edf"]


def test_files_found_by_other_scans_still_wait_the_quiet_period(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher()
    _write(w, "old/a.edf", os.urandom(10))
    assert w.rescan("old") == 1
    assert w.check_candidates(time.monotonic()) == 0
    assert _batched(w) == []


def test_a_new_folders_file_waits_the_quiet_period_when_some_process_could_not_be_seen(
        make_watcher: Callable[..., Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the quiet period, only a check that saw every process's open files may say "nobody writes it"
    (a watcher that is not root cannot read other users' /proc/PID/fd, or /proc hides their processes)."""
    from splash_flows.watcher import readiness

    monkeypatch.setattr(readiness, "writers_seen", lambda paths: (set(), False))
    w = make_watcher()
    _write(w, "new/a.edf", os.urandom(10))
    assert w.rescan("new", new_folder=True) == 1
    assert w.check_candidates(time.monotonic()) == 0
    assert _batched(w) == []
    assert w.check_candidates(time.monotonic() + QUIET + 1) == 1  # then the quiet period's rule, as before
    assert _batched(w) == ["new/a.edf"]


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_files_a_scan_finds_long_unmodified_are_ready_once_no_writer_holds_them(
        make_watcher: Callable[..., Watcher]) -> None:
    """A startup backfill meets mostly old, settled files. One whose mtime is older than the quiet period (and
    ``SETTLED_AGE_S``) has already been quiet that long -- any write moves the mtime -- so it is ready as soon as
    the check for writers sees every process and none holds it open for writing, without a second look a quiet
    period later. A file still being written is never sent early: one held open for writing (even with an old
    mtime, as ``cp -p`` or a stalled writer can leave it) waits for its close event, and one modified recently
    waits the quiet period."""
    w = make_watcher()
    _write(w, "old/a.edf", os.urandom(10))
    _age(w.root / "old/a.edf", QUIET + SETTLED_AGE_S)  # older than the quiet period and the margin
    _write(w, "old/recent.edf", os.urandom(10))
    _age(w.root / "old/recent.edf", QUIET - SETTLED_AGE_S)  # older than the margin, not the quiet period
    path = w.root / "old/open.edf"
    with open(path, "wb") as writer:
        writer.write(b"partial")
        writer.flush()
        _age(path, QUIET + SETTLED_AGE_S)
        assert w.rescan("old") == 3
        assert w.check_candidates(time.monotonic()) == 1
        assert _batched(w) == ["old/a.edf"]
        assert w.check_candidates(time.monotonic()) == 0  # the open one waits for its close, not for a clock
        writer.write(b" rest")
    w._on_fs_event(FileModifiedEvent(str(path)))
    w._on_fs_event(FileClosedEvent(str(path)))
    assert w.check_candidates(time.monotonic()) == 1
    assert _batched(w) == ["old/a.edf", "old/open.edf"]  # recent.edf: still in its quiet period
    assert w.check_candidates(time.monotonic() + QUIET + 1) == 1
    assert _batched(w) == ["old/a.edf", "old/open.edf", "old/recent.edf"]


def test_an_old_file_waits_the_quiet_period_when_some_process_could_not_be_seen(
        make_watcher: Callable[..., Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    from splash_flows.watcher import readiness

    monkeypatch.setattr(readiness, "writers_seen", lambda paths: (set(), False))
    w = make_watcher()
    _write(w, "old/a.edf", os.urandom(10))
    _age(w.root / "old/a.edf", QUIET + SETTLED_AGE_S)
    assert w.rescan("old") == 1
    assert w.check_candidates(time.monotonic()) == 0
    assert _batched(w) == []
    assert w.check_candidates(time.monotonic() + QUIET + 1) == 1
    assert _batched(w) == ["old/a.edf"]


@pytest.mark.parametrize("settings", [{"mode": "polling"}, {"ready_on_close": False}])
def test_an_old_file_keeps_the_quiet_period_where_closes_are_not_the_signal(
        make_watcher: Callable[..., Watcher], settings: dict[str, Any]) -> None:
    w = make_watcher(**settings)
    _write(w, "old/a.edf", os.urandom(10))
    _age(w.root / "old/a.edf", QUIET + SETTLED_AGE_S)
    assert w.rescan("old") == 1
    assert w.check_candidates(time.monotonic()) == 0
    assert w.check_candidates(time.monotonic() + QUIET + 1) == 1


def test_a_tick_checks_a_bounded_number_of_due_candidates_and_the_rest_the_next(
        make_watcher: Callable[..., Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    from splash_flows.watcher import readiness

    monkeypatch.setattr(readiness, "CHECK_PER_TICK", 2)
    w = make_watcher()
    for i in range(5):
        _write(w, f"old/{i}.edf", os.urandom(10))
        _age(w.root / f"old/{i}.edf", QUIET + SETTLED_AGE_S)
    assert w.rescan("old") == 5
    now = time.monotonic()
    w._wake.clear()
    assert [w.check_candidates(now) for _ in range(4)] == [2, 2, 1, 0]
    assert w._wake.is_set()  # the loop was told to come back at once while more were due
    assert _batched(w) == [f"old/{i}.edf" for i in range(5)]
