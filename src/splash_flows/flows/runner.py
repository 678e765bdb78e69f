"""A long-lived, in-process runner for the deployments of ``prefect.yaml``: the low-latency way to run flows.

Why: a Prefect process worker starts a new Python process for every flow run (~3-4 s of imports on these
machines) and ``serve()`` spawns one too; measured close-to-verified for one file on a warm local stack was
p50 6.8 s (process worker), 3.9 s (``serve``), 1.1 s (this runner). See docs/DEPLOYMENT.md and
bench/detect_to_safe.py.

How: it imports each deployment's flow once, then polls the server for Scheduled runs of those deployments
(by deployment id, whatever work pool they are attached to), claims each run the way a worker does (proposing
Pending: the server lets exactly one claimant win, so process workers may serve the same deployments at the same
time without a run executing twice) and runs it with Prefect's flow engine in a thread of this process, at most
``limit`` at a time. The deployments themselves are exactly those ``prefect deploy`` made from ``prefect.yaml``;
nothing about them changes.

Limits, stated plainly: runs share this process (a flow that leaked memory would leak it here; ours are thin
wrappers over plain functions); cancelling a run that is already executing is not possible (a Scheduled run
that is cancelled is simply never claimed); a run in flight when this process is killed stays Running on the
server, exactly as with a killed process worker -- the ledger, not the run state, says what happened, and
``splash-flows reconcile`` re-sends whatever is not verified.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from uuid import UUID

import httpx

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import (
    PREFECT_YAML,
    DeploymentSpec,
    read_deployment_specs,
    sync_client,
    wait_for_server,
)

log = logging.getLogger("splash_flows.runner")

DEFAULT_POLL_SECONDS = 0.5
DEFAULT_LIMIT = 4


@dataclass
class ServedDeployment:
    """A deployment this runner serves: its spec, the imported flow and its id on the server."""

    spec: DeploymentSpec
    flow: Any  # prefect.Flow (kept Any: Prefect is imported lazily)
    full_name: str
    id: UUID | None = None


@dataclass
class RunnerStats:
    """Counts since start (for the log and for tests)."""

    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    lost_claims: int = 0


def load_served(specs: Sequence[DeploymentSpec]) -> tuple[list[ServedDeployment], dict[str, str]]:
    """Import each deployment's flow. Returns those that loaded and, for the others, why not."""
    from prefect.exceptions import MissingFlowError, ScriptError
    from prefect.flows import load_flow_from_entrypoint

    served: list[ServedDeployment] = []
    missing: dict[str, str] = {}
    for spec in specs:
        reason = spec.unavailable_reason()
        if reason is not None:
            missing[spec.name] = reason
            continue
        try:
            flow: Any = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
        except (ImportError, ScriptError, MissingFlowError, AttributeError) as err:
            missing[spec.name] = f"entrypoint {spec.entrypoint} cannot be loaded: {type(err).__name__}: {err}"
            continue
        served.append(ServedDeployment(spec=spec, flow=flow, full_name=f"{flow.name}/{spec.name}"))
    return served, missing


class InProcessRunner:
    """Serve deployments by running their flow runs in threads of this process. See the module docstring."""

    def __init__(self, api_url: str, served: Sequence[ServedDeployment], *, limit: int = DEFAULT_LIMIT,
                 poll_seconds: float = DEFAULT_POLL_SECONDS, grace_seconds: float = 60.0) -> None:
        if not served:
            raise OrchestrationError("the runner has no deployment to serve")
        self.api_url = api_url
        self.served = list(served)
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.stats = RunnerStats()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="flow-run")
        self._active: dict[Future[Any], tuple[UUID, str]] = {}
        self._by_id: dict[UUID, ServedDeployment] = {}

    # ------------------------------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the loop to stop claiming runs; in-flight runs are given ``grace_seconds`` to finish."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the runner cleanly (main thread only)."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: no new runs are claimed; waiting for %d in-flight run(s)",
                     signal.Signals(signum).name, len(self._active))
            self.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> int:
        """Serve until ``stop``; return 0, or 1 if runs were still in flight when the grace period ended."""
        wait_for_server(self.api_url)
        outage_since: float | None = None
        last_resolve = 0.0
        with sync_client(self.api_url) as client:
            while not self._stop.is_set():
                try:
                    if time.monotonic() - last_resolve > 60 or not self._by_id:
                        self._resolve(client)
                        last_resolve = time.monotonic()
                    self._reap()
                    self._poll_once(client)
                    if outage_since is not None:
                        log.info("Prefect API at %s answers again (after %.0f s)", self.api_url,
                                 time.monotonic() - outage_since)
                        outage_since = None
                except (httpx.HTTPError, OSError) as err:
                    if outage_since is None:
                        outage_since = time.monotonic()
                        log.warning("Prefect API at %s unreachable (%s); retrying", self.api_url,
                                    type(err).__name__)
                    self._stop.wait(min(5.0, 1.0 + (time.monotonic() - outage_since) / 10))
                    continue
                self._stop.wait(self.poll_seconds)
            return self._drain(client)

    def _resolve(self, client: Any) -> None:
        from prefect.exceptions import ObjectNotFound

        by_id: dict[UUID, ServedDeployment] = {}
        for dep in self.served:
            try:
                dep.id = client.read_deployment_by_name(dep.full_name).id
            except ObjectNotFound:
                raise OrchestrationError(f"deployment {dep.full_name} does not exist on {self.api_url}; run "
                                         "`splash-flows init-work-pools` first") from None
            by_id[dep.id] = dep
        if by_id.keys() != self._by_id.keys():
            log.info("serving %s (limit %d, poll %.1f s)", ", ".join(d.full_name for d in self.served),
                     self.limit, self.poll_seconds)
        self._by_id = by_id

    def _poll_once(self, client: Any) -> None:
        free = self.limit - len(self._active)
        if free <= 0:
            return
        runs = client.get_scheduled_flow_runs_for_deployments(
            list(self._by_id), scheduled_before=datetime.now(UTC), limit=free)
        for flow_run in runs:
            dep = self._by_id.get(flow_run.deployment_id) if flow_run.deployment_id else None
            if dep is None or not self._claim(client, flow_run.id):
                continue
            claimed = client.read_flow_run(flow_run.id)
            self.stats.claimed += 1
            log.info("claimed flow run %s (%s) of %s", claimed.id, claimed.name, dep.full_name)
            fut = self._pool.submit(self._execute, dep, claimed)
            self._active[fut] = (claimed.id, dep.full_name)

    def _claim(self, client: Any, flow_run_id: UUID) -> bool:
        """Propose Pending, as workers do: True only if this runner won the run."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        try:
            state = propose_state_sync(client, Pending(), flow_run_id=flow_run_id)
        except Abort:
            self.stats.lost_claims += 1
            return False
        if not state.is_pending():
            self.stats.lost_claims += 1
            return False
        return True

    def _execute(self, dep: ServedDeployment, flow_run: Any) -> str:
        """Run one claimed flow run with Prefect's engine; returns the final state's name."""
        from prefect.flow_engine import run_flow

        state = run_flow(dep.flow, flow_run=flow_run, return_type="state")
        return str(getattr(state, "name", "unknown"))

    def _reap(self) -> None:
        for fut in [f for f in self._active if f.done()]:
            run_id, name = self._active.pop(fut)
            err = fut.exception()
            outcome = f"engine error: {type(err).__name__}: {err}" if err is not None else fut.result()
            self.stats.finished[outcome] = self.stats.finished.get(outcome, 0) + 1
            (log.error if err is not None else log.info)("flow run %s of %s finished: %s", run_id, name, outcome)

    def _drain(self, client: Any) -> int:
        deadline = time.monotonic() + self.grace_seconds
        while self._active and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        self._reap()
        if not self._active:
            self._pool.shutdown(wait=True)
            log.info("runner stopped (%d run(s) claimed)", self.stats.claimed)
            return 0
        from prefect.states import Crashed
        from prefect.utilities.engine import propose_state_sync

        for run_id, name in self._active.values():
            log.error("flow run %s of %s still running after %.0f s grace: marking it Crashed; its files are "
                      "re-sent by `splash-flows reconcile` if not verified", run_id, name, self.grace_seconds)
            try:
                propose_state_sync(client, Crashed(message="the splash-flows runner stopped during this run"),
                                   flow_run_id=run_id, force=True)
            except (httpx.HTTPError, OSError) as err:
                log.error("could not mark flow run %s Crashed: %s", run_id, err)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return 1


def build_runner(api_url: str, names: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT,
                 poll_seconds: float = DEFAULT_POLL_SECONDS) -> tuple[InProcessRunner, dict[str, str]]:
    """A runner for the deployments of ``prefect.yaml`` named ``names`` (None: every one whose flow is installed).

    Returns the runner and the deployments left out with the reason (their flow module is not installed).
    """
    specs = read_deployment_specs(PREFECT_YAML)
    if names is not None:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise OrchestrationError(f"{PREFECT_YAML}: no deployment named {', '.join(unknown)}")
        specs = [s for s in specs if s.name in names]
    served, missing = load_served(specs)
    return InProcessRunner(api_url, served, limit=limit, poll_seconds=poll_seconds), missing
