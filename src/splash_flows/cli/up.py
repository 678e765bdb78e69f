"""``splash-flows up``: the whole local stack in one command, on the embedded default layout.

Under ``--root DIR`` (default ``./var/up``): every tier a folder (``DIR/data733``, ``DIR/lamarr``, ...), the
ledger ``DIR/ledger.db``, the configuration ``DIR/splash-flows.yaml`` (written once, then yours to edit), and
``DIR/prefect`` for the Prefect server's SQLite database. It starts, each in its own process group with its log
in ``DIR/logs/``:

1. a Prefect server on 127.0.0.1 (port 4200, ``up.port`` of the configuration or ``--port``; always the same
   one, waiting for it to be released, and an error naming the program that holds it otherwise), and waits for
   its health check. It is Prefect's own server with its SQLite write transactions begun IMMEDIATE
   (``flows/prefect_server.py``: a burst's triggers are not answered 503);
2. the init: work pools and the deployments of ``prefect.yaml`` (``splash-flows init-work-pools``);
3. what executes flow runs: by default the in-process runner (``splash-flows runner``, ~1 s from trigger to
   verified), or with ``--workers`` one Prefect process worker per pool (the production layout of the seed);
4. the watcher (``splash-flows watch``) when this installation has it.

It then supervises them: a child that dies is restarted after 0.5 s, then 1, 2, 4 ... up to 30 s while it keeps
dying, each time with a line naming it, its exit code and the end of its log (a child exiting with code 2, a
configuration error, stops the stack instead). ``DIR/up.json`` always holds the current PIDs and the API URL.

Ctrl-C or SIGTERM stops every process it started within about 10 s (watcher and runner first, the server last)
and nothing else; a run in flight is cut short and finished later by the watcher's outbox or ``reconcile``.
If ``up`` itself is killed (even by SIGKILL), the kernel sends each child SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly
from splash_flows.cli.demo import write_demo_config
from splash_flows.errors import OrchestrationError
from splash_flows.flows.launcher import LAUNCHER_ENV, launcher_name
from splash_flows.flows.wake import WAKE_ENV, wake_name
from splash_flows.processes import (
    Child,
    ChildFailed,
    RestartPolicy,
    Supervised,
    Supervisor,
    child_env,
    claim_port,
    python_argv,
    tail_of,
)

READY_LINE = "splash-flows up: ready"
STATE_FILE = "up.json"
# Ctrl-C budget: the runner gets RUNNER_GRACE s to finish runs in flight, watcher/runner/workers together
# EXECUTORS_STOP s, then the server SERVER_STOP s (SIGKILL for whatever is left at each deadline): under 10 s.
RUNNER_GRACE = 3.0
EXECUTORS_STOP = 5.5
SERVER_STOP = 2.5


def watcher_available(env: dict[str, str]) -> bool:
    """Whether this installation has the ``watch`` command (``splash-flows watch --help`` succeeds)."""
    done = subprocess.run(python_argv("-m", "splash_flows", "watch", "--help"), env=env, capture_output=True,
                          timeout=120, check=False)
    return done.returncode == 0


@dataclass
class LocalStack:
    """The processes of ``splash-flows up`` (also used by the benchmark and the integration tests)."""

    root: Path
    port: int | None = None  # None: ``up.port`` of the configuration (default 4200); 0: any free port
    limit: int = 4
    workers: bool = False
    watcher: bool = True
    ui: bool = True
    poll: float = 0.25
    extra_env: dict[str, str] = field(default_factory=dict)
    config_path: Path = field(init=False)
    api_url: str = field(init=False, default="")
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    notes: list[str] = field(default_factory=list)
    supervisor: Supervisor = field(init=False)
    pools: list[str] = field(default_factory=list)  # the work pools of the deployed flows (set by ``start``)
    _lock: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.policy, on_start=lambda _entry: self.write_state())

    @property
    def children(self) -> list[Child]:
        return self.supervisor.children

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def prepare(self) -> None:
        """Folders, configuration (kept if it exists) and a lock so two stacks never share one ``--root``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        lock = open(self.root / ".up.lock", "w")  # held for the stack lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise OrchestrationError(f"another `splash-flows up` is running on {self.root}") from None
        self._lock = lock
        self.config_path = self.root / "splash-flows.yaml"
        if not self.config_path.exists():
            write_demo_config(self.root, by="up")
        from splash_flows.config import load_config_file

        config = load_config_file(self.config_path)
        for tier in config.tiers.values():
            Path(tier.root).mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = config.up.port
        self.logs.mkdir(exist_ok=True)

    def write_state(self) -> None:
        """``DIR/up.json``: this process, the API URL and each child's current PID (rewritten at each start)."""
        data = {"pid": os.getpid(), "api_url": self.api_url, "port": self.port,
                "children": self.supervisor.pids()}
        tmp = self.root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.root / STATE_FILE)

    def env(self) -> dict[str, str]:
        return child_env({
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_URL": self.api_url.removesuffix("/api"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "SPLASH_FLOWS_CONFIG": str(self.config_path),
            WAKE_ENV: wake_name(str(self.root)),  # the watcher nudges this stack's runner (flows/wake.py)
            LAUNCHER_ENV: launcher_name(str(self.root)),  # workers' runs fork from this stack's launcher
            **self.extra_env,
        })

    def start(self, say: Callable[[str], None] = print) -> None:
        """Start everything; on any failure stop what was started and raise."""
        self.prepare()
        self.supervisor.say = say
        assert self.port is not None  # set by prepare
        self.port = claim_port(self.port)
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = self.env()
        try:
            say(f"starting the Prefect server on 127.0.0.1:{self.port} (log: {self.logs / 'server.log'}) ...")
            # Prefect's server, its SQLite writes taking the lock at BEGIN (flows/prefect_server.py: no 503s)
            server_argv = ["-m", "splash_flows.flows.prefect_server", "server", "start", "--host", "127.0.0.1",
                           "--port", str(self.port)]
            server = self._start("server", python_argv(*server_argv, *([] if self.ui else ["--no-ui"])), env)
            self._wait_healthy(server)
            from splash_flows.flows.deploy import init_work_pools

            report = init_work_pools(self.api_url, concurrency=self.limit)
            for line in report.lines():
                say(line)
            self.pools = list(dict.fromkeys(report.pools))
            if self.workers:
                self.start_workers(self.pools)
            else:
                self.start_runner()
            if self.watcher:
                if watcher_available(env):
                    self._start("watcher", python_argv("-m", "splash_flows", "--config", str(self.config_path),
                                                       "watch"), env)
                    say("started the watcher on data733")
                else:
                    self.notes.append("the watcher is not available in this installation (`splash-flows watch` "
                                      "does not exist): files are moved only when a dispatcher run is triggered")
        except BaseException:
            self.stop()
            raise

    def start_workers(self, pools: list[str]) -> None:
        """One Prefect process worker per pool in ``pools`` (``--workers``: the production layout), and the
        pre-forked launcher their runs start from (``flows/launcher.py``: without it each run imports Prefect
        and the flows anew, ~3 s; a run submitted before it listens starts the engine itself)."""
        if not any(e.name == "launcher" for e in self.supervisor.entries):
            self._start("launcher", python_argv("-m", "splash_flows.flows.launcher", "serve"), self.env())
        for pool in pools:
            self._start(f"worker-{pool}", python_argv(
                "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                "--limit", str(self.limit), "--name", f"up-{pool}"), self.env())
        self.supervisor.say(f"started {len(pools)} process worker(s), --limit {self.limit} each, and their "
                            "launcher")

    def start_runner(self) -> None:
        """The in-process runner (the default executor)."""
        self._start("runner", python_argv("-m", "splash_flows", "runner", "--api-url", self.api_url,
                                          "--limit", str(self.limit), "--poll", str(self.poll),
                                          "--grace", str(RUNNER_GRACE)), self.env())
        self.supervisor.say(f"started the in-process runner (--limit {self.limit})")

    def use_executor(self, *, workers: bool, pools: list[str] | None = None) -> None:
        """Swap what executes flow runs on the running server: stop the runner (or the workers) and start the
        workers of ``pools`` (default: every pool of the deployments), or the runner. The server, the watcher
        and the ledger keep running; runs still scheduled are picked up by the new executor."""
        running = [e.name for e in self.supervisor.entries
                   if e.name in ("runner", "launcher") or e.name.startswith("worker-")]
        for name in running:
            self.supervisor.retire(name, EXECUTORS_STOP)
        if workers:
            self.start_workers(list(self.pools if pools is None else pools))
        else:
            self.start_runner()
        self.workers = workers

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        return self.supervisor.start(name, argv, env=env, log_path=self.logs / f"{name}.log", cwd=self.root)

    def _wait_healthy(self, server: Child, timeout: float = 180.0) -> None:
        from splash_flows.flows.deploy import server_healthy

        deadline = time.monotonic() + timeout
        while not server_healthy(self.api_url):
            if not server.alive():
                raise OrchestrationError(f"the Prefect server exited (code {server.popen.returncode}); last lines "
                                         f"of {server.log_path}:\n{tail_of(server.log_path)}")
            if time.monotonic() > deadline:
                raise OrchestrationError(f"the Prefect server at {self.api_url} did not become healthy in "
                                         f"{timeout:.0f} s; see {server.log_path}")
            time.sleep(0.5)

    def supervise(self) -> list[Supervised]:
        """Restart children that died (see ``Supervisor.check``); raises ``ChildFailed`` for a fatal exit."""
        return self.supervisor.check()

    def stop(self) -> None:
        """Stop every child: watcher, runner and workers together, then the server; about 10 s at most."""
        self.supervisor.stop([(lambda e: e.name != "server", EXECUTORS_STOP),
                              (lambda e: e.name == "server", SERVER_STOP)])
        with contextlib.suppress(OSError):
            (self.root / STATE_FILE).unlink()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def up(
    root: Path = typer.Option(Path("var/up"), "--root", help="Folder for the tiers, ledger, config, logs, server."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="Prefect server port (default: up.port of the configuration, 4200). It "
                                         "never changes: a port held by another program is an error."),
    limit: int = typer.Option(4, "--limit", min=1, max=64, help="Flow runs at once per runner/worker and pool."),
    workers: bool = typer.Option(False, "--workers",
                                 help="Run flows with one Prefect process worker per pool instead of the "
                                      "in-process runner (slower to start each run; the seed's layout)."),
    watcher: bool = typer.Option(True, "--watcher/--no-watcher", help="Start the file watcher on data733."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Prefect UI."),
) -> None:
    """Start the whole local stack: Prefect server, pools and deployments, flow runner(s), the watcher."""
    stack = LocalStack(root=root, port=port, limit=limit, workers=workers, watcher=watcher, ui=ui)
    stopping = {"signal": 0, "started": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["signal"] = signum
        if not stopping["started"]:
            raise KeyboardInterrupt  # abort the start-up; LocalStack.start stops what it had started

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with fail_cleanly():
            try:
                stack.start(say=lambda line: console.print(line, highlight=False, soft_wrap=True))
            except KeyboardInterrupt:
                err_console.print("interrupted during start-up; everything started was stopped", highlight=False)
                raise typer.Exit(130) from None
        stopping["started"] = 1
        for note in stack.notes:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        base = stack.api_url.removesuffix("/api")
        console.print(
            f"\n[bold]{READY_LINE}[/]\n"
            f"  Prefect UI:   {base}{'' if ui else '  (UI disabled)'}\n"
            f"  Prefect API:  {stack.api_url}   (export PREFECT_API_URL={stack.api_url})\n"
            f"  data733:      {stack.root / 'data733'}   <- copy or write scan files here\n"
            f"  status:       splash-flows --config {stack.config_path} status\n"
            f"  by hand:      PREFECT_API_URL={stack.api_url} prefect deployment run dispatcher/run_733_dispatcher "
            f"-p 'paths=[\"a/b.edf\"]'\n"
            f"  logs:         {stack.logs}/\n"
            f"Ctrl-C stops everything this started.", highlight=False, soft_wrap=True)
        code = 0
        stack.supervisor.say = lambda line: err_console.print(f"supervisor: {line}", highlight=False,
                                                              soft_wrap=True, markup=False)
        while not stopping["signal"]:
            try:
                stack.supervise()
            except ChildFailed as err:
                err_console.print(f"[bold red]error:[/] {err}\nstopping the stack", highlight=False,
                                  soft_wrap=True)
                code = 1
                break
            time.sleep(0.2)
        console.print("stopping ... (a run in flight is finished later by the outbox or `reconcile`)",
                      highlight=False)
        began = time.monotonic()
        stack.stop()
        console.print(f"stopped in {time.monotonic() - began:.1f} s.", highlight=False)
        # Exit now: the init imported Prefect's client, whose exit hooks would spend seconds trying to reach
        # the server just stopped. Every child is stopped and every log closed; nothing is left to flush.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
