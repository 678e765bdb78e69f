"""The in-process runner's logic against ``FakeRunAPI`` (which behaves as the Prefect server on these calls;
tests/integration/test_supervision.py checks the real adapter against a real server): lost claims, runs given
back when anything fails after a claim, work-pool concurrency limits, cancellation before start, grace expiry."""

from __future__ import annotations

import threading
from concurrent.futures import wait
from pathlib import Path

import httpx
import pytest

from splash_flows.flows.deploy import DeploymentSpec
from splash_flows.flows.runner import InProcessRunner, ServedDeployment
from tests.fakes.run_api import FakeRun, FakeRunAPI

DISPATCH = "dispatcher/run_733_dispatcher"
PRUNE = "prune_733/prune_733"


def _runner(api: FakeRunAPI, flows: dict[str, object], *, limit: int = 4, grace: float = 60.0) -> InProcessRunner:
    served = []
    for full_name, flow in flows.items():
        pool = api.pool_of[api.deployments[full_name]]
        spec = DeploymentSpec(name=full_name.split("/")[1], entrypoint="x.y", pool=pool)
        served.append(ServedDeployment(spec=spec, flow=flow, full_name=full_name))
    return InProcessRunner("http://fake/api", served, limit=limit, poll_seconds=0.01, grace_seconds=grace)


def _settle(runner: InProcessRunner, api: FakeRunAPI) -> None:
    """Wait for every started run to finish and reap it (the runner keeps serving)."""
    wait(list(runner._active), timeout=30)
    runner._reap()
    assert runner._active == {}


def _api() -> FakeRunAPI:
    return FakeRunAPI({DISPATCH: "dispatcher_733_pool", PRUNE: "prune_733_pool"}, {"prune_733_pool": 1})


def test_a_run_claimed_by_another_executor_first_is_not_run_here() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    api.before_claim = lambda r: r.set("Pending")  # a process worker won the race between poll and claim
    runner = _runner(api, {DISPATCH: lambda: None})
    runner.poll_once(api)
    _settle(runner, api)
    assert runner.stats.lost_claims == 1 and runner.stats.claimed == 0
    assert api.executed == [] and run.state.name == "Pending"


def test_a_run_whose_read_fails_after_the_claim_goes_back_to_scheduled_and_runs_later() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    api.fail_next("read_run", httpx.ConnectError("connection refused"))
    runner = _runner(api, {DISPATCH: lambda: None})
    with pytest.raises(httpx.ConnectError):  # the loop treats it as an API outage and polls again
        runner.poll_once(api)
    assert run.state.name == "Scheduled" and run.history == ["Scheduled", "Pending", "Scheduled"]
    assert "could not read it: ConnectError" in run.state.message
    runner.poll_once(api)
    _settle(runner, api)
    assert run.state.name == "Completed" and api.executed == [run.id]


def test_a_give_back_that_fails_too_is_retried_until_the_run_is_scheduled_again() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    api.fail_next("read_run", httpx.ReadTimeout("timed out"))
    api.fail_next("release", httpx.ConnectError("down"), httpx.ConnectError("still down"))
    runner = _runner(api, {DISPATCH: lambda: None})
    with pytest.raises(httpx.ReadTimeout):
        runner.poll_once(api)
    assert run.state.name == "Pending"
    runner.retry_releases(api)
    assert run.state.name == "Pending"
    runner.retry_releases(api)
    assert run.state.name == "Scheduled"


def test_a_run_the_thread_pool_refuses_goes_back_to_scheduled() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    runner = _runner(api, {DISPATCH: lambda: None})
    runner._pool.shutdown()  # submit() now raises RuntimeError, as after an interpreter shutdown began
    with pytest.raises(RuntimeError):
        runner.poll_once(api)
    assert run.state.name == "Scheduled" and "could not start it: RuntimeError" in run.state.message


def test_the_pool_concurrency_limit_holds_against_other_executors_and_the_runner_itself() -> None:
    api = _api()
    busy = api.add_run(PRUNE, "held by a process worker")
    busy.set("Running")
    first, second = api.add_run(PRUNE), api.add_run(PRUNE)
    release = threading.Event()
    runner = _runner(api, {PRUNE: release.wait}, limit=4)
    runner.poll_once(api)
    assert api.executed == []  # the pool's one slot is taken elsewhere
    busy.set("Completed")
    runner.poll_once(api)
    runner.poll_once(api)
    assert len(runner._active) == 1  # one prune at a time, although the runner's own limit is 4
    release.set()
    _settle(runner, api)
    runner.poll_once(api)
    _settle(runner, api)
    assert {first.state.name, second.state.name} == {"Completed"}


def test_a_run_cancelled_after_the_claim_is_marked_cancelled_and_never_started() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    api.after_claim = lambda r: r.set("Cancelling")  # `prefect flow-run cancel` between claim and start
    called: list[int] = []
    runner = _runner(api, {DISPATCH: lambda: called.append(1)})
    runner.poll_once(api)
    _settle(runner, api)
    assert run.state.name == "Cancelled" and called == [] and api.executed == []
    assert runner.stats.finished == {"Cancelled before start": 1}


def test_a_run_cancelled_just_before_the_engine_starts_it_is_marked_cancelled() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    gate = threading.Event()
    runner = _runner(api, {DISPATCH: lambda: None})
    original = api.execute

    def execute_late(flow: object, flow_run: FakeRun) -> str:
        gate.wait(5)
        return original(flow, flow_run)

    api.execute = execute_late  # type: ignore[method-assign]
    runner.poll_once(api)
    run.set("Cancelling")
    gate.set()
    _settle(runner, api)
    assert run.state.name == "Cancelled" and api.executed == []
    assert runner.stats.finished == {"Cancelled before start": 1}


def test_runs_still_in_flight_when_the_grace_period_ends_are_marked_crashed(tmp_path: Path) -> None:
    api = _api()
    slow, other = api.add_run(DISPATCH), api.add_run(DISPATCH)
    release = threading.Event()
    runner = _runner(api, {DISPATCH: lambda: release.wait(30)}, limit=2, grace=0.2)
    runner.poll_once(api)
    runner.stop()
    try:
        assert runner.drain(api) == 1
        assert slow.state.name == other.state.name == "Crashed"
        assert "runner stopped during this run" in slow.state.message
    finally:
        release.set()


def test_runs_that_finish_within_the_grace_period_are_not_crashed() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    release = threading.Event()
    runner = _runner(api, {DISPATCH: lambda: release.wait(30)}, grace=10)
    runner.poll_once(api)
    runner.stop()
    threading.Timer(0.2, release.set).start()
    assert runner.drain(api) == 0
    assert run.state.name == "Completed"


def test_a_run_whose_engine_died_mid_run_is_marked_crashed_once_the_api_answers() -> None:
    api = _api()
    run = api.add_run(DISPATCH)
    api.fail_next("engine", httpx.ConnectError("connection refused"))  # the server went away mid-run
    api.fail_next("crash", httpx.ConnectError("still away"))
    runner = _runner(api, {DISPATCH: lambda: None})
    runner.poll_once(api)
    _settle(runner, api)
    assert run.state.name == "Running"  # what the server shows: it would hold a pool slot forever
    runner.retry_releases(api)
    assert run.state.name == "Running"
    runner.retry_releases(api)
    assert run.state.name == "Crashed" and "flow engine failed: ConnectError" in run.state.message
    runner.retry_releases(api)
    assert run.history.count("Crashed") == 1


def test_runs_left_running_by_a_runner_that_is_gone_are_crashed_and_others_are_left_alone() -> None:
    import subprocess
    import sys

    from splash_flows.flows.runner import owner_tag

    api = _api()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_tag = owner_tag(gone.pid)  # a runner that claimed runs, then was killed with SIGKILL
    gone.wait()
    orphan, prune_orphan = api.add_run(DISPATCH), api.add_run(PRUNE)
    for run in (orphan, prune_orphan):
        run.set("Running")
        run.infrastructure_pid = dead_tag
    live = api.add_run(DISPATCH)
    live.set("Running")
    live.infrastructure_pid = owner_tag()  # a runner alive (this process)
    worker = api.add_run(DISPATCH)
    worker.set("Running")
    worker.infrastructure_pid = "otherhost:1234"  # a process worker's own format: not ours to judge
    elsewhere = api.add_run(DISPATCH)
    elsewhere.set("Running")
    elsewhere.infrastructure_pid = "splash-runner:another-host:1:1"
    waiting = api.add_run(PRUNE)
    runner = _runner(api, {DISPATCH: lambda: None, PRUNE: lambda: None})
    runner.poll_once(api)  # the prune pool's one slot is held by the orphan: nothing runs
    assert waiting.state.name == "Scheduled"
    assert sorted(map(str, runner.crash_orphans(api))) == sorted(map(str, [orphan.id, prune_orphan.id]))
    assert orphan.state.name == prune_orphan.state.name == "Crashed" and "is gone" in orphan.state.message
    assert {live.state.name, worker.state.name, elsewhere.state.name} == {"Running"}
    runner.poll_once(api)
    _settle(runner, api)
    assert waiting.state.name == "Completed" and waiting.infrastructure_pid == runner.owner


def test_a_pool_is_polled_when_a_run_of_it_is_due_and_otherwise_only_on_its_heartbeat() -> None:
    """Each pool poll is a write on the server: an idle runner makes one read per loop, not one poll per pool."""
    api = _api()
    runner = _runner(api, {DISPATCH: lambda: None, PRUNE: lambda: None})
    runner.pool_heartbeat_seconds = 3600.0
    runner.poll_once(api)  # first loop: every pool polled once (the heartbeat), nothing due
    for _ in range(5):
        runner.poll_once(api)
    assert api.pool_polls == {"dispatcher_733_pool": 1, "prune_733_pool": 1} and api.due_checks == 6
    run = api.add_run(DISPATCH)
    runner.poll_once(api)  # due: its pool is polled at once, the idle pool is not
    _settle(runner, api)
    assert run.state.name == "Completed"
    assert api.pool_polls == {"dispatcher_733_pool": 2, "prune_733_pool": 1}
    runner.pool_heartbeat_seconds = 0.0
    runner.poll_once(api)  # heartbeat due: every pool polled again
    assert api.pool_polls == {"dispatcher_733_pool": 3, "prune_733_pool": 2}


def test_a_nudge_from_the_watcher_makes_the_runner_poll_at_once() -> None:
    """``flows.wake``: the watcher's trigger nudges the runner of its stack after Prefect created the run, so the
    run is claimed without waiting for the poll interval (here an hour). The run itself still goes through the
    orchestrator's claim, as every run does."""
    import contextlib
    import uuid as uuid_mod

    from splash_flows.flows.wake import listen, send_wake

    api = _api()
    name = f"splash-test-{uuid_mod.uuid4().hex}"
    assert send_wake(name) is False  # nobody listens yet: never raises, never blocks
    runner = _runner(api, {DISPATCH: lambda: None})
    runner.poll_seconds = 3600.0
    runner.wake_name = name
    runner._api_factory = lambda _url: contextlib.nullcontext(api)  # type: ignore[assignment,return-value]
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until = threading.Event()
        for _ in range(300):  # the runner's first loop (resolve, first poll), then it sleeps for its hour
            if api.due_checks >= 1 and send_wake(name):
                break
            wait_until.wait(0.1)
        assert listen(name, lambda _payload: None) is None  # one listener per stack: a second runner just polls
        for _ in range(300):  # the nudge above made one more poll (it named no deployment: a due read)
            if api.due_checks >= 2:
                break
            wait_until.wait(0.1)
        reads = api.due_checks
        run = api.add_run(DISPATCH)
        assert send_wake(name, str(api.deployments[DISPATCH])) is True
        for _ in range(300):
            if run.state.name == "Completed":
                break
            wait_until.wait(0.1)
        assert run.state.name == "Completed" and api.executed == [run.id]
        assert api.due_checks == reads  # the nudge named the deployment: its pool was polled straight away
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert send_wake(name) is False  # the listener is closed with the runner
