"""Watcher fixtures: a configuration with short quiet periods, a started watcher with a fake trigger, and a
"barrier" that proves the pipeline drained (a fresh file was written, became ready and was sent)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher, WatchEvent
from tests.fakes.trigger import FakeTrigger
from tests.support.watching import wait_for

# batch_idle_s 0: a folder's files make one batch however slowly a loaded machine writes them (the idle rule has
# its own tests in tests/unit/watcher/test_ready_on_close.py)
FAST = {"quiet_period_s": 0.2, "batch_window_s": 0.2, "poll_interval_s": 0.1, "outbox_replay_interval_s": 0.1,
        "rescan_interval_s": 600.0, "batch_idle_s": 0.0}


def with_watcher(config: Config, **settings: Any) -> Config:
    """``config`` with watcher settings changed (frozen models: a copy)."""
    return config.model_copy(update={"watcher": config.watcher.model_copy(update=settings)})


class Recorder:
    """Collects WatchEvents from the watcher's hook (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[WatchEvent] = []

    def __call__(self, event: WatchEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: str) -> list[WatchEvent]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


class Harness:
    """A watcher under test with its fake trigger, event recorder and data root."""

    _barrier_ids = itertools.count()

    def __init__(self, config: Config, ledger: Ledger, trigger: FakeTrigger) -> None:
        self.config = config
        self.ledger = ledger
        self.trigger = trigger
        self.events = Recorder()
        self.root = Path(config.tiers[config.move.source].root)
        self.watcher = Watcher(config, ledger, trigger, hook=self.events)

    def sent_count(self, rel: str) -> int:
        return self.trigger.sent_paths().count(rel)

    def wait_sent(self, *rels: str, timeout: float = 30.0) -> None:
        wait_for(lambda: all(self.sent_count(r) for r in rels), f"{', '.join(rels)} to be sent", timeout=timeout)

    def barrier(self) -> None:
        """Write a new file in its own folder and wait until it is sent: everything detected before it has had
        its chance to be sent too (same readiness rules, same sender queue)."""
        rel = f"zz_barrier/b{next(self._barrier_ids)}.edf"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"barrier")
        self.wait_sent(rel)


@pytest.fixture
def watch_config(sqlite_config: Config) -> Config:
    return with_watcher(sqlite_config, **FAST)


@pytest.fixture
def ctx_sqlite(watch_config: Config) -> Iterator[Context]:
    """A move context on the same SQLite ledger and tiers as ``watch_config`` (to verify files for real)."""
    context = Context(config=watch_config, ledger=Ledger.open(watch_config.ledger.url_value()))
    yield context
    context.close()


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``make_harness(config, trigger=None, start=True)``: a started watcher, stopped at teardown."""
    made: list[Harness] = []
    ledgers: list[Ledger] = []

    def make(config: Config, trigger: FakeTrigger | None = None, start: bool = True) -> Harness:
        ledger = Ledger.open(config.ledger.url_value())
        ledgers.append(ledger)
        h = Harness(config, ledger, trigger or FakeTrigger())
        made.append(h)
        if start:
            h.watcher.start()
        return h

    yield make
    for h in made:
        h.watcher.stop()
        assert h.watcher.fatal is None, f"a watcher thread crashed: {h.watcher.fatal!r}"
    for ledger in ledgers:
        ledger.close()
