"""PrefectDeploymentTrigger against a mocked Prefect REST API (respx on 127.0.0.1): what it sends, and how
each failure maps onto OrchestrationError (replay later) or TriggerRejected (give up on this entry).

The real server path (deployments created by ``init-work-pools``, a worker running the run) is covered by the
deployments' integration tests, which run the watcher against a live ``prefect server``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

respx = pytest.importorskip("respx")

from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.client.schemas.responses import DeploymentResponse  # noqa: E402
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings  # noqa: E402

from splash_flows.errors import ConfigError, OrchestrationError, TriggerRejected  # noqa: E402
from splash_flows.flows.trigger import PrefectDeploymentTrigger  # noqa: E402
from tests.fakes.prefect_api import busy_prefect_api  # noqa: E402

API = "http://127.0.0.1:4299/api"
NAME = "dispatcher/run_733_dispatcher"


@pytest.fixture
def api() -> Iterator[Any]:
    with temporary_settings({PREFECT_API_URL: API, PREFECT_CLIENT_MAX_RETRIES: 0}), \
            respx.mock(assert_all_called=False) as mock:
        mock.get(f"{API}/csrf-token").respond(404)
        yield mock


@pytest.fixture
def deployment() -> DeploymentResponse:
    return DeploymentResponse(id=uuid.uuid4(), name="run_733_dispatcher", flow_id=uuid.uuid4(), labels={})


def _serve_deployment(api: Any, deployment: DeploymentResponse) -> None:
    api.get(f"{API}/deployments/name/{NAME}").respond(200, json=deployment.model_dump(mode="json"))


def test_creates_one_run_with_paths_config_and_key(api: Any, deployment: DeploymentResponse) -> None:
    _serve_deployment(api, deployment)
    run = FlowRun(id=uuid.uuid4(), name="dispatcher-a.edf+1", flow_id=deployment.flow_id, deployment_id=deployment.id)
    create = api.post(f"{API}/deployments/{deployment.id}/create_flow_run").respond(
        201, json=run.model_dump(mode="json"))
    trigger = PrefectDeploymentTrigger(NAME, "/etc/splash/flows.yaml")
    assert trigger.trigger(["s1/a.edf", "s1/ü b.edf"], "splash-watch-key-1") == str(run.id)
    body = json.loads(create.calls.last.request.content)
    assert body["parameters"] == {"paths": ["s1/a.edf", "s1/ü b.edf"], "config_path": "/etc/splash/flows.yaml"}
    assert body["idempotency_key"] == "splash-watch-key-1"
    assert body["state"]["type"] == "SCHEDULED"
    assert body["parent_task_run_id"] is None  # not a subflow of anything


def test_missing_deployment_is_retryable_and_says_what_to_do(api: Any) -> None:
    api.get(f"{API}/deployments/name/{NAME}").respond(404, json={"detail": "Deployment not found"})
    with pytest.raises(OrchestrationError, match="init-work-pools") as info:
        PrefectDeploymentTrigger(NAME, None).trigger(["a.edf"], "k")
    assert not isinstance(info.value, TriggerRejected)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 401])
def test_server_errors_are_retryable(api: Any, deployment: DeploymentResponse, status: int) -> None:
    _serve_deployment(api, deployment)
    # Retry-After: 0 keeps the Prefect client from sleeping before it gives up (retries are off in this test)
    api.post(f"{API}/deployments/{deployment.id}/create_flow_run").respond(
        status, json={"detail": "busy"}, headers={"Retry-After": "0"})
    with pytest.raises(OrchestrationError, match=f"answered {status}") as info:
        PrefectDeploymentTrigger(NAME, None).trigger(["a.edf"], "k")
    assert not isinstance(info.value, TriggerRejected)


def test_invalid_parameters_are_rejected_for_good(api: Any, deployment: DeploymentResponse) -> None:
    _serve_deployment(api, deployment)
    api.post(f"{API}/deployments/{deployment.id}/create_flow_run").respond(
        422, json={"detail": "Error creating flow run: Validation failed for field 'paths'"})
    with pytest.raises(TriggerRejected, match="Validation failed"):
        PrefectDeploymentTrigger(NAME, None).trigger(["a.edf"], "k")


def test_unreachable_api_is_an_orchestration_error(api: Any) -> None:
    api.get(f"{API}/deployments/name/{NAME}").mock(side_effect=httpx.ConnectError("Connection refused"))
    with pytest.raises(OrchestrationError, match=re.escape(f"cannot reach the Prefect API at {API}")):
        PrefectDeploymentTrigger(NAME, None).trigger(["a.edf"], "k")


def test_no_api_url_is_a_config_error() -> None:
    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(ConfigError, match="PREFECT_API_URL"):
        PrefectDeploymentTrigger(NAME, None)


# --- a busy server, over real HTTP: each trigger call is ONE bounded request; the outbox does the retrying


def test_a_503_is_one_request_not_the_prefect_clients_back_off() -> None:
    """Prefect's client would sleep 2, 4, 8, 16, 32 s on 503s with the caller blocked inside: the trigger turns
    those retries off (whatever PREFECT_CLIENT_MAX_RETRIES says) and leaves retrying to the outbox."""
    with busy_prefect_api(["503", "503", "503"]) as api, \
            temporary_settings({PREFECT_API_URL: api.url, PREFECT_CLIENT_MAX_RETRIES: 5}):
        trigger = PrefectDeploymentTrigger(NAME, None, timeout=5)
        with pytest.raises(OrchestrationError, match="answered 503"):
            trigger.trigger(["a.edf"], "k1")
        assert api.create_keys == ["k1"]
        trigger.close()


def test_no_answer_within_the_timeout_is_an_orchestration_error_and_the_replay_finds_the_run() -> None:
    with busy_prefect_api(["hang"], hang_s=30) as api, temporary_settings({PREFECT_API_URL: api.url}):
        trigger = PrefectDeploymentTrigger(NAME, None, timeout=0.3)
        with pytest.raises(OrchestrationError, match=r"ReadTimeout.*within 0\.3 s") as info:
            trigger.trigger(["a.edf"], "k1")
        assert not isinstance(info.value, TriggerRejected)
        # the server did create the run before its answer was lost: the replay with the same key finds it
        run_id = trigger.trigger(["a.edf"], "k1")
        assert list(api.runs) == ["k1"] and run_id == str(api.runs["k1"].id)
        assert api.create_keys == ["k1", "k1"]
        trigger.close()
