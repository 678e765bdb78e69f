"""The few Prefect calls the in-process runner makes, behind one small adapter.

``PrefectRunAPI`` is the only place that touches Prefect's orchestration internals (``propose_state_sync``,
``run_flow(flow_run=...)``); ``RunAPI`` is its Protocol, so the runner's logic (claims, releases, cancellation,
the grace period) is tested with a fake that fails on demand (tests/fakes/run_api.py) and the adapter itself
against a real Prefect server (tests/integration/test_supervision.py). When Prefect changes these calls,
this file changes and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import sync_client, wait_for_server
from splash_flows.flows.zombies import HEARTBEAT_SECONDS

log = logging.getLogger("splash_flows.runner")


class RunAPI(Protocol):
    """What the runner needs from the orchestrator. Run objects are Prefect ``FlowRun``s (``id``, ``name``,
    ``deployment_id``, ``state``)."""

    def deployment_id(self, full_name: str) -> UUID:
        """The id of deployment ``flow/deployment``; OrchestrationError if it does not exist."""

    def scheduled_runs(self, pool: str, before: datetime) -> list[Any]:
        """Scheduled runs of ``pool`` due before ``before``, as a worker of that pool would get them: the
        server leaves out every run once the pool's concurrency limit is reached (counting Pending and
        Running runs of the pool, whoever executes them)."""

    def due_deployments(self, deployment_ids: list[UUID], before: datetime) -> set[UUID]:
        """Which of these deployments have a Scheduled run due before ``before``: a read (a pool poll also
        writes: the server records every poll of a pool, its queues and its deployments)."""

    def claim(self, run_id: UUID) -> bool:
        """Propose Pending, as a worker does: True only if this caller won the run."""

    def read_run(self, run_id: UUID) -> Any:
        """The flow run as the server has it now."""

    def mark_owner(self, run_id: UUID, owner: str) -> None:
        """Record which executor holds a claimed run (the run's ``infrastructure_pid``, as workers do)."""

    def active_runs(self, deployment_ids: list[UUID]) -> list[Any]:
        """Pending and Running runs of these deployments (with ``infrastructure_pid``)."""

    def release(self, run_id: UUID, reason: str) -> None:
        """Give a claimed run that was not started back: Scheduled, due now, for any executor."""

    def crash(self, run_id: UUID, reason: str) -> None:
        """Mark a run Crashed (forced: it may be Pending or Running)."""

    def cancel(self, run_id: UUID, reason: str) -> None:
        """Mark a run Cancelled (one cancelled before it started)."""

    def execute(self, flow: Any, flow_run: Any) -> str:
        """Run a claimed flow run with Prefect's engine here; return its final state's name. Raises
        ``RunAborted`` when the server refuses to let it start (it was cancelled meanwhile)."""


class RunAborted(OrchestrationError):
    """The server refused a state change of this run (another executor has it, or it was cancelled)."""


class PrefectRunAPI:
    """``RunAPI`` over a synchronous Prefect client (see ``open``)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._run_settings: Any = None  # Prefect settings for flow runs, built once (``execute``)
        self._settings_lock = threading.Lock()

    @classmethod
    @contextmanager
    def open(cls, api_url: str) -> Iterator[PrefectRunAPI]:
        """Wait for the server's health check, then a client for the adapter's lifetime."""
        wait_for_server(api_url)
        with sync_client(api_url) as client:
            yield cls(client)

    def deployment_id(self, full_name: str) -> UUID:
        from prefect.exceptions import ObjectNotFound

        try:
            dep_id: UUID = self.client.read_deployment_by_name(full_name).id
        except ObjectNotFound:
            raise OrchestrationError(f"deployment {full_name} does not exist on {self.client.api_url}; run "
                                     "`splash-flows init-work-pools` first") from None
        return dep_id

    def scheduled_runs(self, pool: str, before: datetime) -> list[Any]:
        from prefect.exceptions import ObjectNotFound

        try:
            found = self.client.get_scheduled_flow_runs_for_work_pool(pool, scheduled_before=before)
        except ObjectNotFound:
            raise OrchestrationError(f"work pool {pool} does not exist on {self.client.api_url}; run "
                                     "`splash-flows init-work-pools` first") from None
        return [r.flow_run for r in found]

    def due_deployments(self, deployment_ids: list[UUID], before: datetime) -> set[UUID]:
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterNextScheduledStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        runs = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime.model_validate({"before_": before})),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)), limit=200)
        return {r.deployment_id for r in runs if r.deployment_id is not None}

    def _propose(self, state: Any, run_id: UUID, *, force: bool = False) -> Any:
        from prefect.exceptions import Abort
        from prefect.utilities.engine import propose_state_sync

        try:
            return propose_state_sync(self.client, state, flow_run_id=run_id, force=force)
        except Abort as err:
            raise RunAborted(f"flow run {run_id}: the server refused {state.name}: {err}") from None

    def claim(self, run_id: UUID) -> bool:
        from prefect.states import Pending

        try:
            state = self._propose(Pending(), run_id)
        except RunAborted:
            return False
        return bool(state.is_pending())

    def read_run(self, run_id: UUID) -> Any:
        return self.client.read_flow_run(run_id)

    def mark_owner(self, run_id: UUID, owner: str) -> None:
        self.client.update_flow_run(run_id, infrastructure_pid=owner)

    def active_runs(self, deployment_ids: list[UUID]) -> list[Any]:
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        runs: list[Any] = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING]))),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)))
        return runs

    def release(self, run_id: UUID, reason: str) -> None:
        from prefect.states import Scheduled

        self._propose(Scheduled(scheduled_time=datetime.now(UTC), message=reason), run_id, force=True)

    def crash(self, run_id: UUID, reason: str) -> None:
        from prefect.states import Crashed

        self._propose(Crashed(message=reason), run_id, force=True)

    def cancel(self, run_id: UUID, reason: str) -> None:
        from prefect.states import Cancelled

        self._propose(Cancelled(message=reason), run_id, force=True)

    def _settings_context(self) -> Any:
        """The settings every flow run of this runner executes with: the current ones plus heartbeats at the
        interval the zombie-run automation expects (flows/zombies.py), as a process worker's flow-run process
        gets it from its pool's job template. Built once: ``temporary_settings`` per run re-validated every
        setting (0.1-0.5 s of the runner's CPU per run under load); entering a built context is cheap."""
        from prefect.context import SettingsContext, get_settings_context
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

        with self._settings_lock:
            if self._run_settings is None:
                current = get_settings_context()
                self._run_settings = (current.profile, current.settings.copy_with_update(
                    updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: HEARTBEAT_SECONDS}))
            profile, settings = self._run_settings
        return SettingsContext(profile=profile, settings=settings)

    def execute(self, flow: Any, flow_run: Any) -> str:
        from prefect.exceptions import Abort
        from prefect.flow_engine import run_flow

        _keep_thread_client()
        try:
            with self._settings_context():
                state = run_flow(flow, flow_run=flow_run, return_type="state")
        except Abort as err:
            raise RunAborted(f"flow run {flow_run.id}: the server refused to start it: {err}") from None
        return str(getattr(state, "name", "unknown"))


# ---------------------------------------------------------------------------------------------------------------
# What Prefect's flow engine builds per flow run, kept for the runner's lifetime instead.
#
# Profiled (py-spy of the runner, 15 single-file runs and a burst of 5 runs): of the wall time a flow-run thread
# spent in Prefect's engine around the flow's own code, about 12% went to a new HTTP client per run (an SSL
# context loading the CA bundle, a connection, an API version check). Here each flow-run thread keeps one.
#
# Measured and NOT kept: the engine also starts, per run of a deployment, a "suspension observer" (a thread, an
# event loop, a client and a websocket subscription to the server's events) -- 17% of that wall time. One shared
# observer for all runs cut that wait but raised the runner's CPU during a burst by a quarter (7.3 s against
# 5.7 s, PostgreSQL-backed server, same hour) and the burst's total with it; Prefect's per-run observer stays.
# ---------------------------------------------------------------------------------------------------------------

_thread_state = threading.local()


def _keep_thread_client() -> None:
    """Enter one Prefect ``SyncClientContext`` in this (flow-run) thread and never leave it: the engine's
    ``SyncClientContext.get_or_create()`` then finds it and every run of this thread shares one client. If it
    cannot be built (the API is down), the engine builds its own as before."""
    if getattr(_thread_state, "client_context", None) is not None:
        return
    import httpx
    from prefect.context import SyncClientContext

    try:
        context = SyncClientContext()
        context.__enter__()  # stays entered for the thread's lifetime (the thread-pool threads of the runner)
    except (httpx.HTTPError, OSError, RuntimeError) as err:
        log.debug("no kept Prefect client for this thread (the engine makes its own): %s", err)
        return
    _thread_state.client_context = context
