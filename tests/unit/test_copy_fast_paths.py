"""The bare copy's per-batch shortcuts keep every guarantee: registration's one-open-per-file fingerprint answers
as ``stat`` + ``checksum`` + ``stat`` did, the batch's thread map keeps order and stops on an error, ``syncfs``
never replaces a file's own fsync, and a process killed after its copies were durable and verified but before
any rename leaves no final name and no verified ledger row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from splash_flows.checksum import hash_file
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import build_context
from splash_flows.errors import PathEscapeError, SourceChangedError, SourceMissingError, TierError
from splash_flows.services.move import identify, move_files
from splash_flows.tiers import local as local_mod
from splash_flows.tiers.base import CopyItem, CopyResult, FileStat, Fingerprint
from splash_flows.tiers.local import PART_MARK, LocalTier
from tests.conftest import write_file


@pytest.fixture
def tiers(tmp_path: Path) -> tuple[LocalTier, LocalTier]:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    return (LocalTier("data733", tmp_path / "src", "xxh3_128"), LocalTier("lamarr", tmp_path / "dst", "xxh3_128"))


class _PlainTier:
    """The source tier seen only through the generic ``Tier`` calls (no ``LocalTier.identify``)."""

    def __init__(self, tier: LocalTier) -> None:
        self._tier = tier
        self.name, self.kind, self.checksum_alg = tier.name, "plain", tier.checksum_alg

    def stat(self, path: str) -> FileStat | None:
        return self._tier.stat(path)

    def checksum(self, path: str) -> str:
        return self._tier.checksum(path)


def _odd_source(src: LocalTier, tmp_path: Path) -> list[str]:
    write_file(src.root, "a/one.edf", b"one")
    write_file(src.root, "a/empty.edf", b"")
    write_file(src.root, "b/big.edf", os.urandom(300_000))  # larger than the small read buffer
    os.symlink(src.root / "a/one.edf", src.root / "a/link.edf")
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", src.root / "a/out.edf")
    os.symlink(tmp_path, src.root / "escape")
    os.mkfifo(src.root / "a/fifo")
    os.mkdir(src.root / "a/folder")
    return ["a/one.edf", "a/empty.edf", "b/big.edf", "a/link.edf", "a/out.edf", "escape/secret", "a/fifo",
            "a/folder", "a/missing.edf", "../up.edf", "a//one.edf"]


def _shape(out: Fingerprint | TierError) -> object:
    return out if isinstance(out, Fingerprint) else (type(out).__name__, out.path)


def test_identify_answers_as_stat_checksum_stat(tiers: tuple[LocalTier, LocalTier], tmp_path: Path) -> None:
    src, _ = tiers
    paths = _odd_source(src, tmp_path)
    clean = [p.replace("//", "/") for p in paths if not p.startswith("..")]
    fast = src.identify(clean)
    generic = identify(_PlainTier(src), clean, {}, 4)  # type: ignore[arg-type]
    assert [_shape(o) for o in fast] == [_shape(o) for o in generic]
    by_path = dict(zip(clean, fast, strict=True))
    big = src.stat("b/big.edf")
    assert big is not None
    assert by_path["b/big.edf"] == Fingerprint(big, hash_file(src.root / "b/big.edf", "xxh3_128"))
    assert isinstance(by_path["a/link.edf"], Fingerprint)  # a symlink inside the root is its target
    assert isinstance(by_path["a/out.edf"], PathEscapeError) and isinstance(by_path["escape/secret"], PathEscapeError)
    assert isinstance(by_path["a/fifo"], TierError) and "not a regular file" in str(by_path["a/fifo"])  # no hang
    assert isinstance(by_path["a/missing.edf"], SourceMissingError)
    assert isinstance(src.identify(["../up.edf"])[0], PathEscapeError)


def test_identify_does_not_read_a_known_version(tiers: tuple[LocalTier, LocalTier],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = tiers
    write_file(src.root, "a.edf", b"a")
    write_file(src.root, "b.edf", b"b")
    st = src.stat("a.edf")
    assert st is not None
    read: list[int] = []
    real = LocalTier._hash_fd
    monkeypatch.setattr(LocalTier, "_hash_fd", lambda self, fd: (read.append(fd), real(self, fd))[1])
    a, b = src.identify(["a.edf", "b.edf"], {"a.edf": (st.size, st.mtime), "b.edf": (99, 0.0)})
    assert a == Fingerprint(st, None)
    assert isinstance(b, Fingerprint) and b.checksum is not None
    assert len(read) == 1


def test_identify_refuses_a_file_written_while_it_is_read(tiers: tuple[LocalTier, LocalTier],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = tiers
    write_file(src.root, "growing.edf", b"first part")
    real = LocalTier._hash_fd

    def hash_then_append(self: LocalTier, fd: int) -> str:
        out = real(self, fd)
        with open(src.root / "growing.edf", "ab") as fh:
            fh.write(b" and more")
        return out

    monkeypatch.setattr(LocalTier, "_hash_fd", hash_then_append)
    (out,) = src.identify(["growing.edf"])
    assert isinstance(out, SourceChangedError) and "changed while it was being checksummed" in str(out)


def test_identify_on_a_missing_root_names_the_root_for_every_file(tmp_path: Path) -> None:
    gone = LocalTier("data733", tmp_path / "not-mounted", "xxh3_128")
    out = identify(gone, ["a.edf", "b.edf"], {}, 4)
    assert all(isinstance(o, TierError) and "does not exist" in str(o) for o in out) and len(out) == 2


def test_the_batch_map_keeps_order_and_stops_handing_out_work_after_an_error() -> None:
    assert LocalTier._map(lambda i: i * i, list(range(200)), 8, "t") == [i * i for i in range(200)]
    started: list[int] = []
    lock = threading.Lock()

    def fn(i: int) -> int:
        with lock:
            started.append(i)
        if i == 3:
            raise OSError("boom")
        return i

    with pytest.raises(OSError, match="boom"):
        LocalTier._map(fn, list(range(1000)), 4, "t")
    assert len(started) < 1000  # the threads stopped taking items; every one had ended before the raise
    assert not [t for t in threading.enumerate() if t.name.startswith("t_")]


def test_syncfs_flushes_a_batch_but_every_file_is_still_fsynced(tiers: tuple[LocalTier, LocalTier],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tiers
    for i in range(6):
        write_file(src.root, f"s/f{i}.edf", os.urandom(100 + i))
    calls: list[int] = []
    monkeypatch.setattr(local_mod, "_syncfs_call", lambda: lambda fd: (calls.append(fd), -1)[1])  # and it fails
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    out = dst.copy_from(src, [CopyItem(f"s/f{i}.edf") for i in range(6)])
    assert all(isinstance(o, CopyResult) for o in out)
    assert len(calls) == 1  # one file system, one syncfs for the batch; its failure changes nothing
    assert {os.stat(dst.root / f"s/f{i}.edf").st_ino for i in range(6)} <= set(synced)
    calls.clear()
    write_file(src.root, "one.edf", b"1")
    assert isinstance(dst.copy_from(src, [CopyItem("one.edf")])[0], CopyResult)
    assert calls == []  # a batch of one is fsynced alone


KILLED_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from splash_flows.config import load_config_file
    from splash_flows.context import build_context
    from splash_flows.services.move import move_files
    ctx = build_context(load_config_file(Path(sys.argv[1])))
    os.rename = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # every copy durable and verified; none named
    move_files(ctx, sys.argv[2:])
""")


def test_killed_after_verification_before_rename_leaves_no_final_name(tmp_path: Path) -> None:
    data = default_config_data(tmp_path / "site")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    config = load_config_file(cfg_path)
    for tier in config.tiers.values():
        Path(tier.root).mkdir(parents=True)
    src = Path(config.tiers["data733"].root)
    names = [f"P/d/f{i:02d}.edf" for i in range(20)]
    for i, name in enumerate(names):
        write_file(src, name, os.urandom(4000 + i))
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(cfg_path), *names], check=False)
    assert proc.returncode == -signal.SIGKILL
    targets = [tmp_path / "site" / t for t in ("lamarr", "cfs")]
    assert not [f for t in targets for f in t.rglob("*.edf") if PART_MARK not in f.name]
    assert [f for t in targets for f in t.rglob(f"*{PART_MARK}*")], "the kill came before anything was staged"
    ctx = build_context(config)
    try:
        assert all(set(r.copies) == {"data733"} for r in ctx.ledger.status())  # nothing recorded on a target
        move_files(ctx, names).raise_for_failures()  # the re-run removes the dead process's parts
        assert all(c.state == "verified" for r in ctx.ledger.status() for c in r.copies.values())
        assert ctx.ledger.counts()["copies"] == 3 * len(names)
    finally:
        ctx.close()
    assert not [f for t in targets for f in t.rglob(f"*{PART_MARK}*")]
    for t in targets:
        assert all((t / n).read_bytes() == (src / n).read_bytes() for n in names)
