"""``FakeRunAPI``: the runner's orchestrator port (``splash_flows.flows.run_api.RunAPI``) in memory.

It behaves as the Prefect server does on the calls the runner makes (checked against a real server by
tests/integration/test_supervision.py): only a Scheduled run can be claimed and exactly one claimant wins;
a pool hands out no run once its Pending + Running runs reach its concurrency limit; forced states always apply;
a run whose state is Cancelling/Cancelled cannot start. Failures are injected per method (``fail_next``);
``fail_next("engine", err)`` makes the engine die mid-run, leaving the run Running as Prefect does. Other
executors' moves happen through hooks (``before_claim``, ``after_claim``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from splash_flows.errors import OrchestrationError
from splash_flows.flows.run_api import RunAborted

ACTIVE = {"Pending", "Running"}


@dataclass
class FakeState:
    """The part of a Prefect state the runner reads."""

    name: str
    message: str = ""

    def is_pending(self) -> bool:
        return self.name == "Pending"

    def is_cancelling(self) -> bool:
        return self.name == "Cancelling"

    def is_cancelled(self) -> bool:
        return self.name == "Cancelled"

    def is_final(self) -> bool:
        return self.name in {"Completed", "Failed", "Crashed", "Cancelled"}


@dataclass
class FakeRun:
    id: UUID
    name: str
    deployment_id: UUID
    pool: str
    state: FakeState = field(default_factory=lambda: FakeState("Scheduled"))
    history: list[str] = field(default_factory=lambda: ["Scheduled"])
    infrastructure_pid: str | None = None

    def set(self, name: str, message: str = "") -> None:
        self.state = FakeState(name, message)
        self.history.append(name)


class FakeRunAPI:
    """In-memory orchestrator for the runner's tests. Thread-safe (flows run in the runner's threads)."""

    def __init__(self, deployments: dict[str, str], pool_limits: dict[str, int | None] | None = None) -> None:
        """``deployments``: full name -> pool."""
        self.deployments = {name: uuid4() for name in deployments}
        self.pool_of = {self.deployments[name]: pool for name, pool in deployments.items()}
        self.pool_limits = pool_limits or {}
        self.runs: dict[UUID, FakeRun] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.before_claim: Callable[[FakeRun], None] | None = None
        self.after_claim: Callable[[FakeRun], None] | None = None
        self.executed: list[UUID] = []
        self.pool_polls: dict[str, int] = {}  # pool -> scheduled_runs calls (each a write on a real server)
        self.due_checks = 0
        self._lock = threading.Lock()

    # -- test controls
    def add_run(self, deployment: str, name: str = "") -> FakeRun:
        dep_id = self.deployments[deployment]
        run = FakeRun(id=uuid4(), name=name or f"run-{len(self.runs)}", deployment_id=dep_id,
                      pool=self.pool_of[dep_id])
        self.runs[run.id] = run
        return run

    def fail_next(self, method: str, *errors: BaseException) -> None:
        self.failures.setdefault(method, []).extend(errors)

    def _maybe_fail(self, method: str) -> None:
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    # -- RunAPI
    def deployment_id(self, full_name: str) -> UUID:
        self._maybe_fail("deployment_id")
        if full_name not in self.deployments:
            raise OrchestrationError(f"deployment {full_name} does not exist")
        return self.deployments[full_name]

    def scheduled_runs(self, pool: str, before: datetime) -> list[Any]:
        self._maybe_fail("scheduled_runs")
        with self._lock:
            self.pool_polls[pool] = self.pool_polls.get(pool, 0) + 1
            in_pool = [r for r in self.runs.values() if r.pool == pool]
            due = [r for r in in_pool if r.state.name == "Scheduled"]
            limit = self.pool_limits.get(pool)
            if limit is not None:
                due = due[:max(0, limit - sum(r.state.name in ACTIVE for r in in_pool))]
            return due

    def due_deployments(self, deployment_ids: list[UUID], before: datetime) -> set[UUID]:
        self._maybe_fail("due_deployments")
        with self._lock:
            self.due_checks += 1
            return {r.deployment_id for r in self.runs.values()
                    if r.state.name == "Scheduled" and r.deployment_id in deployment_ids}

    def claim(self, run_id: UUID) -> bool:
        self._maybe_fail("claim")
        run = self.runs[run_id]
        if self.before_claim is not None:
            self.before_claim(run)
        with self._lock:
            if run.state.name != "Scheduled":
                return False
            run.set("Pending")
        if self.after_claim is not None:
            self.after_claim(run)
        return True

    def read_run(self, run_id: UUID) -> Any:
        self._maybe_fail("read_run")
        return self.runs[run_id]

    def mark_owner(self, run_id: UUID, owner: str) -> None:
        self._maybe_fail("mark_owner")
        self.runs[run_id].infrastructure_pid = owner

    def active_runs(self, deployment_ids: list[UUID]) -> list[Any]:
        self._maybe_fail("active_runs")
        return [r for r in self.runs.values() if r.deployment_id in deployment_ids and r.state.name in ACTIVE]

    def release(self, run_id: UUID, reason: str) -> None:
        self._maybe_fail("release")
        self.runs[run_id].set("Scheduled", reason)

    def crash(self, run_id: UUID, reason: str) -> None:
        self._maybe_fail("crash")
        self.runs[run_id].set("Crashed", reason)

    def cancel(self, run_id: UUID, reason: str) -> None:
        self._maybe_fail("cancel")
        self.runs[run_id].set("Cancelled", reason)

    def execute(self, flow: Any, flow_run: Any) -> str:
        self._maybe_fail("execute")
        run = self.runs[flow_run.id]
        with self._lock:
            if run.state.name != "Pending":
                raise RunAborted(f"flow run {run.id}: the server refused Running from {run.state.name}")
            run.set("Running")
        self.executed.append(run.id)
        self._maybe_fail("engine")  # the engine itself dies mid-run (the API went away): the run stays Running
        try:
            flow()
        except Exception as err:  # noqa: BLE001 - a failing flow ends Failed, as Prefect's engine records it
            run.set("Failed", str(err))
            return "Failed"
        run.set("Completed")
        return "Completed"
