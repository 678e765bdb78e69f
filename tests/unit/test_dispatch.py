"""Dispatcher input validation without Prefect: what is refused, why, and that the rest goes on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.errors import ExportControlledError, PathEscapeError, SourceMissingError, TierError
from splash_flows.ledger import EventKind, Ledger
from splash_flows.services.dispatch import export_control_match, is_export_control, validate_batch
from tests.conftest import write_file


@pytest.mark.parametrize(("path", "patterns", "expected"), [
    ("ALS/2024/scan.edf", [], None),
    ("ALS/2024/scan.edf", ["*.edf"], "*.edf"),
    ("restricted/a/b/scan.edf", ["restricted"], "restricted"),
    ("restricted/a/b/scan.edf", ["/restricted/"], "/restricted/"),
    ("x/ITAR/scan.edf", ["*/ITAR"], "*/ITAR"),
    ("x/itar/scan.edf", ["*/ITAR"], None),
    ("open/restricted.txt", ["restricted"], None),
    ("p/secret_1.edf", ["nothing", "p/secret_*"], "p/secret_*"),
])
def test_export_control_patterns(path: str, patterns: list[str], expected: str | None) -> None:
    assert export_control_match(path, patterns) == expected
    assert is_export_control(path, patterns) is (expected is not None)


@pytest.fixture
def ectx(config: Config) -> Iterator[Context]:
    """A context whose configuration marks ``restricted/`` and ``*.itar`` export-controlled."""
    move = config.move.model_copy(update={"export_control_patterns": ["restricted", "*.itar"]})
    cfg = config.model_copy(update={"move": move})
    context = Context(config=cfg, ledger=Ledger.open(cfg.ledger.url_value()))
    yield context
    context.close()


def data(ctx: Context) -> Path:
    return Path(ctx.config.tiers["data733"].root)


def test_valid_and_refused_are_split_and_every_refusal_is_recorded(ectx: Context, tmp_path: Path) -> None:
    root = data(ectx)
    write_file(root, "ALS-1/scan 001 é.edf", b"x" * 10)
    write_file(root, "ALS-1/empty.edf", b"")
    write_file(root, "restricted/a.edf", b"r")
    write_file(root, "ALS-1/b.itar", b"i")
    (root / "ALS-1" / "folder").mkdir()
    (tmp_path / "outside.edf").write_bytes(b"o")
    os.symlink(tmp_path / "outside.edf", root / "ALS-1" / "out-link.edf")
    os.symlink(root / "restricted" / "a.edf", root / "ALS-1" / "inner-link.edf")
    os.symlink(root / "ALS-1" / "empty.edf", root / "ALS-1" / "ok-link.edf")
    paths = ["ALS-1/scan 001 é.edf", "./ALS-1/empty.edf", "ALS-1/empty.edf", "restricted/a.edf", "ALS-1/b.itar",
             "ALS-1/folder", "ALS-1/gone.edf", "../etc/passwd", "/etc/passwd", "ALS-1/out-link.edf",
             "ALS-1/inner-link.edf", "ALS-1/ok-link.edf", ""]
    report = validate_batch(ectx, paths)
    assert report.valid == ["ALS-1/scan 001 é.edf", "ALS-1/empty.edf", "ALS-1/ok-link.edf"]
    kinds = {p: type(e) for p, e in report.refused.items()}
    assert kinds == {
        "restricted/a.edf": ExportControlledError, "ALS-1/b.itar": ExportControlledError,
        "ALS-1/folder": TierError, "ALS-1/gone.edf": SourceMissingError, "../etc/passwd": PathEscapeError,
        "/etc/passwd": PathEscapeError, "ALS-1/out-link.edf": PathEscapeError,
        "ALS-1/inner-link.edf": ExportControlledError, "": PathEscapeError,
    }
    assert "matches pattern 'restricted'" in str(report.refused["restricted/a.edf"])
    gone = str(report.refused["ALS-1/gone.edf"])
    assert gone == f"data733:ALS-1/gone.edf: refused: file not found (looked in {root})"  # the root it used
    assert "not a regular file" in str(report.refused["ALS-1/folder"])
    events = ectx.ledger.events(kind=EventKind.REFUSED)
    assert sorted(e.path or "" for e in events) == sorted(report.refused)
    for event in events:
        assert event.tier == "data733"
        assert event.detail["reason"] == str(report.refused[event.path or ""])
        assert "\n" not in event.detail["reason"]
    assert report.refusal_lines() == [str(e) for e in report.refused.values()]


def test_nothing_to_refuse_records_nothing(ectx: Context) -> None:
    write_file(data(ectx), "a.edf", b"a")
    report = validate_batch(ectx, ["a.edf"])
    assert report.valid == ["a.edf"] and report.refused == {}
    assert ectx.ledger.events(kind=EventKind.REFUSED) == []

