"""``splash-flows up``: the whole local stack in one command, on the embedded default layout.

Under ``--root DIR`` (default ``./var/up``): every tier a folder (``DIR/data733``, ``DIR/lamarr``, ...), the
ledger ``DIR/ledger.db``, the configuration ``DIR/splash-flows.yaml`` (written once, then yours to edit), and
``DIR/prefect`` for the Prefect server's SQLite database. It starts, each in its own process group with its log
in ``DIR/logs/``:

1. a Prefect server on 127.0.0.1 (port 4200, or a free one), and waits for its health check;
2. the init: work pools and the deployments of ``prefect.yaml`` (``splash-flows init-work-pools``);
3. what executes flow runs: by default the in-process runner (``splash-flows runner``, ~1 s from trigger to
   verified), or with ``--workers`` one Prefect process worker per pool (the production layout of the seed);
4. the watcher (``splash-flows watch``) when this installation has it.

Ctrl-C or SIGTERM stops every process it started (watcher first, the server last) and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import subprocess
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
from splash_flows.processes import Child, child_env, free_port, python_argv, start_child

READY_LINE = "splash-flows up: ready"


def _tail(path: Path | None, lines: int = 12) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


def watcher_available(env: dict[str, str]) -> bool:
    """Whether this installation has the ``watch`` command (``splash-flows watch --help`` succeeds)."""
    done = subprocess.run(python_argv("-m", "splash_flows", "watch", "--help"), env=env, capture_output=True,
                          timeout=120, check=False)
    return done.returncode == 0


@dataclass
class LocalStack:
    """The processes of ``splash-flows up`` (also used by the benchmark and the integration tests)."""

    root: Path
    port: int = 4200
    limit: int = 4
    workers: bool = False
    watcher: bool = True
    ui: bool = True
    poll: float = 0.5
    extra_env: dict[str, str] = field(default_factory=dict)
    config_path: Path = field(init=False)
    api_url: str = field(init=False, default="")
    children: list[Child] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: IO[str] | None = field(default=None, repr=False)

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
        self.logs.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        return child_env({
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_URL": self.api_url.removesuffix("/api"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "SPLASH_FLOWS_CONFIG": str(self.config_path),
            **self.extra_env,
        })

    def start(self, say: Callable[[str], None] = print) -> None:
        """Start everything; on any failure stop what was started and raise."""
        self.prepare()
        self.port = free_port(self.port)
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = self.env()
        try:
            say(f"starting the Prefect server on 127.0.0.1:{self.port} (log: {self.logs / 'server.log'}) ...")
            server_argv = ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
            server = self._start("server", python_argv(*server_argv, *([] if self.ui else ["--no-ui"])), env)
            self._wait_healthy(server)
            from splash_flows.flows.deploy import init_work_pools

            report = init_work_pools(self.api_url, concurrency=self.limit)
            for line in report.lines():
                say(line)
            if self.workers:
                pools = list(dict.fromkeys(report.pools))
                for pool in pools:
                    self._start(f"worker-{pool}", python_argv(
                        "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                        "--limit", str(self.limit), "--name", f"up-{pool}"), env)
                say(f"started {len(pools)} process worker(s), --limit {self.limit} each")
            else:
                self._start("runner", python_argv("-m", "splash_flows", "runner", "--api-url", self.api_url,
                                                  "--limit", str(self.limit), "--poll", str(self.poll)), env)
                say(f"started the in-process runner (--limit {self.limit})")
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

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = start_child(name, argv, env=env, log_path=self.logs / f"{name}.log", cwd=self.root)
        self.children.append(child)
        return child

    def _wait_healthy(self, server: Child, timeout: float = 180.0) -> None:
        from splash_flows.flows.deploy import server_healthy

        deadline = time.monotonic() + timeout
        while not server_healthy(self.api_url):
            if not server.alive():
                raise OrchestrationError(f"the Prefect server exited (code {server.popen.returncode}); last lines "
                                         f"of {server.log_path}:\n{_tail(server.log_path)}")
            if time.monotonic() > deadline:
                raise OrchestrationError(f"the Prefect server at {self.api_url} did not become healthy in "
                                         f"{timeout:.0f} s; see {server.log_path}")
            time.sleep(0.5)

    def dead_child(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def stop(self) -> None:
        """Stop every child, the last started first (watcher, executors, then the server)."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def up(
    root: Path = typer.Option(Path("var/up"), "--root", help="Folder for the tiers, ledger, config, logs, server."),
    port: int = typer.Option(4200, "--port", min=1, max=65535, help="Prefect server port (a free one if taken)."),
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
        while not stopping["signal"]:
            dead = stack.dead_child()
            if dead is not None:
                err_console.print(f"[bold red]error:[/] {dead.name} exited (code {dead.popen.returncode}); last "
                                  f"lines of {dead.log_path}:\n{_tail(dead.log_path)}\nstopping the stack",
                                  highlight=False, soft_wrap=True)
                code = 1
                break
            time.sleep(0.5)
        console.print("stopping ...", highlight=False)
        stack.stop()
        console.print("stopped.", highlight=False)
        if code:
            raise typer.Exit(code)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
