"""The Prefect flows, in-process against a temporary server: Completed only when every copy verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splash_flows.config import Config
from tests.conftest import write_file

pytestmark = pytest.mark.prefect



def test_dispatcher_completes_and_verifies(prefect_harness: None, config_file: Path, sqlite_config: Config) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    data733 = config_file.parent / "site" / "data733"
    paths = [f"P/scan_{i}.edf" for i in range(3)]
    for p in paths:
        write_file(data733, p, os.urandom(1000))
    state = dispatcher(paths=paths, config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["tiers"] == {"lamarr": {"copied": 3, "skipped": 0}, "cfs": {"copied": 3, "skipped": 0}}
    for t in ("lamarr", "cfs"):
        for p in paths:
            assert (config_file.parent / "site" / t / p).read_bytes() == (data733 / p).read_bytes()


def test_a_failed_step_fails_the_run_with_its_reason(prefect_harness: None, config_file: Path) -> None:
    from splash_flows.flows.bl733.move import new_file_733

    data733 = config_file.parent / "site" / "data733"
    write_file(data733, "ok.edf", b"fine")
    state = new_file_733(paths=["ok.edf", "gone.edf"], config_path=str(config_file), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"data733:gone.edf: file not found"):
        state.result()
    assert (config_file.parent / "site" / "cfs" / "ok.edf").read_bytes() == b"fine"


def test_a_failed_copy_fails_the_run_and_the_later_steps_still_run(prefect_harness: None, config_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Registration and copies are one task run: when a copy fails, its error still carries the batch's
    report, so the catalogue and the prune dates run for what registered, and the run fails naming the copy."""
    from splash_flows.context import context_from_path
    from splash_flows.flows.bl733 import move
    from splash_flows.ledger import EventKind

    monkeypatch.setattr(move, "move_task", move.move_task.with_options(retries=0))
    site = config_file.parent / "site"
    write_file(site / "data733", "P/a.edf", b"a" * 100)
    write_file(site / "data733", "Q/b.edf", b"b" * 100)
    (site / "lamarr" / "Q").write_bytes(b"a file where lamarr's folder Q should be")
    state = move.new_file_733(paths=["P/a.edf", "Q/b.edf"], config_path=str(config_file), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"lamarr:Q/b.edf"):
        state.result()
    assert (site / "cfs" / "Q" / "b.edf").read_bytes() == b"b" * 100
    ctx = context_from_path(str(config_file))
    try:
        scheduled = {e.path for e in ctx.ledger.events(kind=EventKind.PRUNE_SCHEDULED)}
    finally:
        ctx.close()
    assert scheduled == {"P/a.edf", "Q/b.edf"}
