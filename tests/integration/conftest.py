"""Real processes for the integration tests: one Prefect server per session (on PostgreSQL), initialised once
with the project's own init, plus helpers to start process workers and runners and to write files the way a
detector does. Everything started here is stopped at the end of the session."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from splash_flows.config import default_config_data, load_config_file
from splash_flows.flows.deploy import InitReport, init_work_pools, read_deployment_specs, server_healthy
from splash_flows.ledger import Ledger
from splash_flows.processes import Child, child_env, descendants, free_port, python_argv, start_child
from tests.support.postgres import PostgresServer

__all__ = ["descendants"]  # re-exported for the tests: every process below a PID, from /proc


@dataclass
class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME and database."""

    home: Path
    port: int
    database_url: str | None
    logs: Path
    child: Child | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        values = {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                  "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.port),
                  "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO", **self.extra_env, **extra}
        if self.database_url:
            values["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return child_env(values)

    def start(self, timeout: float = 180.0) -> None:
        argv = python_argv("-m", "prefect", "server", "start", "--no-ui", "--host", "127.0.0.1",
                           "--port", str(self.port))
        self.child = start_child("prefect-server", argv, env=self.env(), log_path=self.logs / "server.log")
        deadline = time.monotonic() + timeout
        while not server_healthy(self.api_url):
            if not self.child.alive():
                raise RuntimeError(f"prefect server exited; see {self.logs / 'server.log'}:\n"
                                   + (self.logs / "server.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {timeout} s; see {self.logs}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)
            self.child = None


@dataclass
class Site:
    """One configuration (tiers under ``root``, ledger on PostgreSQL) that workers and runners use."""

    root: Path
    config_path: Path
    ledger_url: str

    def tier(self, name: str) -> Path:
        return self.root / name

    def ledger(self) -> Ledger:
        return Ledger.open(self.ledger_url)

    def verified(self, paths: list[str]) -> dict[str, int]:
        ledger = self.ledger()
        try:
            return {t: ledger.count_verified(t, paths, "data733") for t in ("lamarr", "cfs")}
        finally:
            ledger.close()

    def wait_verified(self, paths: list[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.verified(paths)
            if all(n == len(paths) for n in counts.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout} s only {counts} of {len(paths)} files are verified")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def prefect_server(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[PrefectServer]:
    """A real Prefect server on PostgreSQL (asyncpg), shared by the session."""
    base = tmp_path_factory.mktemp("prefect-server")
    url = postgres_server.create_database(f"prefect_it_{os.getpid()}")
    server = PrefectServer(home=base / "home", port=free_port(), logs=base / "logs",
                           database_url=url.replace("+psycopg", "+asyncpg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def initialised(prefect_server: PrefectServer) -> InitReport:
    """The project's init run once against the session server (every deployment whose flow is installed)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    report = init_work_pools(prefect_server.api_url, names=installed_deployments())
    assert {"run_733_dispatcher", "new_file_733"} <= set(report.deployed)
    return report


@pytest.fixture(autouse=True)
def no_run_left_in_flight(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the session server (once the processes it started are stopped): its runs still Pending
    or Running are marked Crashed and its triggered runs nobody took are cancelled. A test that kills a worker
    leaves a run Running that holds a slot of its pool's concurrency limit until the zombie-run automation marks
    it Crashed (minutes); a run nobody took would be executed by the next test's runner, against that test's
    expectations. Every test starts with no run in flight."""
    yield
    if "prefect_server" not in request.fixturenames:
        return
    server: PrefectServer = request.getfixturevalue("prefect_server")
    if server_healthy(server.api_url):
        settle_runs_in_flight(server.api_url, f"left in flight by the test {request.node.name}")


def settle_runs_in_flight(api_url: str, reason: str) -> list[str]:
    """Crash every Pending/Running flow run and cancel every Scheduled run that was triggered (not made by a
    deployment's schedule); return a line per run settled."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import State, StateType
    from prefect.states import Cancelled, Crashed

    settled: list[str] = []
    with SyncPrefectClient(api_url) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED]))))
        for run in runs:
            assert run.state is not None
            if run.state.is_scheduled() and run.auto_scheduled:
                continue
            new: State = Cancelled(message=reason) if run.state.is_scheduled() else Crashed(message=reason)
            client.set_flow_run_state(run.id, new, force=True)
            settled.append(f"{run.id} {run.state.name} -> {new.name}")
    return settled


TEST_ZOMBIE_WINDOW_S = 60


@pytest.fixture
def short_zombie_window(prefect_server: PrefectServer, initialised: InitReport) -> Iterator[int]:
    """The zombie-run automation that ``init-work-pools`` made, with its window cut from
    ``MISSING_AFTER_SECONDS`` (two minutes) to ``TEST_ZOMBIE_WINDOW_S`` for one test -- still two heartbeat
    intervals, so live runs are not crashed -- and put back as specified afterwards."""
    from splash_flows.flows.deploy import sync_client
    from splash_flows.flows.zombies import automation_spec, ensure_automation

    with sync_client(prefect_server.api_url) as client:
        ensure_automation(client, automation_spec(missing_after_s=TEST_ZOMBIE_WINDOW_S))
    yield TEST_ZOMBIE_WINDOW_S
    with sync_client(prefect_server.api_url) as client:
        assert ensure_automation(client) == "updated to the specification"


def installed_deployments() -> list[str]:
    """Deployments of prefect.yaml whose flow module exists in this checkout (all of them once every capability
    is merged; until then prune_733 and flight_check_733 may be missing)."""
    return [s.name for s in read_deployment_specs() if s.unavailable_reason() is None]


@pytest.fixture(scope="session")
def site(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("site")
    data = default_config_data(root)
    data["ledger"]["url"] = postgres_server.create_database(f"ledger_it_{os.getpid()}")
    data["move"]["concurrency"] = 2
    data["move"]["export_control_patterns"] = ["restricted"]
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = root / "splash-flows.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    load_config_file(path)  # valid
    return Site(root=root, config_path=path, ledger_url=data["ledger"]["url"])


@pytest.fixture
def start_process(prefect_server: PrefectServer, site: Site, tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start a child against the session server (worker, runner, CLI); all are stopped after the test."""
    started: list[Child] = []

    def start(name: str, *argv: str, **env: str) -> Child:
        child = start_child(name, python_argv(*argv), log_path=tmp_path / f"{name}-{len(started)}.log",
                            env=prefect_server.env(SPLASH_FLOWS_CONFIG=str(site.config_path), **env))
        started.append(child)
        return child

    yield start
    for child in reversed(started):
        child.stop(timeout=20)


def worker_argv(pool: str, name: str, limit: int = 2) -> list[str]:
    return ["-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit),
            "--name", name]


def write_like_a_detector(path: Path, size: int, *, chunks: int = 4, pause: float = 0.02) -> None:
    """Open, write in chunks with pauses (the file is visible and growing meanwhile), close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    piece = max(1, size // chunks)
    written = 0
    with open(path, "wb") as fh:
        while written < size:
            n = min(piece, size - written)
            fh.write(os.urandom(n))
            fh.flush()
            written += n
            time.sleep(pause)


def wait_final(api_url: str, run_ids: list[str], timeout: float = 120.0) -> dict[str, Any]:
    """Wait until every flow run is in a final state; return id -> state."""
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as client:
        while True:
            states = {rid: client.read_flow_run(UUID(rid)).state for rid in run_ids}
            if all(s is not None and s.is_final() for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"runs not final after {timeout} s: "
                                     f"{ {k: (v.name if v else None) for k, v in states.items()} }")
            time.sleep(0.3)
