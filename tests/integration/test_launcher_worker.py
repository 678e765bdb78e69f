"""The pre-forked launcher through a real Prefect process worker: the pools' job command (set by
``init-work-pools``) is the launcher's client; with a launcher listening, the run's engine is forked from it (its
log names the run, the engine and the exit code), the run completes and its file is verified on both tiers; a
run cancelled mid-flight through the worker ends Cancelled, its engine stopped by the forwarded SIGTERM.
Without one, the same job command starts the engine itself: every other worker test of this suite runs that way.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable

import pytest

from splash_flows.flows.deploy import InitReport, trigger_deployment
from splash_flows.flows.launcher import LAUNCHER_ENV, launcher_command
from splash_flows.processes import Child
from tests.integration.conftest import PrefectServer, Site, wait_final, worker_argv, write_like_a_detector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _wait_for_line(child: Child, text: str, timeout: float = 120.0) -> str:
    """Wait until ``child``'s log has a line matching the regular expression ``text``; returns the log."""
    deadline = time.monotonic() + timeout
    path = child.log_path
    assert path is not None
    while True:
        log = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        if re.search(text, log):
            return log
        assert child.alive(), f"{path} ended without {text!r}:\n{log[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in {path} after {timeout} s:\n{log[-3000:]}"
        time.sleep(0.1)


def _launcher_and_worker(start_process: Callable[..., Child], worker: str) -> Child:
    """A launcher on a socket of its own, listening, and a process worker of the dispatcher's pool named
    ``worker`` whose job command reaches it; returns the launcher."""
    name = f"splash-flows-it-launcher-{uuid.uuid4().hex[:12]}"
    launcher = start_process("launcher", "-m", "splash_flows.flows.launcher", "serve", "--name", name,
                             **{LAUNCHER_ENV: name})
    _wait_for_line(launcher, f"listening on {name}")
    start_process("worker", *worker_argv("dispatcher_733_pool", worker), **{LAUNCHER_ENV: name})
    return launcher


def test_a_process_workers_run_is_forked_from_the_launcher_and_completes(
        prefect_server: PrefectServer, initialised: InitReport, site: Site,
        start_process: Callable[..., Child]) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(prefect_server.api_url) as client:
        template = client.read_work_pool("dispatcher_733_pool").base_job_template
    assert template["variables"]["properties"]["command"]["default"] == launcher_command()

    launcher = _launcher_and_worker(start_process, "it-launcher")
    rel = f"launcher/{uuid.uuid4().hex[:8]}/scan_001.edf"
    write_like_a_detector(site.tier("data733") / rel, 50_000)
    [run] = trigger_deployment(prefect_server.api_url, [[rel]])
    state = wait_final(prefect_server.api_url, [run], timeout=180)[run]
    assert state.is_completed(), state.message
    site.wait_verified([rel], timeout=30)
    # the engine was forked by the launcher for this run, and exited 0 (the worker saw that code)
    _wait_for_line(launcher, rf"flow run {run}: engine pid \d+ exited with code 0")
    assert launcher.alive()  # the zygote itself ran nothing and serves the next run


def test_the_launcher_command_is_set_on_pools_made_without_it(prefect_server: PrefectServer,
                                                              initialised: InitReport) -> None:
    """A pool created by hand (Prefect's default template: no command) gets the launcher's job command from
    ``init-work-pools``; its other settings are kept."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from splash_flows.flows.deploy import ensure_work_pools

    pool = f"it-launcher-pool-{uuid.uuid4().hex[:8]}"
    bare = ProcessWorker.get_default_base_job_template()
    bare["variables"]["properties"]["stream_output"]["default"] = False
    with SyncPrefectClient(prefect_server.api_url) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=bare,
                                               concurrency_limit=2))
    try:
        outcome = ensure_work_pools(prefect_server.api_url, {pool: 2})
        assert "job command set" in outcome[pool]
        with SyncPrefectClient(prefect_server.api_url) as client:
            props = client.read_work_pool(pool).base_job_template["variables"]["properties"]
        assert props["command"]["default"] == launcher_command()
        assert props["stream_output"]["default"] is False
        assert "job command" not in ensure_work_pools(prefect_server.api_url, {pool: 2})[pool]  # idempotent
    finally:
        with SyncPrefectClient(prefect_server.api_url) as client:
            client.delete_work_pool(pool)


def test_cancelling_a_run_forked_by_the_launcher_stops_its_engine(
        prefect_server: PrefectServer, initialised: InitReport, site: Site,
        start_process: Callable[..., Child]) -> None:
    """The worker's cancellation signals its flow-run process (the launcher's client); the launcher forwards
    it to the engine, which ends, and the run ends Cancelled. The run is held mid-flight deterministically: the
    test holds an exclusive lock on the ledger's ``files`` table, so the run's first ledger step waits."""
    import sqlalchemy as sa
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Cancelling

    launcher = _launcher_and_worker(start_process, "it-launcher-cancel")
    rel = f"launcher/{uuid.uuid4().hex[:8]}/held.edf"
    write_like_a_detector(site.tier("data733") / rel, 10_000)
    site.ledger().close()  # the schema exists (a first run would otherwise create it)
    engine = sa.create_engine(site.ledger_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE files IN ACCESS EXCLUSIVE MODE"))  # held until the rollback
            [run] = trigger_deployment(prefect_server.api_url, [[rel]])
            _wait_for_line(launcher, rf"flow run {run}: engine pid \d+, for pid")
            with SyncPrefectClient(prefect_server.api_url) as client:
                deadline = time.monotonic() + 120
                while (state := client.read_flow_run(uuid.UUID(run)).state) is None or not state.is_running():
                    assert time.monotonic() < deadline, f"the run never ran: {state}"
                    time.sleep(0.2)
                client.set_flow_run_state(uuid.UUID(run), Cancelling(), force=True)
            final = wait_final(prefect_server.api_url, [run], timeout=180)[run]
            conn.rollback()
    finally:
        engine.dispose()
    assert final.is_cancelled(), final
    # the engine ended: by the forwarded SIGTERM, or killed with its client if the worker had to escalate
    log = _wait_for_line(launcher, rf"flow run {run}: (engine pid \d+ exited with code|its client went away)")
    assert f"flow run {run}: forwarding signal {int(signal.SIGTERM)}" in log, log[-3000:]
    assert site.verified([rel]) == {"lamarr": 0, "cfs": 0}
