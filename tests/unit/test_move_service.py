"""The move service without Prefect: register, copy to every target, verify, ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from splash_flows.context import Context
from splash_flows.errors import BatchError, LedgerError
from splash_flows.ledger import EventKind, NewSource, SourceRecord
from splash_flows.services.move import is_transient, move_files
from splash_flows.tiers.local import PART_MARK
from tests.conftest import write_file


def src_root(ctx: Context) -> Path:
    return Path(ctx.config.tiers["data733"].root)


def test_moves_and_verifies_everything(ctx: Context) -> None:
    paths = [f"ALS-00622/20240325/scan_{i:03d}.edf" for i in range(6)]
    for i, p in enumerate(paths):
        write_file(src_root(ctx), p, os.urandom(100_000 + i))
    report = move_files(ctx, paths)
    report.raise_for_failures()
    assert report.verified_everywhere() == sorted(paths)
    for row in ctx.ledger.status():
        assert {t: c.state for t, c in row.copies.items()} == {"data733": "verified", "lamarr": "verified",
                                                              "cfs": "verified"}
        assert row.copies["lamarr"].checksum == row.copies["cfs"].checksum == row.checksum
        for t in ("lamarr", "cfs"):
            assert (Path(ctx.config.tiers[t].root) / row.path).read_bytes() == (src_root(ctx) / row.path).read_bytes()


def test_rerun_is_cheap_and_duplicates_nothing(ctx: Context) -> None:
    write_file(src_root(ctx), "a.edf", b"a" * 1000)
    write_file(src_root(ctx), "b.txt", b"b" * 10)
    move_files(ctx, ["a.edf", "b.txt"]).raise_for_failures()
    counts = ctx.ledger.counts()
    again = move_files(ctx, ["a.edf", "b.txt", "a.edf"])
    again.raise_for_failures()
    assert all(r.copied == [] and len(r.skipped) == 2 for r in again.tiers.values())
    after = ctx.ledger.counts()
    assert after["files"] == counts["files"] == 2 and after["copies"] == counts["copies"] == 6
    assert len(ctx.ledger.events(kind=EventKind.SKIPPED)) == 4


def test_bad_items_are_reported_and_the_rest_completes(ctx: Context, tmp_path: Path) -> None:
    write_file(src_root(ctx), "good.edf", b"g" * 100)
    write_file(src_root(ctx), "empty.edf", b"")
    (tmp_path / "outside").write_text("x")
    os.symlink(tmp_path / "outside", src_root(ctx) / "link.edf")
    report = move_files(ctx, ["good.edf", "empty.edf", "missing.edf", "../up.edf", "link.edf"])
    assert report.verified_everywhere() == ["empty.edf", "good.edf"]
    failures = report.failures()
    assert set(failures) == {"missing.edf (register)", "../up.edf (register)", "link.edf (register)"}
    with pytest.raises(BatchError) as exc:
        report.raise_for_failures()
    text = str(exc.value)
    assert "data733:missing.edf: file not found" in text and "outside the tier root" in text
    assert not is_transient(exc.value)
    refused = ctx.ledger.events(kind=EventKind.REFUSED)
    assert {e.path for e in refused} == {"../up.edf", "link.edf"}


def test_changed_source_is_recopied(ctx: Context) -> None:
    p = write_file(src_root(ctx), "a.edf", b"v1" * 100)
    move_files(ctx, ["a.edf"]).raise_for_failures()
    p.write_bytes(b"v2" * 100)
    os.utime(p, (2_000_000_000, 2_000_000_000))
    report = move_files(ctx, ["a.edf"])
    report.raise_for_failures()
    assert report.tiers["cfs"].copied == ["a.edf"]
    assert (Path(ctx.config.tiers["cfs"].root) / "a.edf").read_bytes() == b"v2" * 100
    assert len(ctx.ledger.events(kind=EventKind.SOURCE_CHANGED)) == 1


def test_missing_target_root_fails_cleanly(ctx: Context) -> None:
    write_file(src_root(ctx), "a.edf", b"x")
    cfs = Path(ctx.config.tiers["cfs"].root)
    cfs.rmdir()
    cfs.write_text("not a folder")  # the target root is broken
    report = move_files(ctx, ["a.edf"])
    assert report.tiers["lamarr"].verified == ["a.edf"]
    assert "a.edf" in report.tiers["cfs"].failed
    assert "cfs:a.edf" in str(report.tiers["cfs"].failed["a.edf"])
    assert ctx.ledger.status()[0].copies["cfs"].state == "failed"


def test_missing_tier_roots_are_one_clear_error_and_never_created(ctx: Context) -> None:
    write_file(src_root(ctx), "a.edf", b"x")
    cfs = Path(ctx.config.tiers["cfs"].root)
    cfs.rmdir()  # e.g. the CFS mount is gone
    report = move_files(ctx, ["a.edf"])
    assert report.tiers["lamarr"].verified == ["a.edf"]
    err = str(report.tiers["cfs"].failed["a.edf"])
    assert "does not exist" in err and "not mounted" in err and str(cfs) in err
    assert not cfs.exists()  # nothing wrote into the bare mount point


def test_missing_source_root_is_named(ctx: Context) -> None:
    import shutil

    shutil.rmtree(src_root(ctx))
    report = move_files(ctx, ["a.edf"])
    assert "tier root" in str(report.register.failed["a.edf"]) and "data733" in str(report.register.failed["a.edf"])


def test_copies_are_staged_while_the_registration_commits_and_named_only_after(
        ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """``move_files`` writes, syncs and verifies the copies while the sources' ledger transaction runs; no copy
    has its final name before that transaction committed."""
    paths = [f"ALS-00622/20240325/s_{i}.edf" for i in range(5)]
    for p in paths:
        write_file(src_root(ctx), p, os.urandom(5000))
    targets = [Path(ctx.config.tiers[t].root) for t in ("lamarr", "cfs")]
    real = ctx.ledger.register_sources
    seen: list[tuple[int, int]] = []

    def register(tier: str, sources: list[NewSource]) -> list[SourceRecord]:
        parts: list[Path] = []
        for _ in range(400):  # bounded: before this change the copies only started after this returned
            parts = [p for t in targets for p in t.rglob("*") if PART_MARK in p.name]
            if len(parts) == 2 * len(paths):
                break
            time.sleep(0.025)
        seen.append((len(parts), sum(1 for t in targets for _ in t.rglob("s_*.edf"))))
        return real(tier, sources)

    monkeypatch.setattr(ctx.ledger, "register_sources", register)
    move_files(ctx, paths).raise_for_failures()
    assert seen == [(2 * len(paths), 0)]  # every copy staged, none named, while the transaction ran
    assert all(row.copies["lamarr"].state == row.copies["cfs"].state == "verified" for row in ctx.ledger.status())


def test_a_failed_registration_leaves_no_copy_under_a_final_name(ctx: Context,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [f"scan/f{i}.edf" for i in range(4)]
    for p in paths:
        write_file(src_root(ctx), p, os.urandom(3000))

    def register(tier: str, sources: list[NewSource]) -> list[SourceRecord]:
        raise LedgerError("database is locked")

    monkeypatch.setattr(ctx.ledger, "register_sources", register)
    with pytest.raises(LedgerError, match="database is locked"):
        move_files(ctx, paths)
    for t in ("lamarr", "cfs"):
        assert not [p for p in Path(ctx.config.tiers[t].root).rglob("*") if p.is_file()]
    monkeypatch.undo()
    move_files(ctx, paths).raise_for_failures()  # the re-run copies everything
