"""Against the session's real Prefect server: the runner's flow-run threads keep one Prefect client between
runs instead of letting Prefect's engine build one per run (``flows/run_api.py``): two runs executed through
the adapter on one thread complete with the same client."""

from __future__ import annotations

import threading
from uuid import UUID

import pytest

from splash_flows.flows.deploy import InitReport, sync_client
from splash_flows.flows.run_api import PrefectRunAPI, _thread_state
from tests.integration.conftest import PrefectServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _new_run(api_url: str) -> UUID:
    with sync_client(api_url) as client:
        dep = client.read_deployment_by_name("dispatcher/run_733_dispatcher")
        run_id: UUID = client.create_flow_run_from_deployment(dep.id, parameters={"paths": []}).id
        return run_id


def test_runs_on_one_thread_share_one_kept_client_and_complete(
        prefect_server: PrefectServer, initialised: InitReport) -> None:
    from prefect import flow

    url = prefect_server.api_url

    @flow(name="dispatcher")
    def tiny(paths: list[str], config_path: str | None = None) -> int:
        return len(paths)

    outcomes: list[str] = []
    clients: list[object] = []

    def two_runs() -> None:  # a thread of its own, as the runner's flow-run threads (whose process has the URL)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}), PrefectRunAPI.open(url) as api:
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
