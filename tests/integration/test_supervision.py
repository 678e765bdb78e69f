"""Against the session's real Prefect server: the runner's Prefect adapter (lost-claim race, give-back, crash,
work-pool concurrency limits), the init fixing limits on pools made by hand, and reconcile's runs carrying the
configuration reconcile looked at."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from splash_flows.config import default_config_data
from splash_flows.flows.deploy import InitReport, init_work_pools, sync_client
from splash_flows.flows.run_api import PrefectRunAPI
from splash_flows.ledger import Ledger
from splash_flows.processes import Child, python_argv
from tests.integration.conftest import PrefectServer, Site, installed_deployments, wait_final

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _new_run(api_url: str, deployment: str) -> UUID:
    with sync_client(api_url) as client:
        dep = client.read_deployment_by_name(deployment)
        run_id: UUID = client.create_flow_run_from_deployment(dep.id, parameters={"paths": []}
                                                              if "dispatcher" in deployment else {}).id
        return run_id


def _state(api_url: str, run_id: UUID) -> str:
    with sync_client(api_url) as client:
        state = client.read_flow_run(run_id).state
        return state.name if state is not None else "none"


def test_the_adapter_lets_one_claimant_win_and_gives_runs_back(prefect_server: PrefectServer,
                                                               initialised: InitReport) -> None:
    url = prefect_server.api_url
    run_id = _new_run(url, "dispatcher/run_733_dispatcher")
    with PrefectRunAPI.open(url) as mine, PrefectRunAPI.open(url) as theirs:
        assert [mine.claim(run_id), theirs.claim(run_id)] == [True, False]  # the lost-claim race
        assert _state(url, run_id) == "Pending"
        mine.mark_owner(run_id, "splash-runner:host:1:2")
        dep_id = mine.deployment_id("dispatcher/run_733_dispatcher")
        held = {r.id: r.infrastructure_pid for r in mine.active_runs([dep_id])}
        assert held.get(run_id) == "splash-runner:host:1:2"  # what a restarted runner reads to find orphans
        mine.release(run_id, "could not start it")
        assert _state(url, run_id) == "Scheduled"
        due = mine.scheduled_runs("dispatcher_733_pool", datetime.now(UTC))
        assert run_id in {r.id for r in due}  # back in the queue for any executor
        assert dep_id in mine.due_deployments([dep_id], datetime.now(UTC))  # the runner's one read per poll
        assert theirs.claim(run_id)
        theirs.crash(run_id, "runner stopped")
        assert _state(url, run_id) == "Crashed"


def test_the_adapter_gets_no_run_of_a_pool_at_its_concurrency_limit(prefect_server: PrefectServer,
                                                                    initialised: InitReport) -> None:
    if "prune_733" not in installed_deployments():
        pytest.skip("prune_733 is not installed in this checkout")
    from prefect.states import Cancelled, Running

    url = prefect_server.api_url
    busy, waiting = _new_run(url, "prune_733/prune_733"), _new_run(url, "prune_733/prune_733")
    try:
        with sync_client(url) as client:
            client.set_flow_run_state(busy, Running(), force=True)  # a process worker runs a prune
            dep = client.read_deployment_by_name("prune_733/prune_733")
            by_deployment = client.get_scheduled_flow_runs_for_deployments([dep.id],
                                                                            scheduled_before=datetime.now(UTC))
        assert waiting in {r.id for r in by_deployment}  # what the runner polled before: a second prune
        with PrefectRunAPI.open(url) as api:
            assert waiting not in {r.id for r in api.scheduled_runs("prune_733_pool", datetime.now(UTC))}
            with sync_client(url) as client:
                client.set_flow_run_state(busy, Cancelled(), force=True)
            assert waiting in {r.id for r in api.scheduled_runs("prune_733_pool", datetime.now(UTC))}
    finally:
        with sync_client(url) as client:
            for run_id in (busy, waiting):
                client.set_flow_run_state(run_id, Cancelled(), force=True)


def test_init_gives_pools_made_by_hand_the_limits_the_flows_need(prefect_server: PrefectServer,
                                                                 initialised: InitReport) -> None:
    env = prefect_server.env()
    for pool in ("prune_733_pool", "dispatcher_733_pool"):  # as after `prefect work-pool create NAME`
        done = subprocess.run(python_argv("-m", "prefect", "work-pool", "clear-concurrency-limit", pool),
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    report = init_work_pools(prefect_server.api_url, names=installed_deployments())
    assert report.pools["prune_733_pool"].endswith("concurrency limit set: None -> 1")
    assert report.pools["dispatcher_733_pool"].endswith("concurrency limit set: None -> 4")
    with sync_client(prefect_server.api_url) as client:
        limits = {p.name: p.concurrency_limit for p in client.read_work_pools()}
    assert limits["prune_733_pool"] == 1 and limits["dispatcher_733_pool"] == 4
    again = init_work_pools(prefect_server.api_url, names=installed_deployments())
    assert all(what.startswith("exists (type process, concurrency limit") for what in again.pools.values())


def test_reconcile_runs_use_reconciles_configuration_not_the_runners(
        prefect_server: PrefectServer, initialised: InitReport, site: Site,
        start_process: Callable[..., Child], tmp_path: Path) -> None:
    # the runner reads $SPLASH_FLOWS_CONFIG = the session site; reconcile looks at another site
    start_process("runner", "-m", "splash_flows", "runner", "--limit", "2", "--poll", "0.3")
    other = tmp_path / "other-site"
    data = default_config_data(other)
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True)
    config = other / "splash-flows.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    paths = [f"x1/only_here_{i}.edf" for i in range(3)]
    for rel in paths:
        (other / "data733" / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / "data733" / rel).write_bytes(b"frame %d" % len(rel))
    done = subprocess.run(python_argv("-m", "splash_flows", "--config", str(config), "reconcile", "--min-age", "0",
                                      "--json"), env=prefect_server.env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["root"] == str(other / "data733") and out["config_path"] == str(config)
    states = wait_final(prefect_server.api_url, out["flow_runs"])
    assert all(s.is_completed() for s in states.values()), {k: s.message for k, s in states.items()}
    ledger = Ledger.open(data["ledger"]["url"])
    try:
        assert {t: ledger.count_verified(t, paths, "data733") for t in ("lamarr", "cfs")} == {"lamarr": 3, "cfs": 3}
    finally:
        ledger.close()
    text = subprocess.run(python_argv("-m", "splash_flows", "--config", str(config), "reconcile", "--min-age", "0",
                                      "--dry-run"), env=prefect_server.env(), capture_output=True, text=True,
                          timeout=120, check=True).stdout
    assert f"looked at data733 root {other / 'data733'}: 0 file(s) to send, 3 verified everywhere" in text
