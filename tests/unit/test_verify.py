"""``reconcile --verify`` without Prefect (``services.verify``): re-hash copies on local tiers, mark the bad ones
``at_risk`` with an event, repair them from a copy that still holds the recorded bytes; sampled, rate-limited,
dry-run. Ledger tests run on SQLite and PostgreSQL (the ``ctx`` fixture); the CLI is checked once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import load_config_file
from splash_flows.context import Context, build_context
from splash_flows.errors import ConfigError
from splash_flows.ledger import CopyState, EventKind
from splash_flows.ledger import prune as lp
from splash_flows.services.move import move_files
from splash_flows.services.prune import schedule_prune
from splash_flows.services.verify import RateLimit, verify_copies
from tests.support.prune import acquire, flip_byte, tier_path

PATHS = [f"ALS-00622/20260325/scan_{i:03d}.edf" for i in range(6)]


def moved(ctx: Context, paths: list[str] = PATHS) -> dict[str, bytes]:
    data = {p: os.urandom(3000 + i) for i, p in enumerate(paths)}
    for p, blob in data.items():
        acquire(ctx, p, blob, datetime.now(UTC))
    report = move_files(ctx, paths)
    report.raise_for_failures()
    schedule_prune(ctx, report.register.sources)
    return data


def states(ctx: Context, path: str) -> dict[str, str]:
    (row,) = [r for r in ctx.ledger.status() if r.path == path]
    return {t: c.state for t, c in row.copies.items()}


def due_dates(ctx: Context, path: str) -> dict[str, datetime | None]:
    source = ctx.ledger.get_source("data733", path)
    assert source is not None
    return {t: c.prune_due_at for t, c in lp.load_files(ctx.ledger, [source.id])[source.id].copies.items()}


def kinds(ctx: Context, path: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.tier) for e in ctx.ledger.events(path=path)]


def test_intact_copies_are_counted_and_the_pass_is_recorded(ctx: Context) -> None:
    moved(ctx)
    report = verify_copies(ctx, seed=1)
    assert report.checked == 3 * len(PATHS) and report.ok == report.checked and not report.findings
    assert report.bytes_read == 3 * sum(3000 + i for i in range(len(PATHS)))
    (run,) = ctx.ledger.events(kind=EventKind.VERIFY_RUN)
    assert run.detail["checked"] == report.checked and run.detail["at_risk"] == 0 and run.detail["seed"] == 1


def test_a_flipped_bit_is_marked_at_risk_and_repaired_from_the_source(ctx: Context) -> None:
    data = moved(ctx)
    bad = PATHS[2]
    copy = tier_path(ctx, "lamarr", bad)
    flip_byte(copy, 100)
    due_before = due_dates(ctx, bad)
    report = verify_copies(ctx, seed=7)
    assert [(f.tier, f.path, f.repaired_from) for f in report.findings] == [("lamarr", bad, "data733")]
    assert "!= recorded" in report.findings[0].reason
    assert copy.read_bytes() == data[bad]
    assert states(ctx, bad) == {"data733": "verified", "lamarr": "verified", "cfs": "verified"}
    assert (EventKind.AT_RISK, "lamarr") in kinds(ctx, bad) and (EventKind.REPAIRED, "lamarr") in kinds(ctx, bad)
    (repaired,) = ctx.ledger.events(path=bad, kind=EventKind.REPAIRED)
    assert repaired.detail["repaired_from"] == "data733"
    # the due dates come from the ledger and survive a repair
    assert due_dates(ctx, bad) == due_before and due_before["data733"] is not None
    assert not list(copy.parent.glob(".*part"))
    again = verify_copies(ctx, seed=7)
    assert not again.findings and again.ok == again.checked


def test_a_missing_copy_is_repaired_from_another_target_when_the_source_is_gone(ctx: Context) -> None:
    data = moved(ctx)
    bad = PATHS[0]
    tier_path(ctx, "cfs", bad).unlink()
    tier_path(ctx, "data733", bad).unlink()
    report = verify_copies(ctx, tiers=["cfs"], seed=3)
    assert [(f.tier, f.reason.endswith("missing"), f.repaired_from) for f in report.findings] == [
        ("cfs", True, "lamarr")]
    assert tier_path(ctx, "cfs", bad).read_bytes() == data[bad]


def test_no_good_copy_left_stays_at_risk_and_marks_the_bad_candidates(ctx: Context) -> None:
    moved(ctx)
    bad = PATHS[1]
    for tier in ("data733", "lamarr", "cfs"):
        flip_byte(tier_path(ctx, tier, bad), 10)
    report = verify_copies(ctx, tiers=["lamarr"], seed=3)
    (finding,) = report.findings
    assert finding.repaired_from is None and "data733" in str(finding.repair_error)
    assert states(ctx, bad) == {"data733": "at_risk", "lamarr": "at_risk", "cfs": "at_risk"}
    assert report.unrepaired == [finding]


def test_copies_already_at_risk_are_always_looked_at_even_outside_the_sample(ctx: Context) -> None:
    data = moved(ctx)
    bad = PATHS[4]
    flip_byte(tier_path(ctx, "cfs", bad), 5)
    verify_copies(ctx, tiers=["cfs"], repair=False, seed=1)
    assert states(ctx, bad)["cfs"] == "at_risk"
    report = verify_copies(ctx, tiers=["cfs"], sample=0.01, seed=1)
    assert [(f.path, f.repaired_from) for f in report.findings] == [(bad, "data733")]
    assert tier_path(ctx, "cfs", bad).read_bytes() == data[bad]
    assert states(ctx, bad)["cfs"] == CopyState.VERIFIED


def test_sample_is_seeded_and_a_dry_run_writes_nothing(ctx: Context) -> None:
    moved(ctx)
    flip_byte(tier_path(ctx, "lamarr", PATHS[3]), 1)
    events_before = len(ctx.ledger.events())
    one = verify_copies(ctx, sample=0.5, seed=42, record=False)
    two = verify_copies(ctx, sample=0.5, seed=42, record=False)
    assert one.checked == two.checked and one.sampled_out == two.sampled_out
    assert one.checked + one.sampled_out == 3 * len(PATHS) and 0 < one.checked < 3 * len(PATHS)
    assert len(ctx.ledger.events()) == events_before
    assert states(ctx, PATHS[3])["lamarr"] == "verified"
    full = verify_copies(ctx, record=False, seed=0)
    assert [f.path for f in full.findings] == [PATHS[3]] and full.findings[0].repaired_from is None
    with pytest.raises(ConfigError):
        verify_copies(ctx, sample=0.0)


def test_rate_limit_sleeps_to_keep_the_average_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limit = RateLimit(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limit(1_000_000)  # 4 MB at 2 MB/s: 2 s in total
    assert sum(slept) == pytest.approx(2.0)
    free = RateLimit(None, clock=lambda: 0.0, sleep=sleep)
    free(10**9)
    assert sum(slept) == pytest.approx(2.0)


@pytest.fixture
def file_ctx(config_file: Path) -> Iterator[Context]:
    context = build_context(load_config_file(config_file, {}))
    yield context
    context.close()


def test_cli_reconcile_verify_reports_repairs_and_exits_one_when_a_copy_stays_at_risk(
        config_file: Path, file_ctx: Context) -> None:
    moved(file_ctx, PATHS[:3])
    flip_byte(tier_path(file_ctx, "cfs", PATHS[0]), 3)
    result = CliRunner().invoke(app, ["--config", str(config_file), "reconcile", "--verify", "--seed", "5",
                                      "--max-rate", "500", "--json"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["verify"]["repaired"] == 1 and out["verify"]["seed"] == 5 and out["to_send"] == {}
    for tier in ("data733", "lamarr", "cfs"):
        flip_byte(tier_path(file_ctx, tier, PATHS[1]), 3)
    result = CliRunner().invoke(app, ["--config", str(config_file), "reconcile", "--verify", "--tier", "lamarr"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "at risk lamarr:" in result.stdout and "stay at_risk" in result.stderr


def test_named_lock_serialises_find_then_create_across_processes(ctx: Context) -> None:
    """Two processes hold one name at once: the second waits for the first (the fix for the race the fault
    matrix found: two concurrent catalogue steps each creating a dataset for one scan)."""
    import multiprocessing

    url = ctx.config.ledger.url_value()
    mp = multiprocessing.get_context("fork")
    q: Any = mp.Queue()
    procs = [mp.Process(target=_hold, args=(url, "catalogue:data733:ALS-1/scan_0001", q)) for _ in range(2)]
    for p in procs:
        p.start()
    spans = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert spans[0][1] <= spans[1][0]  # the second got the lock only after the first let go


def _hold(url: str, name: str, q: Any) -> None:
    import time

    from splash_flows.ledger import Ledger

    ledger = Ledger.open(url)
    with ledger.named_lock(name):
        start = time.monotonic()
        time.sleep(0.5)
        end = time.monotonic()
    q.put((start, end))
    ledger.close()
