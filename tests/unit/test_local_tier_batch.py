"""The batched verified copy: every file of a batch is written under a temporary name, made durable, verified
and only then renamed; a failure in any phase costs that file alone and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from splash_flows.errors import PathEscapeError, TransferError, VerificationError
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.local import PART_MARK, LocalTier
from tests.conftest import write_file


@pytest.fixture
def tiers(tmp_path: Path) -> tuple[LocalTier, LocalTier]:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    return (LocalTier("data733", tmp_path / "src", "xxh3_128"), LocalTier("lamarr", tmp_path / "dst", "xxh3_128"))


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if PART_MARK in p.name]


def _batch(src: LocalTier, n: int = 8) -> list[CopyItem]:
    for i in range(n):
        write_file(src.root, f"scan/f{i}.edf", os.urandom(3000 + i))
    return [CopyItem(f"scan/f{i}.edf") for i in range(n)]


def test_rename_only_after_the_file_is_durable_and_verified(tiers: tuple[LocalTier, LocalTier],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src)
    synced: set[int] = set()
    reread: set[int] = set()
    real_fsync, real_rename, real_hash = os.fsync, os.rename, LocalTier._hash_fd

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    def hash_fd(self: LocalTier, fd: int) -> str:
        ino = os.fstat(fd).st_ino
        if self is dst:
            assert ino in synced, "a copy was re-read for verification before it was durable"
            reread.add(ino)
        return real_hash(self, fd)

    def rename(a: str | Path, b: str | Path) -> None:
        ino = os.stat(a).st_ino
        assert ino in synced and ino in reread, f"{a} renamed before it was durable and verified"
        assert not os.path.exists(b)
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(LocalTier, "_hash_fd", hash_fd)
    out = dst.copy_from(src, items)
    assert all(isinstance(o, CopyResult) and not o.skipped for o in out)
    assert len(reread) == len(items)
    assert not _parts(dst.root)


def test_new_folders_are_synced_in_their_parents(tiers: tuple[LocalTier, LocalTier],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    write_file(src.root, "new/deep/a.edf", b"a")
    write_file(src.root, "new/deep/b.edf", b"b")
    dirs: list[str] = []
    real = LocalTier._fsync_dir
    monkeypatch.setattr(LocalTier, "_fsync_dir", staticmethod(lambda folder: (dirs.append(str(folder)),
                                                                              real(folder))[1]))
    out = dst.copy_from(src, [CopyItem("new/deep/a.edf"), CopyItem("new/deep/b.edf")])
    assert all(isinstance(o, CopyResult) for o in out)
    # once per folder: the files' folder, and the parent of each folder the batch created
    assert sorted(dirs) == sorted({str(dst.root / "new/deep"), str(dst.root / "new"), str(dst.root)})


def test_fsync_failure_costs_that_file_only(tiers: tuple[LocalTier, LocalTier],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src)
    real = os.fsync

    def fsync(fd: int) -> None:
        if "f3.edf" in _fd_path(fd):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = dst.copy_from(src, items)
    assert isinstance(out[3], TransferError) and "fsync failed: Input/output error" in str(out[3])
    assert "lamarr:scan/f3.edf" in str(out[3])
    assert all(isinstance(o, CopyResult) for i, o in enumerate(out) if i != 3)
    assert not (dst.root / "scan/f3.edf").exists()
    assert not _parts(dst.root)


def test_copy_changed_on_disk_before_reread_is_discarded(tiers: tuple[LocalTier, LocalTier],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src)
    real = os.fsync

    def fsync(fd: int) -> None:  # the device "loses" a byte of f5 between write and re-read
        real(fd)
        if "f5.edf" in _fd_path(fd) and PART_MARK in _fd_path(fd):
            with open(_fd_path(fd), "r+b") as fh:
                fh.write(b"\0")

    monkeypatch.setattr(os, "fsync", fsync)
    out = dst.copy_from(src, items)
    assert isinstance(out[5], VerificationError) and "copy discarded" in str(out[5])
    assert all(isinstance(o, CopyResult) for i, o in enumerate(out) if i != 5)
    assert not (dst.root / "scan/f5.edf").exists()
    assert not _parts(dst.root)


def test_rename_failure_costs_that_file_only(tiers: tuple[LocalTier, LocalTier],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src)
    real = os.rename

    def rename(a: str | Path, b: str | Path) -> None:
        if str(b).endswith("f1.edf"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    out = dst.copy_from(src, items)
    assert isinstance(out[1], TransferError) and "rename failed: No space left on device" in str(out[1])
    assert all(isinstance(o, CopyResult) for i, o in enumerate(out) if i != 1)
    assert not _parts(dst.root)


def test_folder_fsync_failure_fails_the_files_renamed_into_it(tiers: tuple[LocalTier, LocalTier],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src, 3)
    write_file(src.root, "other/x.edf", b"x")
    (dst.root / "other").mkdir()
    real = LocalTier._fsync_dir

    def fsync_dir(folder: Path) -> None:
        if folder.name == "scan":
            raise OSError(errno.EIO, "Input/output error")
        real(folder)

    monkeypatch.setattr(LocalTier, "_fsync_dir", staticmethod(fsync_dir))
    out = dst.copy_from(src, [*items, CopyItem("other/x.edf")])
    assert all(isinstance(o, TransferError) and "folder fsync failed" in str(o) for o in out[:3])
    assert isinstance(out[3], CopyResult)


def test_interrupted_batch_leaves_no_temporary_file_and_no_final_name(tiers: tuple[LocalTier, LocalTier],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    items = _batch(src)

    def boom(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalTier, "_verify_staged", boom)
    with pytest.raises(KeyboardInterrupt):
        dst.copy_from(src, items)
    assert not _parts(dst.root)
    assert not [p for p in dst.root.rglob("*.edf")]


def test_symlinked_source_inside_root_is_copied_outside_refused(tiers: tuple[LocalTier, LocalTier],
                                                                 tmp_path: Path) -> None:
    src, dst = tiers
    write_file(src.root, "real/a.edf", b"inside")
    os.symlink(src.root / "real/a.edf", src.root / "link.edf")
    (tmp_path / "secret").write_text("outside")
    os.mkdir(src.root / "d")
    os.symlink(tmp_path / "secret", src.root / "d" / "out.edf")
    os.symlink(tmp_path, src.root / "escape_dir")
    out = dst.copy_from(src, [CopyItem("link.edf"), CopyItem("d/out.edf"), CopyItem("escape_dir/secret")])
    assert isinstance(out[0], CopyResult) and (dst.root / "link.edf").read_bytes() == b"inside"
    assert isinstance(out[1], PathEscapeError)
    assert isinstance(out[2], PathEscapeError)
    assert not (dst.root / "d/out.edf").exists() and not (dst.root / "escape_dir").exists()


def test_symlink_at_destination_is_replaced_not_followed(tiers: tuple[LocalTier, LocalTier], tmp_path: Path) -> None:
    src, dst = tiers
    write_file(src.root, "a.edf", b"same bytes")
    (tmp_path / "elsewhere").write_bytes(b"same bytes")
    os.symlink(tmp_path / "elsewhere", dst.root / "a.edf")
    (res,) = dst.copy_from(src, [CopyItem("a.edf")])
    assert isinstance(res, CopyResult) and not res.skipped
    assert not (dst.root / "a.edf").is_symlink() and (dst.root / "a.edf").read_bytes() == b"same bytes"


def test_before_rename_is_asked_once_every_copy_is_durable_and_verified(tiers: tuple[LocalTier, LocalTier],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate a registration still committing uses: called after the last fsync and re-read, before any
    final name; what it releases is renamed, a path it lacks or holds with another checksum is discarded."""
    src, dst = tiers
    items = _batch(src, 4)
    synced: set[int] = set()
    reread: set[int] = set()
    real_fsync, real_hash = os.fsync, LocalTier._hash_fd

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    def hash_fd(self: LocalTier, fd: int) -> str:
        if self is dst:
            reread.add(os.fstat(fd).st_ino)
        return real_hash(self, fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(LocalTier, "_hash_fd", hash_fd)
    asked: list[int] = []

    def gate() -> dict[str, str]:
        parts = _parts(dst.root)
        assert len(parts) == 4 and not list(dst.root.rglob("f*.edf")), "a final name before the gate"
        assert {p.stat().st_ino for p in parts} <= synced & reread, "gate asked before durable and verified"
        asked.append(1)
        sums = {i.path: src.checksum(i.path) for i in items}
        sums["scan/f1.edf"] = "0" * 32          # registered with another checksum
        del sums["scan/f2.edf"]                  # not registered
        return sums

    out = dst.copy_from(src, items, before_rename=gate)
    assert asked == [1]
    assert [isinstance(o, CopyResult) for o in out] == [True, False, False, True]
    assert isinstance(out[1], TransferError) and "copy discarded" in str(out[1])
    assert sorted(p.name for p in dst.root.rglob("*.edf")) == ["f0.edf", "f3.edf"]
    assert not _parts(dst.root)


def test_a_failing_before_rename_leaves_no_final_name_and_no_part(tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    items = _batch(src, 3)

    def gate() -> dict[str, str]:
        raise RuntimeError("ledger transaction failed")

    with pytest.raises(RuntimeError, match="ledger transaction failed"):
        dst.copy_from(src, items, before_rename=gate)
    assert not _parts(dst.root)
    assert not list(dst.root.rglob("*.edf"))


def test_a_file_where_a_destination_folder_should_be_fails_that_folder_only(
        tiers: tuple[LocalTier, LocalTier]) -> None:
    src, dst = tiers
    write_file(src.root, "P/a.edf", b"a" * 10)
    write_file(src.root, "Q/b.edf", b"b" * 10)
    (dst.root / "Q").write_bytes(b"not a folder")
    out = dst.copy_from(src, [CopyItem("P/a.edf"), CopyItem("Q/b.edf")])
    assert isinstance(out[0], CopyResult)
    assert isinstance(out[1], TransferError) and "cannot list folder Q: Not a directory" in str(out[1])
    assert (dst.root / "P" / "a.edf").read_bytes() == b"a" * 10
