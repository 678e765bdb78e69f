"""Prune refuses to delete by a clock the ledger contradicts (``services.clock_check``): a year ahead is caught
by the PostgreSQL server's clock, a year behind by the newest move event; the refusal is an event."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from splash_flows.context import Context
from splash_flows.errors import PruneRefused
from splash_flows.ledger import EventKind
from splash_flows.services.clock_check import check_clock
from splash_flows.services.move import move_files
from splash_flows.services.prune import execute_prune, schedule_prune
from tests.support.prune import acquire


def test_a_clock_the_ledger_contradicts_deletes_nothing(ctx: Context) -> None:
    old = datetime.now(UTC) - timedelta(days=400)   # due long ago by the policy: only the clock guard stops it
    acquire(ctx, "ALS-1/a.edf", os.urandom(500), old)
    report = move_files(ctx, ["ALS-1/a.edf"])
    schedule_prune(ctx, report.register.sources)
    now = datetime.now(UTC)
    assert check_clock(ctx.ledger, now).newest_event is not None
    with pytest.raises(PruneRefused, match=r"went back|ledger server"):
        execute_prune(ctx, clock=lambda: now - timedelta(days=365), check_clock=True)
    if ctx.ledger.engine.dialect.name == "postgresql":
        with pytest.raises(PruneRefused, match="ledger server"):
            execute_prune(ctx, clock=lambda: now + timedelta(days=365), check_clock=True)
    assert not ctx.ledger.events(kind=EventKind.PRUNED)
    refusals = ctx.ledger.events(kind=EventKind.PRUNE_REFUSED)
    assert refusals and all(e.path is None and e.detail["clock"] == "refused" for e in refusals)
    assert [p.path for p in execute_prune(ctx, check_clock=True).pruned] == ["ALS-1/a.edf"]
