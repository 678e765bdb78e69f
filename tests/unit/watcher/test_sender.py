"""The sender does not wait for the ledger record of one accepted batch before sending the next (issue 14 item
1): on a SQLite ledger that record waits for the write lock a burst's flow runs hold. Driven with the sender's
threads only and a ``mark_sent`` held on an event (no clock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from splash_flows.config import Config
from splash_flows.errors import LedgerError
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher
from tests.fakes.trigger import FakeTrigger


@pytest.fixture
def watcher(sqlite_config: Config) -> Iterator[Watcher]:
    ledger = Ledger.open(sqlite_config.ledger.url_value())
    w = Watcher(sqlite_config, ledger, FakeTrigger())
    yield w
    ledger.close()


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _start(w: Watcher) -> list[threading.Thread]:
    threads = [threading.Thread(target=w._sender, daemon=True), threading.Thread(target=w._marker, daemon=True)]
    for t in threads:
        t.start()
    return threads


def _stop(w: Watcher, threads: list[threading.Thread]) -> None:
    w._stop.set()
    with w._send_cv:
        w._send_cv.notify_all()
    with w._mark_cv:
        w._mark_cv.notify_all()
    for t in threads:
        t.join(10)
    w.drain_marks()


def test_the_next_batch_is_sent_while_the_previous_one_is_being_recorded(
        watcher: Watcher, monkeypatch: pytest.MonkeyPatch) -> None:
    trigger = watcher.trigger
    assert isinstance(trigger, FakeTrigger)
    held = threading.Event()
    mark_sent = watcher.outbox.mark_sent

    def slow_mark(entry_id: int, run_id: str) -> None:
        held.wait(30)  # as a write waiting for the ledger's lock
        mark_sent(entry_id, run_id)

    monkeypatch.setattr(watcher.outbox, "mark_sent", slow_mark)
    watcher.outbox.add(watcher.settings.deployment, ["a/1.edf"])
    watcher.outbox.add(watcher.settings.deployment, ["a/2.edf"])
    threads = _start(watcher)
    try:
        _wait(lambda: len(trigger.runs_snapshot()) == 2, "both batches triggered while the first is unrecorded")
        assert watcher.outbox.counts().get("sent", 0) == 0
        held.set()
        _wait(lambda: watcher.outbox.counts().get("sent", 0) == 2, "both recorded as sent")
    finally:
        held.set()
        _stop(watcher, threads)
    assert [c[0] for c in trigger.calls] == [("a/1.edf",), ("a/2.edf",)]  # in order, each once


def test_a_failed_record_releases_the_entry_which_is_triggered_again_as_the_same_run(
        watcher: Watcher, monkeypatch: pytest.MonkeyPatch) -> None:
    trigger = watcher.trigger
    assert isinstance(trigger, FakeTrigger)
    failures = [LedgerError("database is locked")]
    mark_sent = watcher.outbox.mark_sent

    def flaky_mark(entry_id: int, run_id: str) -> None:
        if failures:
            raise failures.pop()
        mark_sent(entry_id, run_id)

    monkeypatch.setattr(watcher.outbox, "mark_sent", flaky_mark)
    watcher.outbox.add(watcher.settings.deployment, ["b/1.edf"])
    threads = _start(watcher)
    try:
        _wait(lambda: watcher.outbox.counts().get("sent", 0) == 1, "the entry recorded as sent")
    finally:
        _stop(watcher, threads)
    assert len(trigger.calls) == 2 and trigger.calls[0] == trigger.calls[1]  # the same key twice
    assert len(trigger.runs_snapshot()) == 1  # one run: the key's
