"""The watcher's ``Trigger`` on Prefect: create one run of the dispatcher deployment per batch.

One ``POST /deployments/{id}/create_flow_run`` per batch, with the batch's idempotency key: it returns as soon
as the server created the run (it does not wait for a worker). The server answers a repeated idempotency key
with the run it created the first time, so the watcher's outbox can replay an entry after a crash, a timeout or
a lost answer without a second run.

Errors: anything that means "Prefect cannot be reached or is not ready" (connection refused, timeouts, 5xx, 429,
the deployment not created yet) is ``OrchestrationError`` and the watcher replays the batch later -- a 503 or
429 (``OrchestratorBusy``: the server is up but its database was locked by another write) within a fraction of
a second; a 4xx that says this request itself is wrong (e.g. 422, parameters the deployment rejects) is
``TriggerRejected``.
"""

from __future__ import annotations

from typing import Any

import httpx

from splash_flows.errors import ConfigError, OrchestrationError, OrchestratorBusy, TriggerRejected

# 4xx answers that can change without the request changing: replay them
_RETRYABLE_4XX = {401, 403, 404, 408, 409, 425, 429}
# "busy, try again": the server is up and answered at once (a SQLite-backed server answers 503 when another
# write holds its database lock): replayed within a fraction of a second, not after a back-off
_BUSY = {429, 503}


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

    Each call is bounded: every request has ``timeout`` seconds (connect, read, write, pool) and the Prefect
    client's own retries are off (``PREFECT_CLIENT_MAX_RETRIES`` 0 for these calls). Left on, that client backs
    off 2, 4, 8, 16 and 32 s on a 503 (and forever while the server says it is in maintenance), with the
    watcher's sender blocked inside it. Here a 503, a timeout or a refused connection is an
    ``OrchestrationError`` at once, and the outbox entry -- still pending in the ledger -- is replayed with the
    same idempotency key, so a run the server did create before the answer was lost is found, not made twice.

    One HTTP client is kept between calls (the watcher's sender thread is its only user) and the deployment's
    id is looked up once; both are dropped after a transport error or a 404.
    """

    def __init__(self, deployment_name: str, config_path: str | None, *, timeout: float = 10.0) -> None:
        import prefect.context
        from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

        api_url = PREFECT_API_URL.value()
        if not api_url:
            raise ConfigError("PREFECT_API_URL is not set: the watcher must trigger runs on a Prefect server "
                              "(e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)")
        self.deployment_name = deployment_name
        self.config_path = config_path
        self.api_url: str = api_url
        self.timeout = timeout
        self._client: Any = None  # prefect SyncPrefectClient, opened on first use
        # these settings with the client's retries off, built once: ``temporary_settings`` per call rebuilt them
        # from the environment each time (0.5 s per call, measured on a loaded machine; 3 ms this way)
        current = prefect.context.get_settings_context()
        self._profile = current.profile
        self._settings = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        self._deployment_id: Any = None  # UUID of the deployment, read on first use

    def __repr__(self) -> str:
        return f"PrefectDeploymentTrigger({self.deployment_name!r} at {self.api_url})"

    def close(self) -> None:
        """Close the kept HTTP client (a later ``trigger`` opens a new one)."""
        client, self._client, self._deployment_id = self._client, None, None
        if client is not None:
            client.__exit__(None, None, None)

    def _open(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import SyncPrefectClient

            client = SyncPrefectClient(self.api_url, httpx_settings={"timeout": httpx.Timeout(self.timeout)})
            client.__enter__()
            self._client = client
        return self._client

    def trigger(self, paths: list[str], idempotency_key: str) -> str:
        """Create (or, for a repeated key, find) the run for ``paths``; return its flow run id."""
        import prefect.context
        from prefect.exceptions import ObjectNotFound

        name = self.deployment_name
        try:
            with prefect.context.SettingsContext(profile=self._profile, settings=self._settings):
                client = self._open()
                if self._deployment_id is None:
                    self._deployment_id = client.read_deployment_by_name(name).id
                run = client.create_flow_run_from_deployment(
                    self._deployment_id, parameters={"paths": paths, "config_path": self.config_path},
                    idempotency_key=idempotency_key)
        except ObjectNotFound:
            self._deployment_id = None
            raise OrchestrationError(f"deployment {name!r} does not exist on the Prefect server at {self.api_url} "
                                     "(not deployed yet? run `splash-flows init-work-pools`)") from None
        except httpx.HTTPStatusError as err:
            code = err.response.status_code
            if code == 404:  # the deployment was deleted or made again under a new id: look it up next time
                self._deployment_id = None
            message = f"Prefect API at {self.api_url} answered {code} to a run of {name!r}: {_detail(err.response)}"
            if 400 <= code < 500 and code not in _RETRYABLE_4XX:
                raise TriggerRejected(message) from None
            if code in _BUSY:
                raise OrchestratorBusy(message) from None
            raise OrchestrationError(message) from None
        except httpx.TransportError as err:  # refused, reset, or no answer within ``timeout``
            self.close()
            raise OrchestrationError(f"cannot reach the Prefect API at {self.api_url} to run {name!r}: "
                                     f"{type(err).__name__}: {err or 'no answer'}"
                                     + (f" within {self.timeout:g} s" if isinstance(err, httpx.TimeoutException)
                                        else "")) from None
        from splash_flows.flows.wake import send_wake

        send_wake(deployment_id=str(self._deployment_id))  # this host's runner polls now, not within its poll
        return str(run.id)
