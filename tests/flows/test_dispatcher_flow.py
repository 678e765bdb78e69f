"""The dispatcher flow in-process: refused inputs fail the run, valid files still move, run names say which."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from splash_flows.config import default_config_data
from splash_flows.errors import BatchError
from splash_flows.ledger import EventKind, Ledger
from tests.conftest import write_file

pytestmark = pytest.mark.prefect


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """(config file, site root) with ``restricted/`` export-controlled."""
    root = tmp_path / "site"
    data = default_config_data(root)
    data["move"]["export_control_patterns"] = ["restricted"]
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, root


def test_refusals_fail_the_run_but_valid_files_are_moved(prefect_harness: None, site: tuple[Path, Path]) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_file, root = site
    write_file(root / "data733", "ALS/ok 1.edf", os.urandom(300))
    write_file(root / "data733", "ALS/ök2.edf", b"")
    write_file(root / "data733", "restricted/x.edf", b"secret")
    paths = ["ALS/ok 1.edf", "ALS/ök2.edf", "restricted/x.edf", "ALS/missing.edf", "../out.edf"]
    state = dispatcher(paths=paths, config_path=str(config_file), return_state=True)
    assert state.is_failed()
    with pytest.raises(BatchError) as exc:
        state.result()
    assert set(exc.value.failures) == {"restricted/x.edf (refused)", "ALS/missing.edf (refused)",
                                       "../out.edf (refused)"}
    text = str(exc.value)
    assert "data733:restricted/x.edf: refused: export-controlled (matches pattern 'restricted')" in text
    assert "data733:ALS/missing.edf: refused: file not found" in text
    for tier in ("lamarr", "cfs"):
        assert (root / tier / "ALS/ok 1.edf").read_bytes() == (root / "data733/ALS/ok 1.edf").read_bytes()
        assert (root / tier / "ALS/ök2.edf").read_bytes() == b""
        assert not (root / tier / "restricted").exists()
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    try:
        assert {e.path for e in ledger.events(kind=EventKind.REFUSED)} == {"restricted/x.edf", "ALS/missing.edf",
                                                                           "../out.edf"}
        assert ledger.count_verified("cfs", ["ALS/ok 1.edf", "ALS/ök2.edf"], "data733") == 2
    finally:
        ledger.close()


def test_a_clean_batch_completes_with_a_summary(prefect_harness: None, site: tuple[Path, Path]) -> None:
    from prefect.client.orchestration import get_client

    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_file, root = site
    for i in range(3):
        write_file(root / "data733", f"S/{i}.edf", os.urandom(100))
    state = dispatcher(paths=["S/0.edf", "S/1.edf", "S/2.edf", "S/0.edf"], config_path=str(config_file),
                       return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["requested"] == 3 and summary["valid"] == 3 and summary["refused"] == {}
    assert summary["registered"] == 3
    assert summary["tiers"] == {"lamarr": {"copied": 3, "skipped": 0}, "cfs": {"copied": 3, "skipped": 0}}
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "dispatcher-0.edf+3"


def test_move_tasks_retry_only_transient_errors_with_backoff() -> None:
    from splash_flows.flows.bl733.move import move_task
    from splash_flows.flows.common import retry_transient

    for task in (move_task,):
        assert task.retry_condition_fn is retry_transient
        assert task.retries == 2
        delays = task.retry_delay_seconds
        assert isinstance(delays, list) and delays == sorted(delays) and delays[0] < delays[-1]


def test_the_runner_loads_the_deployed_flows_and_names_those_it_cannot() -> None:
    from splash_flows.flows.deploy import DeploymentSpec, read_deployment_specs
    from splash_flows.flows.runner import load_served

    specs = [s for s in read_deployment_specs() if s.name in ("run_733_dispatcher", "new_file_733")]
    specs += [DeploymentSpec("gone", "splash_flows.flows.bl733.nope.flow_x", "p"),
              DeploymentSpec("not_a_flow", "splash_flows.flows.bl733.move.run_move", "p"),
              DeploymentSpec("no_attr", "splash_flows.flows.bl733.move.nothing_here", "p")]
    served, missing = load_served(specs)
    assert [s.full_name for s in served] == ["dispatcher/run_733_dispatcher", "new_file_733/new_file_733"]
    assert missing["gone"] == "entrypoint module splash_flows.flows.bl733.nope is not installed"
    assert "is not a flow" in missing["not_a_flow"]
    assert "nothing_here" in missing["no_attr"]
