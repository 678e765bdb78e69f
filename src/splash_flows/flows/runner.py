"""A long-lived, in-process runner for the deployments of ``prefect.yaml``: the low-latency way to run flows.

Why: a Prefect process worker starts a new Python process for every flow run (~3-4 s of imports on these
machines) and ``serve()`` spawns one too; measured close-to-verified for one file on a warm local stack was
p50 6.8 s (process worker), 3.9 s (``serve``), 1.1 s (this runner). See docs/DEPLOYMENT.md and
bench/detect_to_safe.py.

How: it imports each deployment's flow once, then polls the work pools of those deployments for Scheduled runs
exactly as a worker of each pool does (so the server applies each pool's concurrency limit, counting the runs
any executor holds: ``prune_733_pool`` never runs two prunes), keeps the runs of the deployments it serves,
claims each the way a worker does (proposing Pending: the server lets exactly one claimant win, so process
workers may serve the same deployments at the same time without a run executing twice) and runs it with
Prefect's flow engine in a thread of this process, at most ``limit`` at a time. Every Prefect call goes through
``splash_flows.flows.run_api`` (one small adapter). The deployments themselves are exactly those
``prefect deploy`` made from ``prefect.yaml``; nothing about them changes.

A claimed run that cannot be started (the API failed while reading it, the thread pool refused it) is given
back as Scheduled, so it never stays Pending; a run cancelled after the claim and before it started is marked
Cancelled.

Limits, stated plainly: runs share this process (a flow that leaked memory would leak it here; ours are thin
wrappers over plain functions); cancelling a run that is already executing is not possible (a Scheduled run
that is cancelled is simply never claimed); a run in flight when this process is killed stays Running on the
server until a runner starts again on this host: each claimed run records its runner (``infrastructure_pid``
``splash-runner:HOST:PID:START``) and a runner marks Crashed, at start and every minute, the runs whose runner
is gone, so none holds a slot of its pool's concurrency limit forever. A run whose engine failed (the API went
away mid-run) is marked Crashed once the API answers. Either way the ledger, not the run state, says what
happened to the files, and the watcher or ``splash-flows reconcile`` re-sends whatever is not verified.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from uuid import UUID

import httpx

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import PREFECT_YAML, DeploymentSpec, read_deployment_specs
from splash_flows.flows.run_api import PrefectRunAPI, RunAborted, RunAPI

log = logging.getLogger("splash_flows.runner")

DEFAULT_POLL_SECONDS = 0.25  # one read per poll (see InProcessRunner.poll_once): 4 light reads a second when idle
DEFAULT_LIMIT = 4
#: A pool with no run due is still polled this often (Prefect marks a work queue not ready after 60 s unpolled).
POOL_HEARTBEAT_SECONDS = 15.0


OWNER_PREFIX = "splash-runner"


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or None if no
    such process: with the PID it names one process, whatever PIDs are reused later."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tag(pid: int | None = None) -> str:
    """``splash-runner:HOST:PID:START``: what the runner records on each run it claims."""
    pid = os.getpid() if pid is None else pid
    return f"{OWNER_PREFIX}:{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_gone(tag: str | None) -> bool:
    """Whether ``tag`` names a runner process on THIS host that no longer exists. Tags of other hosts, of
    process workers or of a live runner are never "gone": only this host can tell."""
    if not tag or not tag.startswith(f"{OWNER_PREFIX}:"):
        return False
    parts = tag.split(":")
    if len(parts) != 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    pid, ticks = parts[2], parts[3]
    return _start_ticks(int(pid)) != ticks


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
                 poll_seconds: float = DEFAULT_POLL_SECONDS, grace_seconds: float = 60.0,
                 api_factory: Callable[[str], AbstractContextManager[RunAPI]] | None = None,
                 pool_heartbeat_seconds: float = POOL_HEARTBEAT_SECONDS, wake_name: str | None = None) -> None:
        if not served:
            raise OrchestrationError("the runner has no deployment to serve")
        self.api_url = api_url
        self.served = list(served)
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.pool_heartbeat_seconds = pool_heartbeat_seconds
        self._polled: dict[str, float] = {}  # pool -> monotonic time of its last poll
        self.grace_seconds = grace_seconds
        self.stats = RunnerStats()
        self._api_factory = api_factory or _prefect_api
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and by a nudge from the watcher (``wake_name``)
        self._nudged: set[UUID] = set()  # deployments a nudge named since the last poll
        self._nudge_lock = threading.Lock()
        self.wake_name = wake_name
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="flow-run")
        self._active: dict[Future[Any], tuple[UUID, str]] = {}
        self._by_id: dict[UUID, ServedDeployment] = {}
        # claimed runs that could not be started nor yet given back (the API failed too): retried each loop
        self._to_release: dict[UUID, str] = {}
        # runs whose engine failed (e.g. the API went away mid-run): left Running on the server, they would hold
        # a slot of their pool's concurrency limit forever; marked Crashed as soon as the API answers
        self._to_crash: dict[UUID, str] = {}
        self._stop_at: float | None = None
        self.owner = owner_tag()

    @property
    def pools(self) -> list[str]:
        """The work pools of the served deployments, each polled the way a worker of that pool polls."""
        return list(dict.fromkeys(d.spec.pool for d in self.served))

    # ------------------------------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the loop to stop claiming runs; in-flight runs are given ``grace_seconds`` from now to finish."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
        self._stop.set()
        self._wake.set()

    def wake(self, payload: bytes = b"") -> None:
        """Poll now instead of at the end of the poll interval (a run was just created: ``flows.wake``). A payload
        naming a served deployment lets that poll go straight to the deployment's pool."""
        with contextlib.suppress(ValueError):
            deployment = UUID(payload.decode("ascii", "replace"))
            with self._nudge_lock:
                self._nudged.add(deployment)
        self._wake.set()

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
        from splash_flows.flows.wake import listen

        listener = listen(self.wake_name, self.wake)  # None: no nudges (not named, or another runner has them)
        try:
            return self._serve()
        finally:
            if listener is not None:
                listener.close()

    def _serve(self) -> int:
        outage_since: float | None = None
        last_resolve = 0.0
        with self._api_factory(self.api_url) as api:
            while not self._stop.is_set():
                try:
                    if time.monotonic() - last_resolve > 60 or not self._by_id:
                        self._resolve(api)
                        self.crash_orphans(api)
                        last_resolve = time.monotonic()
                    self._reap()
                    self.retry_releases(api)
                    self.poll_once(api)
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
                # the poll interval, or less when the watcher nudges: a nudge that came during the poll above
                # makes this wait return at once; one that comes after the wait returned is covered by the
                # next poll, which starts after the clear
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
            return self.drain(api)

    def _resolve(self, api: RunAPI) -> None:
        by_id: dict[UUID, ServedDeployment] = {}
        for dep in self.served:
            dep.id = api.deployment_id(dep.full_name)
            by_id[dep.id] = dep
        if by_id.keys() != self._by_id.keys():
            log.info("serving %s (limit %d, poll %.1f s; work pools %s with their concurrency limits)",
                     ", ".join(d.full_name for d in self.served), self.limit, self.poll_seconds,
                     ", ".join(self.pools))
        self._by_id = by_id

    def crash_orphans(self, api: RunAPI) -> list[UUID]:
        """Mark Crashed the Pending/Running runs of the served deployments whose runner on this host is gone
        (killed mid-run: the server would show them Running forever, each holding a slot of its pool's
        concurrency limit -- with ``prune_733_pool`` at 1, no prune would ever run again). Their files are
        re-sent by the watcher or ``reconcile``. Returns the runs marked."""
        marked: list[UUID] = []
        for run in api.active_runs(list(self._by_id)):
            if not owner_gone(getattr(run, "infrastructure_pid", None)):
                continue
            api.crash(run.id, f"its runner ({run.infrastructure_pid}) is gone (killed mid-run); files not "
                              "verified are re-sent by the watcher or `splash-flows reconcile`")
            log.warning("flow run %s of a runner that is gone (%s) marked Crashed", run.id, run.infrastructure_pid)
            marked.append(run.id)
        return marked

    def poll_once(self, api: RunAPI) -> None:
        """Claim and start due runs of the served deployments, pool by pool, within ``limit`` and within each
        pool's own concurrency limit (the server hands out no run past it).

        A pool is polled (as its worker would) only when one read says a served deployment of it has a run due,
        and otherwise every ``pool_heartbeat_seconds`` (so the server keeps showing the pool and its deployments
        ready). A pool poll is a write on the server (it records the poll of the pool, its queues and its
        deployments): five pools polled every 0.5 s were ten write transactions a second on an idle server,
        the SQLite-backed server's main cause of "database is locked" (503) answers to triggers."""
        if not self._by_id:
            self._resolve(api)
        if self.limit - len(self._active) <= 0 or self._stop.is_set():
            return
        now = time.monotonic()
        with self._nudge_lock:
            nudged, self._nudged = self._nudged & self._by_id.keys(), set()
        # a nudge named the deployment with a new run: its pool is polled without first reading what is due
        # (one round trip less between the trigger and the claim); others are read at the next poll
        due = nudged or api.due_deployments(list(self._by_id), datetime.now(UTC))
        due_pools = {self._by_id[d].spec.pool for d in due if d in self._by_id}
        for pool in self.pools:
            if pool not in due_pools and now - self._polled.get(pool, -math.inf) < self.pool_heartbeat_seconds:
                continue
            self._polled[pool] = now
            free = self.limit - len(self._active)
            if free <= 0 or self._stop.is_set():
                return
            for flow_run in api.scheduled_runs(pool, datetime.now(UTC)):
                if free <= 0 or self._stop.is_set():
                    break
                dep = self._by_id.get(flow_run.deployment_id) if flow_run.deployment_id else None
                if dep is None:
                    continue  # a deployment of this pool that this runner does not serve
                if not api.claim(flow_run.id):
                    self.stats.lost_claims += 1
                    log.info("flow run %s of %s was claimed by another executor", flow_run.id, dep.full_name)
                    continue
                self.stats.claimed += 1
                if self._start_claimed(api, dep, flow_run.id):
                    free -= 1

    def _start_claimed(self, api: RunAPI, dep: ServedDeployment, run_id: UUID) -> bool:
        """Start a run this runner won. Whatever fails before it runs gives the run back (Scheduled), so no
        run stays Pending forever; a run cancelled meanwhile is marked Cancelled. True when started."""
        try:
            api.mark_owner(run_id, self.owner)
            claimed = api.read_run(run_id)
        except BaseException as err:
            self._give_back(api, run_id, f"the splash-flows runner claimed this run but could not read it: "
                                         f"{type(err).__name__}: {err}")
            raise
        state = claimed.state
        if state is not None and (state.is_cancelling() or state.is_cancelled()):
            api.cancel(run_id, "cancelled before it started")
            self.stats.finished["Cancelled before start"] = self.stats.finished.get("Cancelled before start", 0) + 1
            log.info("flow run %s of %s was cancelled before it started", run_id, dep.full_name)
            return False
        try:
            fut = self._pool.submit(self._execute, api, dep, claimed)
        except BaseException as err:
            self._give_back(api, run_id, f"the splash-flows runner claimed this run but could not start it: "
                                         f"{type(err).__name__}: {err}")
            raise
        self._active[fut] = (run_id, dep.full_name)
        log.info("claimed flow run %s (%s) of %s", run_id, claimed.name, dep.full_name)
        return True

    def _give_back(self, api: RunAPI, run_id: UUID, reason: str) -> None:
        try:
            api.release(run_id, reason)
            log.warning("flow run %s returned to Scheduled: %s", run_id, reason)
            self._to_release.pop(run_id, None)
        except (httpx.HTTPError, OSError, OrchestrationError) as err:
            log.error("flow run %s could not be returned to Scheduled (%s); retrying", run_id, err)
            self._to_release[run_id] = reason

    def retry_releases(self, api: RunAPI) -> None:
        """Settle what an API failure left half-done (called every loop and when stopping): give back claimed
        runs whose give-back failed, and mark Crashed the runs whose engine failed (unless already final)."""
        for run_id, reason in list(self._to_release.items()):
            self._give_back(api, run_id, reason)
        for run_id, reason in list(self._to_crash.items()):
            try:
                state = api.read_run(run_id).state
                if state is None or not state.is_final():
                    api.crash(run_id, reason)
                    log.warning("flow run %s marked Crashed: %s", run_id, reason)
                self._to_crash.pop(run_id)
            except (httpx.HTTPError, OSError, OrchestrationError) as err:
                log.error("flow run %s could not be marked Crashed yet (%s); retrying", run_id, err)
                return

    def _execute(self, api: RunAPI, dep: ServedDeployment, flow_run: Any) -> str:
        """Run one claimed flow run with Prefect's engine; returns the final state's name."""
        try:
            return api.execute(dep.flow, flow_run)
        except RunAborted as err:
            current = api.read_run(flow_run.id).state
            if current is not None and current.is_cancelling():
                api.cancel(flow_run.id, "cancelled before it started")
                return "Cancelled before start"
            return f"not started: {err}"

    def _reap(self) -> None:
        for fut in [f for f in self._active if f.done()]:
            run_id, name = self._active.pop(fut)
            err = fut.exception()
            outcome = f"engine error: {type(err).__name__}: {err}" if err is not None else fut.result()
            self.stats.finished[outcome] = self.stats.finished.get(outcome, 0) + 1
            (log.error if err is not None else log.info)("flow run %s of %s finished: %s", run_id, name, outcome)
            if err is not None:
                self._to_crash[run_id] = f"the splash-flows runner's flow engine failed: {type(err).__name__}: {err}"

    def drain(self, api: RunAPI) -> int:
        """After ``stop``: give in-flight runs what is left of ``grace_seconds`` (counted from ``stop``), then
        mark those still running Crashed. Returns 0 when none was left, else 1."""
        deadline = (self._stop_at if self._stop_at is not None else time.monotonic()) + self.grace_seconds
        while self._active and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._reap()
        with contextlib.suppress(httpx.HTTPError, OSError):
            self.retry_releases(api)
        if not self._active:
            self._pool.shutdown(wait=True)
            log.info("runner stopped (%d run(s) claimed)", self.stats.claimed)
            return 0
        for run_id, name in self._active.values():
            log.error("flow run %s of %s still running after %.0f s grace: marking it Crashed; its files are "
                      "re-sent by the watcher or `splash-flows reconcile` if not verified", run_id, name,
                      self.grace_seconds)
            try:
                api.crash(run_id, "the splash-flows runner stopped during this run")
            except (httpx.HTTPError, OSError, OrchestrationError) as err:
                log.error("could not mark flow run %s Crashed: %s", run_id, err)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return 1


def _prefect_api(api_url: str) -> AbstractContextManager[RunAPI]:
    return PrefectRunAPI.open(api_url)


def build_runner(api_url: str, names: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT,
                 poll_seconds: float = DEFAULT_POLL_SECONDS,
                 wake_name: str | None = None) -> tuple[InProcessRunner, dict[str, str]]:
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
    return InProcessRunner(api_url, served, limit=limit, poll_seconds=poll_seconds, wake_name=wake_name), missing
