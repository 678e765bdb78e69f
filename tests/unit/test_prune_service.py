"""Pruning without Prefect: scheduling, plan, verified execution, refusals, crash recovery, concurrency.

Every test that touches the ledger runs on SQLite and on a real PostgreSQL server (the ``config`` fixture).
Time is a ``FakeClock``: nothing sleeps.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.errors import BatchError, ConfigError
from splash_flows.ledger import CopyState, EventKind, Ledger
from splash_flows.services import prune
from splash_flows.services.move import move_files
from tests.fakes.clock import FakeClock
from tests.fakes.tiers import SimulatedCrash
from tests.support.prune import (
    T0,
    acquire,
    archive,
    flip_byte,
    move_and_schedule,
    observed,
    observed_context,
    tier_path,
)

PATHS = [f"ALS-00622/2026010{i % 3}/scan_{i:03d}.edf" for i in range(6)]


@pytest.fixture
def octx(config: Config) -> Iterator[Context]:
    context = observed_context(config)
    yield context
    context.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def moved(ctx: Context, clock: FakeClock, paths: list[str] = PATHS) -> None:
    for i, p in enumerate(paths):
        acquire(ctx, p, os.urandom(2000 + i), clock.now)
    move_and_schedule(ctx, paths, clock)


def states(ctx: Context, path: str) -> dict[str, str]:
    (row,) = [r for r in ctx.ledger.status() if r.path == path]
    return {t: c.state for t, c in row.copies.items()}


def due_set(plan: prune.PrunePlan) -> list[tuple[str, str]]:
    return sorted((i.tier, i.path) for i in plan.due)


def pruned_set(report: prune.PruneReport) -> list[tuple[str, str]]:
    return sorted((p.tier, p.path) for p in report.pruned)


# ------------------------------------------------------------------------------------------ scheduling & plan


def test_move_schedules_each_copy_by_policy(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock)
    from splash_flows.ledger import prune as lp

    files = lp.load_files(octx.ledger, lp.all_file_ids(octx.ledger))
    assert len(files) == len(PATHS)
    for f in files.values():
        assert f.acquired_at == T0
        assert f.copies["data733"].prune_due_at == T0 + timedelta(days=180)
        assert f.copies["lamarr"].prune_due_at == T0 + timedelta(days=30)
        assert f.copies["cfs"].prune_due_at == T0 + timedelta(days=365)
    assert len(octx.ledger.events(kind=EventKind.PRUNE_SCHEDULED)) == 3 * len(PATHS)
    again = prune.schedule_all(octx, clock=clock)
    assert again.changed == [] and len(octx.ledger.events(kind=EventKind.PRUNE_SCHEDULED)) == 3 * len(PATHS)


def test_plan_lists_every_data733_file_after_180_days_and_none_today(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock)
    today = prune.plan_prune(octx, clock=clock)
    assert today.due == [] and today.blocked == []
    later = prune.plan_prune(octx, until=T0 + timedelta(days=181), clock=clock)
    assert due_set(later) == [("data733", p) for p in sorted(PATHS)]
    assert all("cfs verified" in i.why and "lamarr verified" in i.why for i in later.due)
    # lamarr is due by date (30 d) but needs hpss, which does not exist yet: blocked, and says so
    assert sorted(i.path for i in later.blocked if i.tier == "lamarr") == sorted(PATHS)
    assert all("hpss" in i.why for i in later.blocked)
    assert later.totals()["data733"] == {"files": len(PATHS), "bytes": sum(2000 + i for i in range(6)),
                                         "blocked": 0, "in_progress": 0}
    assert later.totals()["cfs"]["files"] == 0  # nothing on cfs is due before an archive exists
    with pytest.raises(ConfigError, match="no retention rule"):
        prune.plan_prune(octx, tier="hpss", clock=clock)
    with pytest.raises(ConfigError, match="unknown tier"):
        prune.plan_prune(octx, tier="tape", clock=clock)


# ------------------------------------------------------------------------------------------ execute


def test_execute_deletes_what_is_due_with_evidence(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock)
    assert prune.execute_prune(octx, clock=clock).pruned == []  # day 0: nothing due
    clock.advance(days=181)
    report = prune.execute_prune(octx, clock=clock)
    report.raise_for_failures()
    assert pruned_set(report) == [("data733", p) for p in sorted(PATHS)]
    src_root = Path(octx.config.tiers["data733"].root)
    assert list(src_root.iterdir()) == []  # files and the folders they left are gone; the root stays
    for p in PATHS:
        assert states(octx, p) == {"data733": "pruned", "lamarr": "verified", "cfs": "verified"}
        assert tier_path(octx, "cfs", p).exists() and tier_path(octx, "lamarr", p).exists()
    events = octx.ledger.events(kind=EventKind.PRUNED)
    assert len(events) == len(PATHS)
    ev = events[0]
    source = octx.ledger.get_source("data733", ev.path or "")
    assert source is not None
    detail = ev.detail
    assert ev.tier == "data733" and detail["run"] == report.owner and detail["recovered"] is False
    assert [r["tier"] for r in detail["required"]] == ["cfs", "lamarr"]
    for r in detail["required"]:
        assert r["ok"] and r["checksum"] == r["ledger_checksum"] == source.checksum
        assert r["verified_at"] and r["checked_at"] and r["url"].endswith(ev.path or "")
    assert detail["candidate"]["checksum"] == source.checksum
    assert prune.execute_prune(octx, clock=clock).pruned == []  # idempotent: nothing left to do


def test_corrupted_cfs_copy_blocks_deletion_and_is_marked_at_risk(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock)
    bad = PATHS[2]
    flip_byte(tier_path(octx, "cfs", bad), offset=777)
    clock.advance(days=200)
    report = prune.execute_prune(octx, clock=clock)
    assert sorted(p for _, p in pruned_set(report)) == sorted(set(PATHS) - {bad})
    assert tier_path(octx, "data733", bad).exists()  # the candidate stays
    assert states(octx, bad) == {"data733": "verified", "lamarr": "verified", "cfs": "at_risk"}
    assert [(c.tier, c.path) for c in report.at_risk] == [("cfs", bad)]
    (risk,) = octx.ledger.events(kind=EventKind.AT_RISK)
    assert risk.tier == "cfs" and risk.path == bad and "!= recorded" in risk.detail["reason"]
    (refusal,) = octx.ledger.events(kind=EventKind.PRUNE_REFUSED)
    assert refusal.tier == "data733" and refusal.detail["claim_held"]
    with pytest.raises(BatchError) as exc:
        report.raise_for_failures()
    assert f"data733:{bad}: not deleted" in str(exc.value) and f"AT RISK: cfs:{bad}" in str(exc.value)
    # while its cfs copy is at risk the file is left alone (no new refusal, no deletion) ...
    again = prune.execute_prune(octx, clock=clock)
    assert again.pruned == [] and again.refused == {} and "at_risk" in again.skipped[f"data733:{bad}"]
    blocked = prune.plan_prune(octx, tier="data733", clock=clock).blocked
    assert [(i.tier, i.path) for i in blocked] == [("data733", bad)] and "cfs copy is at_risk" in blocked[0].why
    # ... until the move repairs the copy, after which it is pruned normally
    move_files(octx, [bad]).raise_for_failures()
    assert states(octx, bad)["cfs"] == "verified"
    assert pruned_set(prune.execute_prune(octx, clock=clock)) == [("data733", bad)]


def test_missing_required_copy_blocks_deletion(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:2])
    tier_path(octx, "lamarr", PATHS[0]).unlink()  # deleted behind the ledger's back
    clock.advance(days=181)
    report = prune.execute_prune(octx, clock=clock)
    assert pruned_set(report) == [("data733", PATHS[1])]
    assert tier_path(octx, "data733", PATHS[0]).exists()
    assert states(octx, PATHS[0]) == {"data733": "verified", "lamarr": "at_risk", "cfs": "verified"}
    assert "missing" in str(report.refused[f"data733:{PATHS[0]}"])


def test_corrupted_or_missing_candidate_is_not_deleted(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:2])
    flip_byte(tier_path(octx, "data733", PATHS[0]))
    tier_path(octx, "data733", PATHS[1]).unlink()
    clock.advance(days=181)
    report = prune.execute_prune(octx, clock=clock)
    assert report.pruned == [] and len(report.refused) == 2
    assert tier_path(octx, "data733", PATHS[0]).exists()
    assert observed(octx, "data733").deleted == []
    for p in PATHS[:2]:
        assert states(octx, p)["data733"] == "at_risk"


def test_lamarr_and_cfs_go_only_once_archived_and_in_dependency_order(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:3])
    clock.advance(days=400)
    first = prune.execute_prune(octx, clock=clock)
    assert pruned_set(first) == [("data733", p) for p in sorted(PATHS[:3])]  # lamarr/cfs wait for hpss
    for p in PATHS[:3]:
        assert archive(octx, p)
    plan = prune.plan_prune(octx, clock=clock)
    assert due_set(plan) == sorted((t, p) for p in PATHS[:3] for t in ("lamarr", "cfs"))
    assert [i.tier for i in plan.due if i.path == PATHS[0]] == ["lamarr", "cfs"]
    second = prune.execute_prune(octx, clock=clock)
    second.raise_for_failures()
    assert pruned_set(second) == due_set(plan)
    for p in PATHS[:3]:
        assert states(octx, p) == {"data733": "pruned", "lamarr": "pruned", "cfs": "pruned", "hpss": "verified"}
        assert observed(octx, "hpss").stat(p) is not None  # still in its verified bundle


def test_data733_goes_before_cfs_when_both_are_due(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:2])
    for p in PATHS[:2]:
        assert archive(octx, p)
    clock.advance(days=400)  # data733, lamarr and cfs all due at once: cfs must not go before data733
    report = prune.execute_prune(octx, clock=clock)
    report.raise_for_failures()
    assert [p.tier for p in report.pruned if p.path == PATHS[0]] == ["data733", "lamarr", "cfs"]


def test_reacquired_file_is_not_due_early(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:1])
    clock.advance(days=181)
    prune.execute_prune(octx, clock=clock).raise_for_failures()
    acquire(octx, PATHS[0], b"a new acquisition under the same name", clock.now)
    move_files(octx, PATHS[:1]).raise_for_failures()  # no scheduling: the old due date is still stored
    assert prune.plan_prune(octx, until=clock.now + timedelta(days=179), clock=clock).due == []
    assert due_set(prune.plan_prune(octx, until=clock.now + timedelta(days=181), clock=clock)) == [
        ("data733", PATHS[0])]


# ------------------------------------------------------------------------------------------ plan == execute


def test_plan_matches_what_execute_later_does(octx: Context, clock: FakeClock) -> None:
    for day, batch in enumerate([PATHS[:2], PATHS[2:4], PATHS[4:]]):
        clock.now = T0 + timedelta(days=100 * day)
        moved(octx, clock, batch)
    assert archive(octx, PATHS[0]) and archive(octx, PATHS[3])
    clock.now = T0 + timedelta(days=100)
    for step in (150, 100, 300):
        when = clock.now + timedelta(days=step)
        plan = prune.plan_prune(octx, until=when, clock=clock)
        clock.now = when
        report = prune.execute_prune(octx, clock=clock)
        report.raise_for_failures()
        assert pruned_set(report) == due_set(plan), step
    assert len(octx.ledger.events(kind=EventKind.PRUNED)) > len(PATHS)


# ------------------------------------------------------------------------------------------ crashes


def test_crash_between_claim_and_delete_leaves_a_consistent_ledger(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:3])
    clock.advance(days=181)
    observed(octx, "data733").crash = "before"
    with pytest.raises(SimulatedCrash):
        prune.execute_prune(octx, clock=clock)
    observed(octx, "data733").crash = None
    for p in PATHS[:3]:
        assert tier_path(octx, "data733", p).exists()
        assert states(octx, p)["data733"] == CopyState.DELETING
    plan = prune.plan_prune(octx, clock=clock)
    assert plan.due == [] and len(plan.in_progress) == 3
    # a run while the claims are fresh leaves them alone ...
    assert prune.execute_prune(octx, clock=clock).pruned == []
    assert observed(octx, "data733").deleted == []
    # ... and once they are older than the timeout, the next run re-checks and finishes the job
    clock.advance(minutes=octx.config.retention.claim_timeout_minutes + 1)
    assert len(prune.plan_prune(octx, clock=clock).due) == 3
    report = prune.execute_prune(octx, clock=clock)
    report.raise_for_failures()
    assert pruned_set(report) == [("data733", p) for p in sorted(PATHS[:3])]
    assert all(p.evidence["taken_over_from"] and not p.recovered for p in report.pruned)
    assert len(octx.ledger.events(kind=EventKind.PRUNED)) == 3


def test_crash_after_delete_is_recorded_by_the_next_run(octx: Context, clock: FakeClock) -> None:
    moved(octx, clock, PATHS[:2])
    clock.advance(days=181)
    observed(octx, "data733").crash = "after"
    with pytest.raises(SimulatedCrash):
        prune.execute_prune(octx, clock=clock)
    observed(octx, "data733").crash = None
    assert not tier_path(octx, "data733", PATHS[0]).exists()
    assert states(octx, PATHS[0])["data733"] == CopyState.DELETING  # deleted, not yet recorded
    clock.advance(hours=3)
    report = prune.execute_prune(octx, clock=clock)
    report.raise_for_failures()
    assert pruned_set(report) == [("data733", p) for p in sorted(PATHS[:2])]
    assert all(p.recovered for p in report.pruned)
    assert all(states(octx, p)["data733"] == "pruned" for p in PATHS[:2])
    assert all(e.detail["recovered"] for e in octx.ledger.events(kind=EventKind.PRUNED))


def test_a_file_gone_under_a_claim_that_never_reached_deletion_is_at_risk(
        octx: Context, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    moved(octx, clock, PATHS[:1])
    clock.advance(days=181)

    def die(path: str) -> str:
        raise SimulatedCrash("killed while re-checking")

    monkeypatch.setattr(observed(octx, "cfs"), "checksum", die)
    with pytest.raises(SimulatedCrash):
        prune.execute_prune(octx, clock=clock)
    monkeypatch.undo()
    assert states(octx, PATHS[0])["data733"] == CopyState.PRUNING
    tier_path(octx, "data733", PATHS[0]).unlink()  # lost some other way while the claim was stale
    clock.advance(hours=3)
    report = prune.execute_prune(octx, clock=clock)
    assert report.pruned == [] and [(c.tier, c.path) for c in report.at_risk] == [("data733", PATHS[0])]
    assert states(octx, PATHS[0])["data733"] == "at_risk"
    assert octx.ledger.events(kind=EventKind.PRUNED) == []


def test_an_error_before_deleting_releases_the_claims(octx: Context, clock: FakeClock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    moved(octx, clock, PATHS[:2])
    clock.advance(days=181)

    def boom(path: str) -> str:
        raise RuntimeError("checksum service exploded")

    monkeypatch.setattr(observed(octx, "cfs"), "checksum", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        prune.execute_prune(octx, clock=clock)
    assert all(states(octx, p)["data733"] == "verified" for p in PATHS[:2])
    monkeypatch.undo()
    assert len(prune.execute_prune(octx, clock=clock).pruned) == 2


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrent_runs_delete_each_file_once(config: Config, clock: FakeClock) -> None:
    setup = observed_context(config)
    paths = [f"c/scan_{i:03d}.edf" for i in range(16)]
    moved(setup, clock, paths)
    archive(setup, paths[0])
    setup.close()
    clock.advance(days=400)
    deleted: list[tuple[str, str]] = []
    runs = 4
    barrier = threading.Barrier(runs)
    reports: list[prune.PruneReport] = []
    errors: list[BaseException] = []

    def work() -> None:
        ctx = observed_context(config, deleted=deleted)
        try:
            barrier.wait()
            reports.append(prune.execute_prune(ctx, clock=clock))
        except BaseException as err:  # noqa: BLE001 - collected and asserted on below
            errors.append(err)
        finally:
            ctx.close()

    threads = [threading.Thread(target=work) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(r.refused == {} for r in reports)
    expected = sorted([("data733", p) for p in paths] + [("lamarr", paths[0]), ("cfs", paths[0])])
    assert len(deleted) == len(set(deleted)) and set(deleted) <= set(expected)  # none twice, only what is due
    # A copy whose file had another copy in flight in a parallel run is skipped, not waited for: a following
    # run picks it up.
    last = observed_context(config, deleted=deleted)
    reports.append(prune.execute_prune(last, clock=clock))
    last.close()
    assert sorted(deleted) == expected  # every due copy deleted, none twice
    assert sorted(x for r in reports for x in pruned_set(r)) == expected
    ledger = Ledger.open(config.ledger.url_value())
    assert len(ledger.events(kind=EventKind.PRUNED)) == len(expected)
    ledger.close()


def _process_run(config_json: str, now_iso: str) -> dict[str, Any]:
    from datetime import datetime

    from splash_flows.config import Config
    from splash_flows.context import build_context

    cfg = Config.model_validate_json(config_json)
    ctx = build_context(cfg)
    try:
        now = datetime.fromisoformat(now_iso)
        return prune.execute_prune(ctx, clock=lambda: now).as_dict()
    finally:
        ctx.close()


def test_concurrent_processes_delete_each_file_once(config: Config, clock: FakeClock) -> None:
    setup = observed_context(config)
    paths = [f"p/scan_{i:03d}.edf" for i in range(10)]
    moved(setup, clock, paths)
    setup.close()
    clock.advance(days=181)
    payload = config.model_dump_json()
    payload = payload.replace('"url":"**********"', f'"url":"{config.ledger.url_value()}"')
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_process_run, [(payload, clock.now.isoformat())] * 3)
    assert all(r["refused"] == {} for r in results)
    done = sorted(p["path"] for r in results for p in r["pruned"])
    assert done == sorted(paths)
    assert not any(tier_path(setup, "data733", p).exists() for p in paths)
