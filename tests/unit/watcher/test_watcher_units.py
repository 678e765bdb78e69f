"""Watcher pieces without threads: configuration, name filtering, and the /proc writer check."""

from __future__ import annotations

from pathlib import Path

import pytest

from splash_flows.config import Config, WatcherConfig, parse_config
from splash_flows.errors import ConfigError, TierError
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher, files_open_for_writing
from tests.fakes.trigger import FakeTrigger


def test_watcher_defaults() -> None:
    w = WatcherConfig()
    assert (w.mode, w.quiet_period_s, w.batch_window_s, w.rescan_interval_s) == ("inotify", 2.0, 1.0, 600.0)
    assert w.deployment == "dispatcher/run_733_dispatcher"
    assert set(w.ignore_patterns) >= {".*", "*.tmp", "*.part", "*~", "*.swp"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("mode", "fanotify", "watcher.mode"),
    ("deployment", "no-slash", "flow name/deployment name"),
    ("quiet_period_s", -1, "watcher.quiet_period_s"),
    ("max_batch_files", 0, "watcher.max_batch_files"),
    ("typo_key", 1, "watcher.typo_key"),
])
def test_bad_watcher_settings_are_refused_naming_the_key(sqlite_config: Config, key: str, value: object,
                                                         message: str) -> None:
    data = sqlite_config.model_dump(mode="json", exclude={"source_path"})
    data["ledger"]["url"] = sqlite_config.ledger.url_value()
    data["watcher"] = {key: value}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, source="test.yaml", base=Path("."), environ={})


def test_watcher_section_loads_from_yaml(sqlite_config: Config) -> None:
    data = sqlite_config.model_dump(mode="json", exclude={"source_path"})
    data["ledger"]["url"] = sqlite_config.ledger.url_value()
    data["watcher"] = {"mode": "polling", "poll_interval_s": 5, "ignore_patterns": ["*.lock"]}
    cfg = parse_config(data, source="test.yaml", base=Path("."), environ={})
    assert cfg.watcher.mode == "polling" and cfg.watcher.poll_interval_s == 5
    assert cfg.watcher.ignore_patterns == ["*.lock"]


def test_relpath_applies_ignore_patterns_to_every_component(sqlite_config: Config) -> None:
    ledger = Ledger.open(sqlite_config.ledger.url_value())
    try:
        w = Watcher(sqlite_config, ledger, FakeTrigger())
        root = str(w.root)
        assert w.relpath(f"{root}/scan 1/frame ü.edf") == "scan 1/frame ü.edf"
        assert w.relpath(f"{root}/scan/.hidden") is None
        assert w.relpath(f"{root}/.snapshot/scan/frame.edf") is None
        assert w.relpath(f"{root}/scan/frame.edf.tmp") is None
        assert w.relpath(f"{root}/scan/frame.edf~") is None
        assert w.relpath(f"{root}x/scan/frame.edf") is None  # a sibling folder sharing the prefix
        assert w.relpath("/elsewhere/frame.edf") is None
    finally:
        ledger.close()


def test_watcher_refuses_a_missing_root(sqlite_config: Config) -> None:
    ledger = Ledger.open(sqlite_config.ledger.url_value())
    try:
        Path(sqlite_config.tiers["data733"].root).rmdir()
        w = Watcher(sqlite_config, ledger, FakeTrigger())
        with pytest.raises(TierError, match="does not exist"):
            w.start()
    finally:
        ledger.close()


def test_files_open_for_writing_sees_our_own_writer(tmp_path: Path) -> None:
    written = tmp_path / "open for writing.edf"
    read_only = tmp_path / "read.edf"
    read_only.write_bytes(b"r")
    with open(written, "wb") as fh, open(read_only, "rb"):
        fh.write(b"partial")
        found = files_open_for_writing([written, read_only])
        assert found == {str(written.resolve())}
    assert files_open_for_writing([written, read_only]) == set()
