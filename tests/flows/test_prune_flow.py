"""``prune_733`` and the move flow's scheduling step, in-process against a temporary Prefect server."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from splash_flows.config import load_config_file
from splash_flows.context import build_context
from tests.support.prune import acquire, flip_byte, tier_path

pytestmark = pytest.mark.prefect



def test_move_schedules_and_prune_733_deletes_what_is_due(prefect_harness: None, config_file: Path) -> None:
    from splash_flows.flows.bl733.move import new_file_733
    from splash_flows.flows.bl733.prune import prune_733

    ctx = build_context(load_config_file(config_file, {}))
    old = [f"old/scan_{i}.edf" for i in range(3)]
    for p in old:
        acquire(ctx, p, os.urandom(1000), datetime.now(UTC) - timedelta(days=200))
    acquire(ctx, "new/scan.edf", os.urandom(1000), datetime.now(UTC))
    state = new_file_733(paths=[*old, "new/scan.edf"], config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["prune_scheduled"] == 4 * 3  # data733, lamarr and cfs copies of each file

    state = prune_733(config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert sorted(p["path"] for p in result["pruned"]) == old
    assert not any(tier_path(ctx, "data733", p).exists() for p in old)
    assert tier_path(ctx, "data733", "new/scan.edf").exists()
    ctx.close()


def test_prune_733_fails_listing_every_copy_at_risk(prefect_harness: None, config_file: Path) -> None:
    from splash_flows.flows.bl733.move import new_file_733
    from splash_flows.flows.bl733.prune import prune_733

    ctx = build_context(load_config_file(config_file, {}))
    paths = ["a.edf", "b.edf", "c.edf"]
    for p in paths:
        acquire(ctx, p, os.urandom(1000), datetime.now(UTC) - timedelta(days=200))
    assert new_file_733(paths=paths, config_path=str(config_file), return_state=True).is_completed()
    flip_byte(tier_path(ctx, "cfs", "a.edf"))
    tier_path(ctx, "lamarr", "b.edf").unlink()
    state = prune_733(config_path=str(config_file), tier="data733", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as exc:
        state.result()
    text = str(exc.value)
    assert "AT RISK: cfs:a.edf" in text and "AT RISK: lamarr:b.edf: missing" in text and "2 of 3" in text
    assert tier_path(ctx, "data733", "a.edf").exists() and tier_path(ctx, "data733", "b.edf").exists()
    assert not tier_path(ctx, "data733", "c.edf").exists()
    ctx.close()
