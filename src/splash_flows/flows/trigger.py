"""The watcher's ``Trigger`` on Prefect: create one run of the dispatcher deployment per batch.

``run_deployment(..., timeout=0, as_subflow=False, idempotency_key=key)`` returns as soon as the server created
the run (it does not wait for a worker). The server answers a repeated idempotency key with the run it created
the first time, so the watcher's outbox can replay an entry after a crash without a second run.

Errors: anything that means "Prefect cannot be reached or is not ready" (connection refused, timeouts, 5xx, 429,
the deployment not created yet) is ``OrchestrationError`` and the watcher replays the batch later; a 4xx that
says this request itself is wrong (e.g. 422, parameters the deployment rejects) is ``TriggerRejected``.
"""

from __future__ import annotations

from typing import Any

import httpx

from splash_flows.errors import ConfigError, OrchestrationError, TriggerRejected

# 4xx answers that can change without the request changing: replay them
_RETRYABLE_4XX = {401, 403, 404, 408, 409, 425, 429}


def _detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    text = str(body).replace("\n", " ")
    return text[:300] + ("..." if len(text) > 300 else "")


class PrefectDeploymentTrigger:
    """Triggers ``deployment_name`` ("flow/deployment") with ``{"paths": paths, "config_path": config_path}``.

    The Prefect API is the one the environment names (``PREFECT_API_URL``, or the active Prefect profile); it
    must be set: without it Prefect would start a throw-away in-process server whose runs no worker ever sees.
    """

    def __init__(self, deployment_name: str, config_path: str | None) -> None:
        from prefect.settings import PREFECT_API_URL

        api_url = PREFECT_API_URL.value()
        if not api_url:
            raise ConfigError("PREFECT_API_URL is not set: the watcher must trigger runs on a Prefect server "
                              "(e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)")
        self.deployment_name = deployment_name
        self.config_path = config_path
        self.api_url: str = api_url

    def __repr__(self) -> str:
        return f"PrefectDeploymentTrigger({self.deployment_name!r} at {self.api_url})"

    def trigger(self, paths: list[str], idempotency_key: str) -> str:
        """Create (or, for a repeated key, find) the run for ``paths``; return its flow run id."""
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        name = self.deployment_name
        try:
            run = run_deployment(name, parameters={"paths": paths, "config_path": self.config_path}, timeout=0,
                                 as_subflow=False, idempotency_key=idempotency_key)
        except ObjectNotFound:
            raise OrchestrationError(f"deployment {name!r} does not exist on the Prefect server at {self.api_url} "
                                     "(not deployed yet? run `splash-flows init-work-pools`)") from None
        except httpx.HTTPStatusError as err:
            code = err.response.status_code
            message = f"Prefect API at {self.api_url} answered {code} to a run of {name!r}: {_detail(err.response)}"
            if 400 <= code < 500 and code not in _RETRYABLE_4XX:
                raise TriggerRejected(message) from None
            raise OrchestrationError(message) from None
        except httpx.TransportError as err:
            raise OrchestrationError(f"cannot reach the Prefect API at {self.api_url} to run {name!r}: "
                                     f"{type(err).__name__}: {err or 'no answer'}") from None
        if not isinstance(run, FlowRun):  # run_deployment returns a coroutine when an event loop runs here
            raise OrchestrationError("PrefectDeploymentTrigger.trigger must be called from a plain thread, "
                                     "not inside a running event loop")
        return str(run.id)
