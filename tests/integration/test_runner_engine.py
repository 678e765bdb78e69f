"""Against the session's real Prefect server: what the runner keeps between flow runs instead of letting
Prefect's engine build it per run (``flows/run_api.py``) behaves as Prefect's own per-run versions do.

* ONE suspension observer watches every run the runner executes, and an external suspension of a run still
  reaches that run's suspension request (the observer's events or its polling fallback, as Prefect's).
* A flow run executed through the adapter twice on one thread completes both times with one kept client.
"""

from __future__ import annotations

import threading
import time
from uuid import UUID

import pytest

from splash_flows.flows.deploy import InitReport, sync_client
from splash_flows.flows.run_api import _SHARED_OBSERVER, PrefectRunAPI, _thread_state
from tests.integration.conftest import PrefectServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _new_run(api_url: str) -> UUID:
    with sync_client(api_url) as client:
        dep = client.read_deployment_by_name("dispatcher/run_733_dispatcher")
        run_id: UUID = client.create_flow_run_from_deployment(dep.id, parameters={"paths": []}).id
        return run_id


def test_one_shared_observer_still_delivers_an_external_suspension_to_its_run(
        prefect_server: PrefectServer, initialised: InitReport, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect._flow_run_suspension import FlowRunSuspensionRequest, register_flow_run_suspension_request
    from prefect.states import Paused

    url = prefect_server.api_url
    monkeypatch.setenv("PREFECT_API_URL", url)
    suspended, bystander = _new_run(url), _new_run(url)
    requests = {suspended: FlowRunSuspensionRequest(), bystander: FlowRunSuspensionRequest()}
    with register_flow_run_suspension_request(suspended, requests[suspended]), \
            register_flow_run_suspension_request(bystander, requests[bystander]), \
            _SHARED_OBSERVER.observe(suspended, requests[suspended]), \
            _SHARED_OBSERVER.observe(bystander, requests[bystander]):
        observers = [t for t in threading.enumerate() if t.name == "suspension-observer"]
        assert len(observers) == 1  # one for both runs (Prefect's engine starts one thread per run)
        with sync_client(url) as client:
            client.set_flow_run_state(suspended, Paused(name="Suspended"), force=True)
        deadline = time.monotonic() + 60  # events at once; the observer's polling fallback every 10 s
        while not requests[suspended].is_requested() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requests[suspended].is_requested()
        assert not requests[bystander].is_requested()


def test_runs_on_one_thread_share_one_kept_client_and_complete(
        prefect_server: PrefectServer, initialised: InitReport, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    url = prefect_server.api_url
    monkeypatch.setenv("PREFECT_API_URL", url)

    @flow(name="dispatcher")
    def tiny(paths: list[str], config_path: str | None = None) -> int:
        return len(paths)

    outcomes: list[str] = []
    clients: list[object] = []

    def two_runs() -> None:
        with PrefectRunAPI.open(url) as api:
            for _ in range(2):
                run_id = _new_run(url)
                assert api.claim(run_id)
                outcomes.append(api.execute(tiny, api.read_run(run_id)))
                clients.append(_thread_state.client_context.client)

    thread = threading.Thread(target=two_runs)
    thread.start()
    thread.join(240)
    assert outcomes == ["Completed", "Completed"]
    assert clients[0] is clients[1]
