"""Pruning data733 when the copies it relies on are Globus collections that are not mounted here.

Globus has no API returning a file's checksum, so the required cfs and lamarr copies are re-verified by a
checksum-sync task from data733 (``GlobusTier.verify_copies``), one per tier for the whole batch, and data733 is
deleted with a Globus delete task. Globus is the fake Transfer service over local folders (tests/fakes/globus.py):
its tasks really compare, copy and delete bytes. data733 is a globus tier mounted here (``local_root``), so its
own copy is re-hashed by us. Ledger on SQLite (the backends are covered by the other prune tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from splash_flows.config import parse_config
from splash_flows.context import Context
from splash_flows.errors import BatchError
from splash_flows.ledger import EventKind
from splash_flows.ledger.transfers import TransferBatches
from splash_flows.services import prune
from splash_flows.services.move import move_files, register_sources
from tests.conftest import write_file
from tests.fakes.clock import FakeClock
from tests.fakes.globus import (
    CFS_COLLECTION,
    ENV,
    LAMARR_COLLECTION,
    SRC_COLLECTION,
    FakeGlobus,
    fake_collections,
    globus_config_data,
    make_context,
)
from tests.fakes.globus import FakeClock as GlobusClock
from tests.support.prune import T0, flip_byte, move_and_schedule

PATHS = [f"ALS-00622/20260105/scan_{i:03d}.edf" for i in range(4)]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


@pytest.fixture
def fake(site: Path) -> Iterator[FakeGlobus]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeGlobus(rsps, fake_collections(site))


def _context(site: Path, tmp_path: Path, **overrides: Any) -> Context:
    data = globus_config_data(site, f"sqlite:///{tmp_path / 'ledger.db'}")
    data["tiers"].update(overrides)
    config = parse_config(data, source="<test>", base=site, environ=ENV)
    return make_context(config, GlobusClock())


@pytest.fixture
def gctx(site: Path, tmp_path: Path, fake: FakeGlobus) -> Iterator[Context]:
    ctx = _context(site, tmp_path)
    yield ctx
    ctx.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def acquire_all(site: Path, paths: list[str]) -> dict[str, bytes]:
    data = {}
    for i, p in enumerate(paths):
        data[p] = os.urandom(3000 + i)
        path = write_file(site / "data733", p, data[p])
        os.utime(path, (T0.timestamp(), T0.timestamp()))
    return data


def states(ctx: Context, path: str) -> dict[str, str]:
    (row,) = [r for r in ctx.ledger.status() if r.path == path]
    return {t: c.state for t, c in row.copies.items()}


def verify_bodies(fake: FakeGlobus) -> list[dict[str, Any]]:
    return [b for b in fake.bodies("transfer") if "re-verify" in b["label"]]


def test_identical_globus_copies_are_verified_by_globus_and_data733_is_pruned(
        gctx: Context, fake: FakeGlobus, site: Path, clock: FakeClock) -> None:
    data = acquire_all(site, PATHS)
    move_and_schedule(gctx, PATHS, clock)
    clock.advance(days=181)

    report = prune.execute_prune(gctx, clock=clock)

    report.raise_for_failures()
    assert sorted(p.path for p in report.pruned) == sorted(PATHS) and {p.tier for p in report.pruned} == {"data733"}
    for p in PATHS:
        assert not (site / "data733" / p).exists()
        assert (site / "remote_cfs" / p).read_bytes() == data[p] == (site / "remote_lamarr" / p).read_bytes()
        assert states(gctx, p) == {"data733": "pruned", "lamarr": "verified", "cfs": "verified"}
    # one checksum-sync task per required tier for the whole batch, from data733; nothing needed sending
    tasks = verify_bodies(fake)
    assert sorted(b["destination_endpoint"] for b in tasks) == sorted([CFS_COLLECTION, LAMARR_COLLECTION])
    assert all(b["source_endpoint"] == SRC_COLLECTION and len(b["DATA"]) == len(PATHS) for b in tasks)
    assert all(b["sync_level"] == 3 and b["verify_checksum"] is True for b in tasks)
    assert all(not t.sent for t in fake.tasks.values() if t.kind == "TRANSFER" and "re-verify" in t.body["label"])
    (delete,) = fake.bodies("delete")  # data733 deleted through Globus, one batched delete task
    assert delete["endpoint"] == SRC_COLLECTION and len(delete["DATA"]) == len(PATHS)
    kinds = sorted(b.kind for b in TransferBatches(gctx.ledger).recent())
    assert kinds == ["delete", "transfer", "transfer", "verify", "verify"]
    # the evidence says Globus verified each required copy, with its own algorithm, in which task
    events = gctx.ledger.events(kind=EventKind.PRUNED)
    assert len(events) == len(PATHS)
    verify_task_ids = {t.task_id for t in fake.tasks.values() if "re-verify" in t.body["label"]}
    for ev in events:
        source = gctx.ledger.get_source("data733", ev.path or "")
        assert source is not None
        required = {r["tier"]: r for r in ev.detail["required"]}
        assert set(required) == {"cfs", "lamarr"}
        for r in required.values():
            how = r["verification"]
            assert r["ok"] and r["checksum"] == r["ledger_checksum"] == source.checksum
            assert how["verified_by"] == "globus" and how["globus_task_id"] in verify_task_ids
            assert "its own algorithm" in how["globus_checksum"]
            assert how["compared_with"] == f"data733:{ev.path}" and "identical" in how["result"]
        assert ev.detail["candidate"]["checksum"] == source.checksum  # data733 re-hashed through its mount


def test_a_corrupted_globus_copy_blocks_the_deletion_is_resent_and_marked_at_risk(
        gctx: Context, fake: FakeGlobus, site: Path, clock: FakeClock) -> None:
    data = acquire_all(site, PATHS)
    move_and_schedule(gctx, PATHS, clock)
    bad = PATHS[1]
    flip_byte(site / "remote_cfs" / bad, offset=100)  # silent corruption on the collection: same size
    clock.advance(days=181)

    report = prune.execute_prune(gctx, clock=clock)

    assert sorted(p.path for p in report.pruned) == sorted(set(PATHS) - {bad})
    assert (site / "data733" / bad).read_bytes() == data[bad]  # not deleted
    assert states(gctx, bad) == {"data733": "verified", "lamarr": "verified", "cfs": "at_risk"}
    assert [(c.tier, c.path) for c in report.at_risk] == [("cfs", bad)]
    assert (site / "remote_cfs" / bad).read_bytes() == data[bad]  # Globus re-sent it
    (risk,) = gctx.ledger.events(kind=EventKind.AT_RISK)
    assert risk.tier == "cfs" and "re-sent" in risk.detail["reason"]
    with pytest.raises(BatchError) as exc:
        report.raise_for_failures()
    message = str(exc.value)
    assert f"data733:{bad}: not deleted" in message and "re-sent" in message and "later run" in message
    assert f"AT RISK: cfs:{bad}" in message
    # the next run leaves the file alone while its cfs copy is at risk ...
    assert prune.execute_prune(gctx, clock=clock).pruned == []
    # ... until the copy is verified again (the move's checksum sync finds it identical), then it is pruned
    move_files(gctx, [bad]).raise_for_failures()
    assert states(gctx, bad)["cfs"] == "verified"
    again = prune.execute_prune(gctx, clock=clock)
    again.raise_for_failures()
    assert [(p.tier, p.path) for p in again.pruned] == [("data733", bad)]


def test_a_globus_error_refuses_the_deletion_without_marking_anything(
        gctx: Context, fake: FakeGlobus, site: Path, clock: FakeClock) -> None:
    acquire_all(site, PATHS)
    move_and_schedule(gctx, PATHS, clock)
    clock.advance(days=181)
    fake.unreachable.add(CFS_COLLECTION)  # cfs's endpoint is down: its copies cannot be verified now

    report = prune.execute_prune(gctx, clock=clock)

    assert report.pruned == [] and report.at_risk == [] and len(report.refused) == len(PATHS)
    assert all("cannot verify with Globus" in str(r) for r in report.refused.values())
    assert fake.bodies("delete") == []
    for p in PATHS:
        assert (site / "data733" / p).exists()
        assert states(gctx, p) == {"data733": "verified", "lamarr": "verified", "cfs": "verified"}
    fake.unreachable.clear()  # back: the next run verifies and prunes
    later = prune.execute_prune(gctx, clock=clock)
    later.raise_for_failures()
    assert sorted(p.path for p in later.pruned) == sorted(PATHS)


def test_globus_copies_of_a_local_source_cannot_be_verified_and_are_refused_clearly(
        site: Path, tmp_path: Path, fake: FakeGlobus, clock: FakeClock) -> None:
    ctx = _context(site, tmp_path, data733={"kind": "local", "root": str(site / "data733")})
    try:
        acquire_all(site, PATHS[:2])
        reg = register_sources(ctx, PATHS[:2])
        for src in reg.sources:  # copies recorded verified by some earlier means (Globus cannot copy from local)
            for tier in ("cfs", "lamarr"):
                write_file(site / f"remote_{tier}", src.path, (site / "data733" / src.path).read_bytes())
                ctx.ledger.record_verified(src, tier, checksum=src.checksum, size=src.size, skipped=False)
        prune.schedule_prune(ctx, reg.sources, clock=clock)
        clock.advance(days=181)

        report = prune.execute_prune(ctx, clock=clock)

        assert report.pruned == [] and report.at_risk == [] and len(report.refused) == 2
        for why in report.refused.values():
            assert "source tier data733 is a local tier" in str(why) and "cannot verify" in str(why)
        assert fake.tasks == {}  # nothing was asked of Globus
        assert all((site / "data733" / p).exists() for p in PATHS[:2])
    finally:
        ctx.close()


def test_a_corrupt_source_is_never_synced_over_good_globus_copies(
        gctx: Context, fake: FakeGlobus, site: Path, clock: FakeClock) -> None:
    data = acquire_all(site, PATHS[:2])
    move_and_schedule(gctx, PATHS[:2], clock)
    bad = PATHS[0]
    flip_byte(site / "data733" / bad, offset=5)  # the copy to delete rots: it must not be compared (and synced)
    clock.advance(days=181)

    report = prune.execute_prune(gctx, clock=clock)

    assert [(p.tier, p.path) for p in report.pruned] == [("data733", PATHS[1])]
    assert (site / "remote_cfs" / bad).read_bytes() == data[bad] == (site / "remote_lamarr" / bad).read_bytes()
    assert all([item["source_path"] for item in b["DATA"]] == [f"/data733/raw/{PATHS[1]}"]
               for b in verify_bodies(fake))
    assert states(gctx, bad) == {"data733": "at_risk", "lamarr": "verified", "cfs": "verified"}
    assert "failed its own re-check" in str(report.refused[f"data733:{bad}"])
