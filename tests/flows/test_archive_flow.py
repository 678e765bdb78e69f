"""``archive_733`` and ``restore_drill_733`` in-process against a temporary Prefect server."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from splash_flows.config import load_config_file
from splash_flows.context import build_context
from splash_flows.ledger import archive as la
from tests.support.prune import acquire, tier_path

pytestmark = pytest.mark.prefect


def test_archive_733_bundles_and_the_drill_restores(prefect_harness: None, config_file: Path) -> None:
    from splash_flows.flows.bl733.archive import archive_733, restore_drill_733
    from splash_flows.flows.bl733.move import new_file_733

    ctx = build_context(load_config_file(config_file, {}))
    try:
        drill = restore_drill_733(config_path=str(config_file), return_state=True)
        assert drill.is_failed() and "nothing is archived" in str(drill.message) + str(drill.data)
        paths = [f"00622/20260110/scan_{i}.edf" for i in range(3)]
        for p in paths:
            acquire(ctx, p, os.urandom(3000), datetime(2026, 1, 10, 20, tzinfo=UTC))
        assert new_file_733(paths=paths, config_path=str(config_file), return_state=True).is_completed()
        state = archive_733(config_path=str(config_file), return_state=True)
        assert state.is_completed(), state.message
        assert state.result()["verified"] == ["ALS-00622/ALS-00622_2026-1_part001.tar"]
        drill = restore_drill_733(config_path=str(config_file), return_state=True)
        assert drill.is_completed(), drill.message
        assert drill.result()["ok"] and drill.result()["path"] in paths
        last = la.last_drill(ctx.ledger)
        assert last is not None and last.detail["ok"]
        # a bundle that cannot be written fails the run, naming the bundle and the member
        acquire(ctx, "00622/20260111/late.edf", os.urandom(100), datetime(2026, 1, 11, 20, tzinfo=UTC))
        assert new_file_733(paths=["00622/20260111/late.edf"], config_path=str(config_file),
                            return_state=True).is_completed()
        tier_path(ctx, "cfs", "00622/20260111/late.edf").write_bytes(b"changed on cfs")
        failed = archive_733(config_path=str(config_file), return_state=True)
        assert failed.is_failed()
        with pytest.raises(Exception, match=r"part002\.tar") as exc:
            failed.result()
        assert "00622/20260111/late.edf" in str(exc.value)
    finally:
        ctx.close()
