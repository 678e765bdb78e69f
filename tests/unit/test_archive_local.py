"""The tape archive end to end on the local backend (real tar bundles, real files), without Prefect:
bundles per proposal and cycle, manifests, idempotent re-runs, corruption caught at verification and at the
prune re-check, restore byte-identical (and loud on a damaged bundle), datablocks in the catalogue (and
pending through an outage), SIGKILL mid-bundle followed by a re-run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import Config, load_config_file
from splash_flows.context import Context, build_context
from splash_flows.errors import BatchError, CatalogueUnavailable, VerificationError
from splash_flows.ledger import archive as la
from splash_flows.ledger.models import BundleState
from splash_flows.services import prune
from splash_flows.services.archive import service as svc
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from tests.fakes.clock import FakeClock


def acquired(ctx: Context, clock: FakeClock, scans: int = 4, proposal: str = "ALS-00622",
             catalogue: bool = True, when: datetime | None = None) -> list[str]:
    """Simulated scans moved to lamarr and cfs, pruning scheduled, catalogued (what the demo does)."""
    root = Path(ctx.config.tiers["data733"].root)
    written = simulate_acquisitions(root, scans, small=True, hi_lo_every=3, autoexpose_every=0, proposal=proposal,
                                    seed=5, when=when)
    paths = sorted(p.relative_to(root).as_posix() for p in written)
    report = move_files(ctx, paths)
    report.raise_for_failures()
    prune.schedule_prune(ctx, report.register.sources, clock=clock)
    if catalogue:
        catalogue_batch(ctx, paths).raise_for_failures()
    return paths


@pytest.fixture
def actx(config_file: Path) -> Context:
    ctx = build_context(load_config_file(config_file, {}))
    yield ctx  # type: ignore[misc]
    ctx.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


def hpss(ctx: Context) -> Path:
    return Path(ctx.config.tiers["hpss"].root)


def test_archive_bundles_verifies_records_and_is_idempotent(actx: Context, clock: FakeClock) -> None:
    paths = acquired(actx, clock)
    plan = svc.plan_archive(actx)
    assert [b.name.split("_part")[0] for b in plan.new.bundles] == [
        f"ALS-00622/ALS-00622_{plan.new.bundles[0].cycle}"]
    assert la.bundles(actx.ledger, "hpss") == []  # --plan records nothing
    report = svc.execute_archive(actx)
    report.raise_for_failures()
    (bundle,) = la.bundles(actx.ledger, "hpss")
    assert bundle.state == BundleState.VERIFIED and report.verified == [bundle.name]
    tar_path = hpss(actx) / bundle.name
    with tarfile.open(tar_path) as tar:
        assert sorted(tar.getnames()) == paths
    manifest = json.loads((tar_path.parent / (tar_path.name + ".manifest.json")).read_text())
    assert [m["member"] for m in manifest["members"]] == paths
    sources = actx.ledger.sources("data733", paths)
    assert {m["member"]: m["checksum"] for m in manifest["members"]} == {p: s.checksum for p, s in sources.items()}
    rows = {r.path: r for r in actx.ledger.status()}
    assert all(rows[p].copies["hpss"].state == "verified" for p in paths)
    assert not [p for p in tar_path.parent.iterdir() if p.name.endswith(".part")]
    counts = actx.ledger.counts()
    again = svc.execute_archive(actx)
    assert again.planned == 0 and again.verified == [] and len(la.bundles(actx.ledger, "hpss")) == 1
    assert actx.ledger.counts()["copies"] == counts["copies"]
    # more files of the same proposal and cycle later: a new part, never a second bundle for the old files
    later = datetime.now(UTC) + timedelta(minutes=30)  # new names, never the first scans' names rewritten
    new = acquired(actx, clock, scans=1, proposal="ALS-00622", when=later)
    assert not set(new) & set(paths)
    svc.execute_archive(actx).raise_for_failures()
    names = [b.name for b in la.bundles(actx.ledger, "hpss")]
    assert len(names) == 2 and names[1].endswith("_part002.tar")


def test_catalogue_gets_datablocks_and_tape_location_and_an_outage_leaves_them_pending(
        actx: Context, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    acquired(actx, clock)
    catalogue = actx.catalogue()

    def down(*_: object, **__: object) -> None:
        raise CatalogueUnavailable("catalogue down (test)")

    monkeypatch.setattr(type(catalogue), "add_datablock", down)
    report = svc.execute_archive(actx)
    report.raise_for_failures()  # the archive is done: an outage is not a failure
    (bundle,) = la.bundles(actx.ledger, "hpss")
    assert bundle.state == BundleState.VERIFIED and bundle.catalogue_state == "pending"
    assert report.catalogue_pending
    monkeypatch.undo()
    retry = svc.execute_archive(actx)
    assert retry.catalogued == [bundle.name]
    (bundle,) = la.bundles(actx.ledger, "hpss")
    assert bundle.catalogue_state == "catalogued"
    entries = catalogue.search()
    assert len(entries) == 4
    ids = set()
    for e in entries:
        (block,) = catalogue.datablocks(e.pid)
        ids.add(block.archive_id)
        assert block.packed_size == bundle.packed_size and block.chk_alg == "xxh3_128"
        assert {f.path for f in block.files} == {f.path for f in e.doc.files}
        hpss_loc = {loc.tier: loc for loc in e.doc.locations}["hpss"]
        assert hpss_loc.state == "archived" and bundle.name in hpss_loc.url
    assert len(ids) == 4  # archiveId unique per bundle and dataset
    svc.execute_archive(actx)  # again: nothing duplicated
    assert all(len(catalogue.datablocks(e.pid)) == 1 for e in entries)


def test_restore_is_byte_identical_and_a_damaged_bundle_fails_loudly(actx: Context, clock: FakeClock,
                                                                     tmp_path: Path) -> None:
    paths = acquired(actx, clock)
    svc.execute_archive(actx).raise_for_failures()
    out = tmp_path / "restored"
    pid = actx.catalogue().search()[0].pid
    report = svc.restore(actx, [pid, paths[-1]], out)
    report.raise_for_failures()
    data733 = Path(actx.config.tiers["data733"].root)
    assert report.restored
    for path, dest in report.restored:
        assert dest == out / path and dest.read_bytes() == (data733 / path).read_bytes()
    # damage one member's bytes inside the tar (size unchanged)
    (bundle,) = la.bundles(actx.ledger, "hpss")
    tar_path = hpss(actx) / bundle.name
    with tarfile.open(tar_path) as tar:
        member = tar.getmember(paths[0])
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data + 10] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    bad = svc.restore(actx, [paths[0]], tmp_path / "again")
    assert list(bad.failed) == [paths[0]] and isinstance(bad.failed[paths[0]], VerificationError)
    assert paths[0] in str(bad.failed[paths[0]]) and bundle.name in str(bad.failed[paths[0]])
    assert not (tmp_path / "again" / paths[0]).exists()
    with pytest.raises(BatchError, match="restores failed"):
        bad.raise_for_failures()
    drill_ok = svc.restore_drill(actx, scratch=tmp_path / "scratch")
    assert drill_ok.bundle == bundle.name
    last = la.last_drill(actx.ledger)
    assert last is not None and last.detail["ok"] == drill_ok.ok


def test_corrupt_bundle_is_caught_by_the_prune_recheck_and_by_the_next_verification(actx: Context,
                                                                                   clock: FakeClock) -> None:
    paths = acquired(actx, clock, catalogue=False)
    svc.execute_archive(actx).raise_for_failures()
    late = FakeClock(clock.now)
    late.advance(days=31)
    plan = prune.plan_prune(actx, clock=late)
    assert {i.tier for i in plan.due} == {"lamarr"}  # lamarr goes once cfs and hpss hold verified copies
    late.advance(days=150)
    plan = prune.plan_prune(actx, clock=late)
    assert {(i.tier, i.path) for i in plan.due if i.tier == "data733"} == {("data733", p) for p in paths}
    late.advance(days=200)
    plan = prune.plan_prune(actx, clock=late)
    assert {(i.tier, i.path) for i in plan.due if i.tier == "cfs"} == {("cfs", p) for p in paths}
    cfs_item = next(i for i in plan.due if i.tier == "cfs")
    assert [r["tier"] for r in cfs_item.requires] == ["hpss"]
    (bundle,) = la.bundles(actx.ledger, "hpss")
    tar_path = hpss(actx) / bundle.name
    with tarfile.open(tar_path) as tar:
        member = tar.getmember(paths[0])
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    report = prune.execute_prune(actx, clock=late)
    assert any(c.tier == "hpss" and c.path == paths[0] for c in report.at_risk)
    assert any(key.endswith(paths[0]) for key in report.refused)
    assert Path(actx.config.tiers["cfs"].root, paths[0]).exists()  # the re-check kept cfs
    assert {p.path for p in report.pruned if p.tier == "cfs"} == set(paths[1:])
    # the next verification of that bundle finds it corrupt, sets it aside and writes it again
    tier = svc.archive_tier(actx)
    with pytest.raises(VerificationError, match="differ from the manifest"):
        tier.verify_tar(bundle)  # type: ignore[attr-defined]


def _killed_mid_bundle(config_path: str) -> None:
    ctx = build_context(load_config_file(Path(config_path), {}))
    seen = [0]

    def progress(event: str, name: str, n: int) -> None:
        seen[0] += n if event == "bytes" else 0
        if seen[0] > 10_000:
            os.kill(os.getpid(), signal.SIGKILL)

    svc.execute_archive(ctx, progress=progress)


def test_sigkill_mid_bundle_leaves_no_bundle_and_the_next_run_resumes(config_file: Path, clock: FakeClock) -> None:
    ctx = build_context(load_config_file(config_file, {}))
    try:
        paths = acquired(ctx, clock, catalogue=False)
        proc = multiprocessing.get_context("spawn").Process(target=_killed_mid_bundle, args=(str(config_file),))
        proc.start()
        proc.join(120)
        assert proc.exitcode == -signal.SIGKILL
        (bundle,) = la.bundles(ctx.ledger, "hpss")
        assert bundle.state == BundleState.PLANNED
        folder = hpss(ctx) / bundle.name.rsplit("/", 1)[0]
        assert not (hpss(ctx) / bundle.name).exists()
        assert [p.name for p in folder.iterdir() if p.name.endswith(".part")]  # the dead run's temp file
        svc.execute_archive(ctx).raise_for_failures()
        (bundle,) = la.bundles(ctx.ledger, "hpss")
        assert bundle.state == BundleState.VERIFIED
        assert [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []
        with tarfile.open(hpss(ctx) / bundle.name) as tar:
            assert sorted(tar.getnames()) == paths
    finally:
        ctx.close()


def test_archive_config_validation(tmp_path: Path) -> None:
    from splash_flows.config import ArchiveConfig, ConfigError, default_config_data, parse_config

    with pytest.raises(ValueError, match="bundle_target_bytes"):
        ArchiveConfig(bundle_target_bytes=3, bundle_max_bytes=2)
    data = default_config_data(tmp_path)
    data["archive"] = {"tier": "tape"}
    with pytest.raises(ConfigError, match="archive refers to tiers"):
        parse_config(data, source="t", base=tmp_path, environ={})
    cfg: Config = parse_config(default_config_data(tmp_path), source="t", base=tmp_path, environ={})
    assert cfg.archive_enabled() and cfg.archive.bundle_max_bytes == 2000 * 10**9
