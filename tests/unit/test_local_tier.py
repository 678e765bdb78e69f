"""The verified local copy: temp name + fsync + rename, checksum both sides, skip when already there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splash_flows.checksum import hash_file
from splash_flows.errors import (
    PathEscapeError,
    SourceChangedError,
    SourceMissingError,
    TierError,
    TransferError,
)
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.local import PART_MARK, LocalTier
from tests.conftest import write_file


@pytest.fixture
def tiers(tmp_path: Path) -> tuple[LocalTier, LocalTier]:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    return (LocalTier("data733", tmp_path / "src", "xxh3_128"), LocalTier("lamarr", tmp_path / "dst", "xxh3_128"))


def test_copy_keeps_path_mtime_and_verifies(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    p = write_file(src.root, "ALS-1/2024 scan ü/a.edf", os.urandom(5_000_000))
    os.utime(p, (1_700_000_000, 1_700_000_000))
    (res,) = dst.copy_from(src, [CopyItem("ALS-1/2024 scan ü/a.edf")])
    assert isinstance(res, CopyResult) and not res.skipped
    out = dst.root / "ALS-1/2024 scan ü/a.edf"
    assert out.read_bytes() == p.read_bytes()
    assert os.stat(out).st_mtime == 1_700_000_000
    assert res.checksum == res.source_checksum == hash_file(p, "xxh3_128")
    assert not [f for f in os.listdir(out.parent) if PART_MARK in f]


def test_second_copy_is_skipped(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    write_file(src.root, "a", b"x" * 1000)
    dst.copy_from(src, [CopyItem("a")])
    before = os.stat(dst.root / "a").st_ino
    (res,) = dst.copy_from(src, [CopyItem("a")])
    assert isinstance(res, CopyResult) and res.skipped
    assert os.stat(dst.root / "a").st_ino == before


def test_wrong_destination_is_replaced(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    write_file(src.root, "a", b"good" * 100)
    write_file(dst.root, "a", b"bad!" * 100)  # same size, other bytes
    (res,) = dst.copy_from(src, [CopyItem("a")])
    assert isinstance(res, CopyResult) and not res.skipped
    assert (dst.root / "a").read_bytes() == b"good" * 100


def test_batch_goes_on_past_bad_items(tiers: tuple[LocalTier, LocalTier], tmp_path: Path) -> None:
    src, dst = tiers
    write_file(src.root, "ok1", b"1")
    write_file(src.root, "ok2", b"2")
    (tmp_path / "outside").write_text("secret")
    os.symlink(tmp_path / "outside", src.root / "escape")
    locked = write_file(src.root, "locked", b"3")
    locked.chmod(0)
    items = [CopyItem("ok1"), CopyItem("missing"), CopyItem("../x"), CopyItem("escape"), CopyItem("locked"),
             CopyItem("ok2")]
    out = dst.copy_from(src, items)
    assert isinstance(out[0], CopyResult) and isinstance(out[5], CopyResult)
    assert isinstance(out[1], SourceMissingError) and "data733:missing" in str(out[1])
    assert isinstance(out[2], PathEscapeError)
    assert isinstance(out[3], PathEscapeError)
    if os.geteuid() != 0:  # root reads mode-000 files
        assert isinstance(out[4], TransferError)
    assert not (dst.root / "escape").exists()


def test_source_not_matching_ledger_checksum_is_refused(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    write_file(src.root, "a", b"new bytes")
    (res,) = dst.copy_from(src, [CopyItem("a", checksum="0" * 32)])
    assert isinstance(res, SourceChangedError)
    assert not (dst.root / "a").exists()
    assert not list(dst.root.iterdir())  # no partial left either


def test_corrupting_write_is_detected_and_leaves_no_final_name(tiers: tuple[LocalTier, LocalTier],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    write_file(src.root, "a", b"abc" * 1000)
    real_write = os.write

    def flipping_write(fd: int, data: bytes | memoryview) -> int:
        data = bytes(data)
        return real_write(fd, bytes([data[0] ^ 1]) + data[1:])

    monkeypatch.setattr(os, "write", flipping_write)
    (res,) = dst.copy_from(src, [CopyItem("a")])
    assert isinstance(res, TierError) and "lamarr:a" in str(res) and "checksum" in str(res)
    assert not (dst.root / "a").exists()
    assert not [f for f in os.listdir(dst.root)]


def test_stale_part_from_dead_process_is_removed(tiers: tuple[LocalTier, LocalTier]) -> None:
    from splash_flows.tiers.local import _hostname

    src, dst = tiers
    write_file(src.root, "d/a", b"x")
    (dst.root / "d").mkdir()
    dead = dst.root / "d" / f".a{PART_MARK}{_hostname()}-999999999-abcd.part"
    alive = dst.root / "d" / f".a{PART_MARK}{_hostname()}-{os.getpid()}-abcd.part"
    dead.write_text("partial")
    alive.write_text("partial")
    dst.copy_from(src, [CopyItem("d/a")])
    assert not dead.exists() and alive.exists()
    assert [s.path for s in dst.walk()] == ["d/a"]  # parts are never listed


def test_delete_removes_empty_folders_only_inside_root(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, _ = tiers
    write_file(src.root, "a/b/c.edf", b"1")
    write_file(src.root, "a/keep.txt", b"2")
    assert src.delete(["a/b/c.edf"]) == [None]
    assert not (src.root / "a/b").exists() and (src.root / "a/keep.txt").exists()
    (err,) = src.delete(["a/b/c.edf"])
    assert err is not None and "not found" in str(err)
    (esc,) = src.delete(["../x"])
    assert isinstance(esc, PathEscapeError)
    assert src.root.exists()


def test_copy_from_unsupported_kind(tiers: tuple[LocalTier, LocalTier]) -> None:
    _, dst = tiers

    class Other:
        name, kind, checksum_alg = "x", "globus", "xxh3_128"

    with pytest.raises(TierError, match="cannot copy from a globus tier"):
        dst.copy_from(Other(), [CopyItem("a")])  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o444, 0o755])
def test_copy_keeps_the_source_permission_bits(tiers: tuple[LocalTier, LocalTier], mode: int) -> None:
    """Issue 9 item 7: as ``cp -p`` and Globus do (a 0640 file arrived as 0644)."""
    src, dst = tiers
    p = write_file(src.root, "P/a.edf", os.urandom(1000))
    p.chmod(mode)
    (res,) = dst.copy_from(src, [CopyItem("P/a.edf")])
    assert isinstance(res, CopyResult) and not res.skipped
    assert os.stat(dst.root / "P/a.edf").st_mode & 0o7777 == mode


def test_a_copy_already_there_gets_the_source_permission_bits(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    p = write_file(src.root, "P/a.edf", b"same bytes")
    p.chmod(0o640)
    q = write_file(dst.root, "P/a.edf", b"same bytes")
    q.chmod(0o666)
    (res,) = dst.copy_from(src, [CopyItem("P/a.edf")])
    assert isinstance(res, CopyResult) and res.skipped
    assert os.stat(q).st_mode & 0o7777 == 0o640


def test_permission_bits_are_configurable_per_tier(tmp_path: Path) -> None:
    from splash_flows.config import default_config
    from splash_flows.context import build_tier

    cfg = default_config(tmp_path / "site")
    lamarr = cfg.tiers["lamarr"].model_copy(update={"preserve_mode": False})
    cfg = cfg.model_copy(update={"tiers": {**cfg.tiers, "lamarr": lamarr}})
    for tier in cfg.tiers.values():
        Path(tier.root).mkdir(parents=True, exist_ok=True)
    src, plain, keeping = (build_tier(n, cfg) for n in ("data733", "lamarr", "cfs"))
    assert isinstance(src, LocalTier) and isinstance(plain, LocalTier) and isinstance(keeping, LocalTier)
    p = write_file(src.root, "a.edf", b"x" * 100)
    p.chmod(0o640)
    umask = os.umask(0o022)
    try:
        plain.copy_from(src, [CopyItem("a.edf")])
        keeping.copy_from(src, [CopyItem("a.edf")])
    finally:
        os.umask(umask)
    assert os.stat(plain.root / "a.edf").st_mode & 0o7777 == 0o644
    assert os.stat(keeping.root / "a.edf").st_mode & 0o7777 == 0o640
