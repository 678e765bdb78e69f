"""Reconciliation plan: which source files need sending again, judged by the ledger and the tier."""

from __future__ import annotations

import os
from pathlib import Path

from splash_flows.context import Context
from splash_flows.services.move import copy_to_tier, move_files, register_sources
from splash_flows.services.reconcile import plan_reconcile
from tests.conftest import write_file


def test_plan_finds_exactly_what_is_not_verified_everywhere(ctx: Context) -> None:
    root = Path(ctx.config.tiers["data733"].root)
    for name in ("done.edf", "half.edf", "changed.edf", "new.edf", "restricted/x.edf", "fresh.edf"):
        write_file(root, name, os.urandom(64))
    old = 1_700_000_000.0
    for name in ("done.edf", "half.edf", "changed.edf", "new.edf", "restricted/x.edf"):
        os.utime(root / name, (old, old))
    move_files(ctx, ["done.edf", "changed.edf"]).raise_for_failures()
    reg = register_sources(ctx, ["half.edf"])
    copy_to_tier(ctx, reg.sources, "lamarr")
    write_file(root, "changed.edf", os.urandom(65))
    os.utime(root / "changed.edf", (old + 5, old + 5))

    move = ctx.config.move.model_copy(update={"export_control_patterns": ["restricted"]})
    cctx = Context(config=ctx.config.model_copy(update={"move": move}), ledger=ctx.ledger)
    plan = plan_reconcile(cctx, min_age=60, now=old + 3600)
    assert plan.to_send == {"changed.edf": "changed since it was registered", "half.edf": "not verified on cfs",
                            "new.edf": "not in the ledger"}
    assert plan.in_order == 1
    assert plan.export_controlled == ["restricted/x.edf"]
    assert plan.too_fresh == ["fresh.edf"]
    assert plan.batches(2) == [["changed.edf", "half.edf"], ["new.edf"]]


def test_after_sending_the_plan_is_empty(ctx: Context) -> None:
    root = Path(ctx.config.tiers["data733"].root)
    for i in range(5):
        write_file(root, f"s/{i}.edf", os.urandom(10))
    plan = plan_reconcile(ctx, min_age=0)
    assert len(plan.to_send) == 5
    for batch in plan.batches(2):
        move_files(ctx, batch).raise_for_failures()
    again = plan_reconcile(ctx, min_age=0)
    assert again.to_send == {} and again.in_order == 5


def test_a_copy_marked_failed_is_sent_again(ctx: Context) -> None:
    root = Path(ctx.config.tiers["data733"].root)
    write_file(root, "f.edf", b"f")
    report = move_files(ctx, ["f.edf"])
    report.raise_for_failures()
    source = report.register.sources[0]
    ctx.ledger.record_failed("f.edf", "cfs", "cfs: disk full", source=source)
    assert plan_reconcile(ctx, min_age=0).to_send == {"f.edf": "not verified on cfs"}
