"""Permission errors, really exercised (issue 13 item 6). Run as root (as CI does), a mode-000 file is readable
and a mode-0555 folder writable, so these cases run in a child that dropped to ``nobody`` (tests/support/
unprivileged.py): the local tier's read and write errors, the move of a batch holding an unreadable file, and the
watcher's line for a file it cannot read each name the tier and the file while the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from splash_flows.config import Config, default_config_data, load_config_file
from splash_flows.context import build_context
from splash_flows.errors import TransferError
from splash_flows.ledger import Ledger
from splash_flows.services.move import move_files
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.local import LocalTier
from splash_flows.watcher import Watcher
from tests.fakes.trigger import FakeTrigger
from tests.support.unprivileged import run_unprivileged, unprivileged_dir
from tests.support.watching import wait_for

FAST = {"quiet_period_s": 0.2, "batch_window_s": 0.2, "poll_interval_s": 0.1, "outbox_replay_interval_s": 0.1,
        "rescan_interval_s": 600.0}  # as tests/watcher/conftest.py


def _tiers(root: Path) -> tuple[LocalTier, LocalTier]:
    (root / "src").mkdir(exist_ok=True)
    (root / "dst").mkdir(exist_ok=True)
    return LocalTier("data733", root / "src", "xxh3_128"), LocalTier("lamarr", root / "dst", "xxh3_128")


def _outcomes(out: list[Any]) -> list[tuple[str, str]]:
    return [(type(o).__name__, str(o) if not isinstance(o, CopyResult) else o.path) for o in out]


def _copy_an_unreadable_file(root: Path) -> dict[str, Any]:
    src, dst = _tiers(root)
    for name in ("a.edf", "locked.edf", "z.edf"):
        (src.root / name).write_bytes(name.encode() * 100)
    (src.root / "locked.edf").chmod(0)
    out = dst.copy_from(src, [CopyItem("a.edf"), CopyItem("locked.edf"), CopyItem("z.edf")])
    return {"uid": os.geteuid(), "out": _outcomes(out), "is_transfer_error": isinstance(out[1], TransferError),
            "dst": sorted(p.name for p in dst.root.iterdir())}


def _copy_into_a_read_only_folder(root: Path) -> dict[str, Any]:
    src, dst = _tiers(root)
    (src.root / "scan").mkdir()
    (src.root / "scan" / "a.edf").write_bytes(b"a" * 100)
    (src.root / "b.edf").write_bytes(b"b" * 100)
    (dst.root / "scan").mkdir()
    (dst.root / "scan").chmod(0o555)
    out = dst.copy_from(src, [CopyItem("scan/a.edf"), CopyItem("b.edf")])
    return {"uid": os.geteuid(), "out": _outcomes(out), "is_transfer_error": isinstance(out[0], TransferError),
            "left": sorted(p.name for p in (dst.root / "scan").iterdir())}


def _site(root: Path) -> Config:
    data = default_config_data(root / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    data["watcher"] = dict(FAST)
    (root / "splash.yaml").write_text(yaml.safe_dump(data))
    return load_config_file(root / "splash.yaml", {})


def _move_a_batch_with_an_unreadable_file(root: Path) -> dict[str, Any]:
    config = _site(root)
    source = Path(config.tiers["data733"].root)
    for name in ("a.edf", "locked.edf"):
        (source / name).write_bytes(name.encode() * 100)
    (source / "locked.edf").chmod(0)
    ctx = build_context(config)
    try:
        report = move_files(ctx, ["a.edf", "locked.edf"])
        return {"uid": os.geteuid(), "failures": {k: str(v) for k, v in report.failures().items()},
                "verified": report.verified_everywhere()}
    finally:
        ctx.close()


def test_a_file_the_tier_cannot_read_is_one_error_naming_it(tmp_path: Path) -> None:
    with unprivileged_dir() as root:
        result = run_unprivileged(_copy_an_unreadable_file, root)
    assert result["uid"] != 0
    (ok_a, locked, ok_z) = result["out"]
    assert ok_a == ("CopyResult", "a.edf") and ok_z == ("CopyResult", "z.edf")
    assert result["is_transfer_error"], locked
    assert "data733:locked.edf" in locked[1] and "Permission denied" in locked[1] and "\n" not in locked[1]
    assert result["dst"] == ["a.edf", "z.edf"]  # nothing under the locked file's name, no partial


def test_a_folder_the_tier_cannot_write_is_one_error_naming_it(tmp_path: Path) -> None:
    with unprivileged_dir() as root:
        result = run_unprivileged(_copy_into_a_read_only_folder, root)
    assert result["uid"] != 0
    (refused, ok) = result["out"]
    assert ok == ("CopyResult", "b.edf")
    assert result["is_transfer_error"], refused
    assert "lamarr:scan/a.edf" in refused[1] and "Permission denied" in refused[1] and "\n" not in refused[1]
    assert result["left"] == []


def test_a_batch_with_an_unreadable_file_moves_the_rest(tmp_path: Path) -> None:
    with unprivileged_dir() as warm:  # load every module the move needs while we may still read them all
        _move_a_batch_with_an_unreadable_file(warm)
    with unprivileged_dir() as root:
        result = run_unprivileged(_move_a_batch_with_an_unreadable_file, root)
    assert result["uid"] != 0
    assert result["verified"] == ["a.edf"]
    (line,) = result["failures"].values()
    assert "locked.edf" in line and "Permission denied" in line and "\n" not in line


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _watch_an_unreadable_file(root: Path) -> dict[str, Any]:
    config = _site(root)
    source = Path(config.tiers["data733"].root)
    lines = _Lines()
    logger = logging.getLogger("splash_flows.watcher")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    ledger = Ledger.open(config.ledger.url_value())
    trigger = FakeTrigger()
    watcher = Watcher(config, ledger, trigger)
    watcher.start()
    try:
        (source / "scan").mkdir()
        locked = source / "scan" / "locked.edf"
        locked.write_bytes(b"frame")
        locked.chmod(0)
        wait_for(lambda: "scan/locked.edf" in trigger.sent_paths(), "the locked file to be sent", timeout=30)
    finally:
        watcher.stop()
        ledger.close()
        logger.removeHandler(lines)
        logger.setLevel(old_level)
    return {"uid": os.geteuid(), "lines": lines.lines, "fatal": repr(watcher.fatal)}


def test_the_watcher_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with unprivileged_dir() as warm:
        as_me = _watch_an_unreadable_file(warm)
    with unprivileged_dir() as root:
        result = run_unprivileged(_watch_an_unreadable_file, root)
    assert result["uid"] != 0 and result["fatal"] == "None"
    unreadable = [ln for ln in result["lines"] if "not readable" in ln]
    assert len(unreadable) == 1 and "data733:scan/locked.edf" in unreadable[0], result["lines"]
    if os.geteuid() == 0:  # the line exists only because the child really could not read the file
        assert not [ln for ln in as_me["lines"] if "not readable" in ln]


def _readable_answers(root: str) -> list[tuple[str, bool, bool]]:
    from splash_flows.watcher.readiness import _readable

    out = []
    for mode in (0o000, 0o200, 0o400, 0o040, 0o004, 0o644, 0o600):
        path = os.path.join(root, f"m{mode:o}")
        with open(path, "wb") as fh:
            fh.write(b"x")
        os.chmod(path, mode)
        out.append((f"{mode:o}", _readable(os.lstat(path), path), os.access(path, os.R_OK)))
    return out


def test_the_watchers_read_check_agrees_with_access_for_its_own_files(tmp_path: Path) -> None:
    """A backfill asks "can the watcher read this?" of every file it accepts; for its own files the owner's mode
    bit answers without a system call, and must answer as ``access`` does."""
    with unprivileged_dir() as root:
        answers = run_unprivileged(_readable_answers, str(root))
    assert [(m, fast) for m, fast, _ in answers] == [(m, slow) for m, _, slow in answers]
    assert not dict((m, fast) for m, fast, _ in answers)["0"]
