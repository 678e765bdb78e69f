"""``splash-flows prune --plan / --execute / --schedule`` and how ``status`` shows pruned copies (real clock)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import load_config_file
from splash_flows.context import Context, build_context
from splash_flows.services.move import move_files
from splash_flows.services.prune import schedule_prune
from tests.support.prune import acquire, flip_byte, tier_path

PATHS = [f"ALS-00622/20260325/scan_{i:03d}.edf" for i in range(5)]



@pytest.fixture
def ctx(config_file: Path) -> Iterator[Context]:
    context = build_context(load_config_file(config_file, {}))
    yield context
    context.close()


def run(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--config", str(config_file), *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def move_acquired(ctx: Context, acquired: datetime, paths: list[str] = PATHS) -> None:
    """What ``new_file_733`` does: move and schedule, for files acquired at ``acquired``."""
    for i, p in enumerate(paths):
        acquire(ctx, p, os.urandom(1000 + i), acquired)
    report = move_files(ctx, paths)
    report.raise_for_failures()
    schedule_prune(ctx, report.register.sources)


def test_after_a_move_plan_lists_data733_in_181_days_and_nothing_today(config_file: Path, ctx: Context) -> None:
    move_acquired(ctx, datetime.now(UTC))
    code, out, _ = run(config_file, "prune", "--plan", "--json")
    assert code == 0 and json.loads(out)["due"] == []
    code, out, _ = run(config_file, "prune", "--plan", "--until", "+181d", "--json")
    plan = json.loads(out)
    assert code == 0 and sorted((i["tier"], i["path"]) for i in plan["due"]) == [("data733", p) for p in PATHS]
    assert plan["totals"]["data733"]["files"] == len(PATHS) and plan["totals"]["cfs"]["files"] == 0
    in_181 = (datetime.now(ZoneInfo(ctx.config.timezone)) + timedelta(days=181)).date().isoformat()
    code, out, _ = run(config_file, "prune", "--plan", "--until", in_181, "--json")
    assert sorted(i["path"] for i in json.loads(out)["due"]) == PATHS
    code, out, _ = run(config_file, "prune", "--plan", "--until", "+181d")
    assert code == 0 and f"{len(PATHS)} copies would be deleted" in out and "totals per tier" in out
    assert all(p in out for p in PATHS) and "180 d after acquisition; cfs verified, lamarr verified" in out
    code, out, _ = run(config_file, "prune", "--execute")
    assert code == 0 and all(tier_path(ctx, "data733", p).exists() for p in PATHS)


def test_plan_output_matches_what_execute_does(config_file: Path, ctx: Context) -> None:
    move_acquired(ctx, datetime.now(UTC) - timedelta(days=200))
    move_acquired(ctx, datetime.now(UTC) - timedelta(days=10), ["young/scan.edf"])
    code, out, _ = run(config_file, "prune", "--plan", "--json")
    planned = sorted((i["tier"], i["path"]) for i in json.loads(out)["due"])
    assert code == 0 and planned == [("data733", p) for p in PATHS]
    code, out, err = run(config_file, "prune", "--execute", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted((p["tier"], p["path"]) for p in report["pruned"]) == planned
    assert not any(tier_path(ctx, "data733", p).exists() for p in PATHS)
    assert tier_path(ctx, "data733", "young/scan.edf").exists()
    code, out, _ = run(config_file, "status", "--json")
    rows = {r["path"]: r for r in json.loads(out)}
    assert rows[PATHS[0]]["copies"]["data733"]["state"] == "pruned"
    code, out, _ = run(config_file, "status")
    assert code == 0 and "pruned" in out


def test_execute_fails_loudly_on_a_corrupted_copy(config_file: Path, ctx: Context) -> None:
    move_acquired(ctx, datetime.now(UTC) - timedelta(days=200), PATHS[:2])
    flip_byte(tier_path(ctx, "cfs", PATHS[0]))
    code, _, err = run(config_file, "prune", "--execute")
    assert code == 1
    assert "AT RISK" in err and f"cfs:{PATHS[0]}" in err and "refused:" in err
    assert tier_path(ctx, "data733", PATHS[0]).exists() and not tier_path(ctx, "data733", PATHS[1]).exists()


def test_schedule_backfills_copies_moved_before_scheduling(config_file: Path, ctx: Context) -> None:
    for p in PATHS[:2]:
        acquire(ctx, p, b"old data", datetime.now(UTC) - timedelta(days=300))
    move_files(ctx, PATHS[:2]).raise_for_failures()  # no schedule_prune: as before this feature existed
    code, out, _ = run(config_file, "prune", "--plan", "--json")
    assert json.loads(out)["due"] == [] and json.loads(out)["unscheduled"]["data733"] == 2
    code, out, _ = run(config_file, "prune", "--schedule")
    assert code == 0 and "data733 2" in out
    code, out, _ = run(config_file, "prune", "--plan", "--json")
    assert len(json.loads(out)["due"]) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "exactly one of --plan, --execute or --schedule"),
        (["--plan", "--execute"], "exactly one of"),
        (["--execute", "--until", "+1d"], "--until goes with --plan"),
        (["--plan", "--until", "next tuesday"], "is not a date"),
        (["--plan", "--tier", "hpss"], "no retention rule"),
        (["--plan", "--tier", "tape"], "unknown tier"),
    ],
)
def test_bad_arguments_get_one_clear_line(config_file: Path, args: list[str], needle: str) -> None:
    code, out, err = run(config_file, "prune", *args)
    assert code == 2 and needle in " ".join((out + err).split())
