"""The few Prefect calls the in-process runner makes, behind one small adapter.

``PrefectRunAPI`` is the only place that touches Prefect's orchestration internals (``propose_state_sync``,
``run_flow(flow_run=...)``); ``RunAPI`` is its Protocol, so the runner's logic (claims, releases, cancellation,
the grace period) is tested with a fake that fails on demand (tests/fakes/run_api.py) and the adapter itself
against a real Prefect server (tests/integration/test_supervision.py). When Prefect changes these calls,
this file changes and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import sync_client, wait_for_server

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

    def execute(self, flow: Any, flow_run: Any) -> str:
        from prefect.exceptions import Abort
        from prefect.flow_engine import run_flow

        _keep_thread_client()
        _share_suspension_observer()
        try:
            state = run_flow(flow, flow_run=flow_run, return_type="state")
        except Abort as err:
            raise RunAborted(f"flow run {flow_run.id}: the server refused to start it: {err}") from None
        return str(getattr(state, "name", "unknown"))


# ---------------------------------------------------------------------------------------------------------------
# What Prefect's flow engine builds per flow run, kept for the runner's lifetime instead.
#
# Profiled (py-spy of the runner, 15 single-file runs and a burst of 5 runs): of the wall time a flow-run thread
# spent in Prefect's engine before and after the flow's own code, 40% went to two things the engine builds for
# each run and throws away: a new HTTP client (an SSL context loading the CA bundle, a connection, an API version
# check) and, for a run of a deployment, a "suspension observer" (a new thread, a new event loop, another
# client, a websocket subscription to the server's events, and a wait until it is ready) so that an external
# ``suspend_flow_run`` can pause the run. A process worker pays them once per process anyway; the runner paid
# them once per run. Here each flow-run thread keeps one client, and the runner keeps ONE observer watching
# every run it executes -- the same Prefect classes, the same behaviour (a suspension request reaches its run
# through Prefect's own registry of runs in this process), built once.
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


class SharedSuspensionObserver:
    """One Prefect ``FlowRunSuspendingObserver`` for every flow run this process executes, on a thread of its
    own. ``observe`` has the signature of ``prefect._flow_run_suspension.observe_flow_run_suspension`` and
    replaces it in the flow engine: per run it adds a watch (one read of the run's state) and removes it at the
    end, instead of starting a thread, an event loop, a client and a websocket subscription."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def _on_suspended(self, flow_run_id: UUID, state: Any) -> None:
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested

        mark_flow_run_suspension_requested(flow_run_id, state)  # the run's request, registered before observe

    def _start(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        with self._lock:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                return self._loop, self._observer
            from prefect._internal.observers import FlowRunSuspendingObserver

            ready = threading.Event()
            failure: list[BaseException] = []

            async def serve() -> None:
                try:
                    async with FlowRunSuspendingObserver(on_suspended=self._on_suspended) as observer:
                        self._observer, self._loop = observer, asyncio.get_running_loop()
                        ready.set()
                        await asyncio.Event().wait()  # until the process ends (daemon thread)
                except BaseException as err:
                    failure.append(err)
                    raise
                finally:
                    ready.set()

            def main() -> None:
                try:
                    asyncio.run(serve())
                except Exception as err:  # noqa: BLE001 -- logged; the next run starts a new observer
                    log.warning("the shared suspension observer stopped: %s", err)

            self._loop = self._observer = None
            self._thread = threading.Thread(target=main, name="suspension-observer", daemon=True)
            self._thread.start()
            ready.wait(30)
            if self._loop is None or failure:
                raise OrchestrationError(f"the suspension observer did not start: {failure[:1] or 'timeout'}")
            return self._loop, self._observer

    @contextmanager
    def observe(self, flow_run_id: UUID, suspension_request: Any, polling_interval: float = 10) -> Iterator[None]:
        """Watch ``flow_run_id`` for an external suspension while the body runs (see the class docstring)."""
        try:
            loop, observer = self._start()
            asyncio.run_coroutine_threadsafe(observer.watch_flow_run_id(flow_run_id), loop).result(30)
        except Exception as err:  # noqa: BLE001 -- Prefect's own per-run observer, as before
            log.debug("shared suspension observer unavailable (%s): a per-run one watches %s", err, flow_run_id)
            with _PREFECT_OBSERVE[0](flow_run_id, suspension_request, polling_interval):
                yield
            return
        try:
            yield
        finally:
            loop.call_soon_threadsafe(observer.remove_in_flight_flow_run_id, flow_run_id)


_PREFECT_OBSERVE: list[Any] = []  # [Prefect's own observe_flow_run_suspension] once replaced
_PATCH_LOCK = threading.Lock()
_SHARED_OBSERVER = SharedSuspensionObserver()


def _share_suspension_observer() -> None:
    """Make Prefect's flow engine use ``_SHARED_OBSERVER`` (once per process). If this Prefect has no such hook
    (the engine's internals changed), nothing is replaced and the engine keeps its per-run observer."""
    import prefect.flow_engine as engine

    with _PATCH_LOCK:
        if _PREFECT_OBSERVE:
            return
        original = getattr(engine, "observe_flow_run_suspension", None)
        _PREFECT_OBSERVE.append(original)
        if original is None:
            log.info("this Prefect's flow engine has no observe_flow_run_suspension: per-run observers are kept")
            return
        setattr(engine, "observe_flow_run_suspension", _SHARED_OBSERVER.observe)  # noqa: B010 -- not exported
