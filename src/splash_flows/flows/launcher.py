"""A pre-forked launcher for Prefect process workers: each flow run in a new process, without the imports.

Why: a Prefect process worker starts a new Python process for every flow run. In Prefect 3.9 that is two of
them: ``python -m prefect.runner._workspace_supervisor`` (imports Prefect, prepares the run's workspace, runs
the pull steps), which then ``exec``s ``python -m prefect.engine`` (imports Prefect and the flow again, loads
the deployment, runs the pull steps again). Each import of Prefect and our flows costs 2-3.5 s on this machine
(docs/PERFORMANCE.md), so a triggered run waited ~6 s before its first step.

How (the zygote of Android, ``gunicorn --preload``): a long-lived process (``python -m
splash_flows.flows.launcher serve``; ``splash-flows up --workers`` and the VM's ``splash-launcher.service``
start it) imports Prefect's engine and every flow module of ``prefect.yaml`` once, starts no thread and no
event loop, and listens on a Linux abstract Unix socket named by ``SPLASH_FLOWS_LAUNCHER``. The work pools'
job command (``init-work-pools`` sets it in their base job template) is ``python -m splash_flows.flows.launcher
engine``: a client that imports nothing but the standard library. It sends the zygote its environment, working
directory, arguments and its stdin/stdout/stderr (passed as file descriptors: the run's output goes straight to
the worker's pipes). The zygote forks a *keeper* for the request, and the keeper forks the *engine*: a copy of
the zygote that takes the job's exact environment, working directory and file descriptors, rebuilds Prefect's
settings and logging from that environment, and runs ``prefect.engine`` as ``python -m`` would (then exits like
an interpreter does: threads joined, ``atexit`` hooks, so the run's last logs are sent). The keeper waits for
the engine and hands its exit code to the client, which exits with it (or dies of the same signal): the worker
sees exactly what it would have seen from ``python -m prefect.engine``.

What is kept, and how:

* each run in its own process, with nothing shared between runs: the engine process is forked from a zygote
  that never ran a flow, never connected to anything and runs one thread (checked before every fork: with
  more than one thread the zygote refuses, and the client starts the engine itself);
* cancellation and the worker's kill: the worker signals the client (its ``infrastructure_pid``); the client
  forwards SIGTERM, SIGINT and SIGHUP to the engine through the keeper. A client killed with SIGKILL (the
  worker's escalation after its grace period) closes its socket; the keeper then kills the engine with
  SIGKILL. Prefect's control channel (``PREFECT__CONTROL_PORT``) is in the job environment the engine takes,
  so the cancel intent reaches the engine as before;
* crash detection: the engine sends its heartbeats as before (the zombie automation); its exit code or
  signal is the client's;
* never broken: with no ``SPLASH_FLOWS_LAUNCHER`` set, no zygote listening, a zygote that refuses, or one that
  closes before it accepted the request, the client ``exec``s ``python -m prefect.engine`` (the cost of that
  path: one extra start of a small Python, 0.15-0.2 s at load 7). Once the zygote accepted, the client never starts a
  second engine: a keeper that vanishes makes the client exit 1 (the worker marks the run Crashed), and so does a
  zygote silent for 120 s after the request (it might still accept; its keeper then finds no client and stops).
* only this user: the zygote serves only a peer of its own uid (``SO_PEERCRED``); an abstract socket has no file
  permissions, and a request names the configuration a run uses.

A zygote runs the code it imported at its start: after installing a new version, restart it with the workers
(docs/DEPLOYMENT.md). Only Linux (abstract sockets, ``pidfd_open``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

#: Environment variable naming the launcher's abstract socket (the zygote listens there, the clients connect).
LAUNCHER_ENV = "SPLASH_FLOWS_LAUNCHER"
#: Environment variable naming the module a flow run's process runs (default ``prefect.engine``: what Prefect's
#: process worker runs). The zygote reads its own environment, never a request's; the tests set a small module.
ENGINE_ENV = "SPLASH_FLOWS_ENGINE_MODULE"


def engine_module() -> str:
    """The module run as a flow run's engine (``$SPLASH_FLOWS_ENGINE_MODULE``, default ``prefect.engine``)."""
    return os.environ.get(ENGINE_ENV) or "prefect.engine"


#: Modules every zygote imports besides the flow modules: the engine and what it imports to run a flow.
ENGINE_PRELOAD = ("prefect.engine", "prefect.flow_engine", "prefect.flows", "prefect.deployments.steps")
#: What a run of our flows still imported after the fork (measured: 64 modules, the task engine, the flow
#: graph's renderer, anyio's backend, the ledger's SQL dialects); imported when present, skipped when not.
WARM_PRELOAD = ("prefect.task_engine", "prefect.utilities.visualization", "prefect.concurrency.sync",
                "prefect._internal.states", "anyio._backends._asyncio", "anyio.streams.tls",
                "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql", "encodings.idna")
#: Signals the client forwards to the engine (the worker's cancellation and kill send SIGTERM).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_MAGIC = b"SFL1"
_HEADER = struct.Struct("!4sI")
_MAX_REQUEST = 8 * 1024 * 1024
_HANDSHAKE_TIMEOUT = 10.0  # seconds a zygote waits for a request's bytes (it serves one request at a time)


class LauncherRefused(Exception):
    """The zygote did not take the request (the client then starts the engine itself)."""


class LauncherSilent(Exception):
    """The zygote got the request but did not answer in time: it may still start the engine, so the client
    must not start another one (it exits 1; the worker marks the run Crashed)."""


_ANSWER_TIMEOUT = 120.0  # seconds a client waits for "accepted" or a refusal once its request is sent


def launcher_name(root: str) -> str:
    """The launcher socket name of the stack rooted at ``root`` (one per stack, as ``wake.wake_name``)."""
    return "splash-flows-launcher-" + hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]


def _address(name: str) -> str:
    return "\0" + name  # Linux abstract namespace: no file, nothing to clean up


def engine_argv(args: Sequence[str]) -> list[str]:
    """The command Prefect's process worker would run: ``python -m prefect.engine ARGS``."""
    return [sys.executable, "-m", engine_module(), *args]


def launcher_command(python: str | None = None) -> str:
    """The job command of our work pools: this interpreter running the launcher's client."""
    return f"{python or sys.executable} -m splash_flows.flows.launcher engine"


@dataclass(frozen=True)
class Job:
    """What the engine process takes from the client: arguments, environment, working directory (its path, and
    an open descriptor of it when the client could open one), descriptors 0-2."""

    args: list[str]
    env: dict[str, str]
    cwd: str
    fds: list[int]  # the client's 0, 1, 2
    cwd_fd: int | None = None

    def handed(self) -> list[int]:
        """Every descriptor the client handed over."""
        return [*self.fds, *([] if self.cwd_fd is None else [self.cwd_fd])]


# --------------------------------------------------------------------------------------------------- client


def _line(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """The next ``\\n``-terminated line from ``sock`` (None at end of stream)."""
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _handed_fds() -> list[int]:
    """Descriptors 0, 1 and 2 to hand over (``/dev/null`` for one that is closed), then the working directory.
    The directory goes as a descriptor because the zygote may not see the client's path: a worker under
    systemd's ``PrivateTmp`` has its own ``/tmp``, where Prefect makes each run's working directory."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    with contextlib.suppress(OSError):
        fds.append(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    return fds


def exit_like(code: int) -> NoReturn:
    """Exit as the engine did: with its exit code, or killed by the same signal (``code`` < 0)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        os._exit(128 - code)  # the signal did not kill us (it cannot be caught after SIG_DFL, but be sure)
    os._exit(code)


def fallback(args: Sequence[str], reason: str | None) -> NoReturn:
    """Start the engine in this process, as Prefect's process worker would have (``exec``: same PID)."""
    if reason:
        print(f"splash-flows launcher: {reason}; starting the flow run's engine directly", file=sys.stderr,
              flush=True)
    argv = engine_argv(args)
    os.execv(argv[0], argv)


def request(name: str, args: Sequence[str], env: dict[str, str], cwd: str,
            fds: Sequence[int]) -> tuple[socket.socket, bytearray]:
    """Connect to the zygote on ``name`` and send it a job; returns the connected socket (and what it sent after
    its ``accepted`` line) once the zygote accepted. Raises ``LauncherRefused`` when nothing was started, so the caller
    may start the engine itself."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_HANDSHAKE_TIMEOUT)
        sock.connect(_address(name))
        payload = json.dumps({"args": list(args), "env": env, "cwd": cwd}).encode()
        socket.send_fds(sock, [_HEADER.pack(_MAGIC, len(payload))], list(fds))
        sock.sendall(payload)  # a request cut short is refused by the zygote: nothing starts
    except OSError as err:
        sock.close()
        raise LauncherRefused(f"no launcher on {name} ({err})") from None
    buffer = bytearray()
    try:
        sock.settimeout(_ANSWER_TIMEOUT)
        answer = _line(sock, buffer)
    except TimeoutError:
        sock.close()  # a keeper that accepts now finds no client and stops its engine
        raise LauncherSilent(f"the launcher on {name} did not answer in {_ANSWER_TIMEOUT:.0f} s") from None
    except OSError:
        answer = None
    if answer is None or not answer.startswith(b"accepted"):
        sock.close()
        text = answer.decode(errors="replace") if answer is not None else "closed before accepting"
        raise LauncherRefused(f"the launcher on {name} refused the run ({text})")
    sock.settimeout(None)
    return sock, buffer


def client_main(args: Sequence[str]) -> NoReturn:
    """The job command: run the engine in a process forked by the zygote and exit as it did; when no zygote
    takes the job, start the engine here (``exec``)."""
    name = os.environ.get(LAUNCHER_ENV)
    if not name:
        fallback(args, None)
    pending: list[int] = []
    state: dict[str, socket.socket | None] = {"sock": None}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sock = state["sock"]
        if sock is None:
            pending.append(signum)
            return
        with contextlib.suppress(OSError):
            sock.sendall(f"sig {signum}\n".encode())

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED}
    try:
        sock, buffer = request(name, args, dict(os.environ), os.getcwd(), _handed_fds())
    except LauncherRefused as err:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:  # asked to stop before any engine started: stop as the engine would have
            exit_like(-pending[0])
        fallback(args, str(err))
    except LauncherSilent as err:
        print(f"splash-flows launcher: {err}; not starting a second engine", file=sys.stderr, flush=True)
        os._exit(1)
    state["sock"] = sock
    for signum in pending:
        on_signal(signum, None)
    while True:
        try:
            line = _line(sock, buffer)
        except OSError:
            line = None
        if line is None:
            print("splash-flows launcher: the launcher's keeper of this run went away; the run's engine was "
                  "killed", file=sys.stderr, flush=True)
            os._exit(1)
        if line.startswith(b"exit "):
            exit_like(int(line.split()[1]))
        # "started PID": informational


# --------------------------------------------------------------------------------------------------- zygote


def preload_modules(project_file: Path | None, module: str = "prefect.engine") -> list[str]:
    """The modules a zygote imports: the engine's and the flow module of every deployment in ``project_file``
    (the entrypoints are module paths: ``splash_flows.flows.bl733.dispatcher.dispatcher``). With an engine
    other than Prefect's, only that module's package."""
    if module != "prefect.engine":
        return [module.rpartition(".")[0]] if "." in module else []
    modules = list(ENGINE_PRELOAD)
    if project_file is not None:
        import yaml

        spec = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
        for deployment in spec.get("deployments") or []:
            entrypoint = str(deployment.get("entrypoint") or "")
            if entrypoint and ":" not in entrypoint:
                modules.append(entrypoint.rpartition(".")[0])
    return list(dict.fromkeys(modules))


def check_forkable() -> str | None:
    """Why this process must not fork a flow run now (None: it may): a thread besides the main one could hold
    a lock the child would inherit locked, and its state would leak into the run."""
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"the launcher runs {threading.active_count()} threads ({names})"
    return None


def _peer(conn: socket.socket) -> tuple[int, int]:
    """The connected client's (pid, uid), from the kernel (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def _say(text: str) -> None:
    """One line on the launcher's stderr (its log: ``up``'s logs/launcher.log, the unit's journal)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"splash-flows launcher: {text}", file=sys.stderr, flush=True)


def read_job(conn: socket.socket) -> Job:
    """Read one request (header with three descriptors, then the JSON payload) from ``conn``."""
    data, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 4)
    try:
        while len(data) < _HEADER.size:
            more = conn.recv(_HEADER.size - len(data))
            if not more:
                raise LauncherRefused("the request ended early")
            data += more
        magic, size = _HEADER.unpack(data)
        if magic != _MAGIC or size > _MAX_REQUEST or len(fds) not in (3, 4):
            raise LauncherRefused("not a launcher request")
        payload = bytearray()
        while len(payload) < size:
            more = conn.recv(min(65536, size - len(payload)))
            if not more:
                raise LauncherRefused("the request ended early")
            payload += more
        body = json.loads(payload)
        return Job(args=[str(a) for a in body["args"]], env={str(k): str(v) for k, v in body["env"].items()},
                   cwd=str(body["cwd"]), fds=list(fds[:3]), cwd_fd=fds[3] if len(fds) == 4 else None)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def keep(conn: socket.socket, engine_pid: int, run: str = "?") -> NoReturn:
    """The keeper: forward the client's signals to the engine, kill the engine if the client vanishes, and
    send the client the engine's exit code. Never returns (``os._exit``: no hook of the zygote runs here)."""
    code = 1
    reaped = False  # once reaped, the pid may be another process's: never signal it again
    try:
        pidfd: int | None
        try:
            pidfd = os.pidfd_open(engine_pid)
        except (OSError, AttributeError):
            pidfd = None
        buffer = bytearray()
        while True:
            watched: list[int | socket.socket] = [conn] if pidfd is None else [conn, pidfd]
            ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.2)
            done, status = os.waitpid(engine_pid, os.WNOHANG)
            if done:
                reaped = True
                exit_code = os.waitstatus_to_exitcode(status)
                _say(f"flow run {run}: engine pid {engine_pid} exited with code {exit_code}")
                conn.sendall(f"exit {exit_code}\n".encode())
                code = 0
                break
            if conn in ready:
                chunk = conn.recv(4096)
                if not chunk:  # the client is gone (killed): its engine must not outlive it
                    _say(f"flow run {run}: its client went away; killing engine pid {engine_pid}")
                    os.kill(engine_pid, signal.SIGKILL)
                    os.waitpid(engine_pid, 0)
                    reaped = True
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, _, rest = bytes(buffer).partition(b"\n")
                    buffer[:] = rest
                    words = line.split()
                    if len(words) == 2 and words[0] == b"sig" and words[1].isdigit() and int(words[1]) in FORWARDED:
                        _say(f"flow run {run}: forwarding signal {int(words[1])} to engine pid {engine_pid}")
                        os.kill(engine_pid, int(words[1]))
    except BaseException:  # noqa: BLE001 -- the keeper must end by os._exit whatever happened
        if not reaped:  # the keeper cannot watch it any more (its client gone mid-answer, an error): stop it
            with contextlib.suppress(OSError):
                os.kill(engine_pid, signal.SIGKILL)
    os._exit(code)


def handle(conn: socket.socket, listener: socket.socket) -> Job | None:
    """Serve one connection: returns the job in the engine process only (which then runs it); returns None
    in the zygote. Refuses (one line, nothing forked) a peer of another user, a bad request, or when forking
    is unsafe."""
    conn.settimeout(_HANDSHAKE_TIMEOUT)
    try:
        client_pid, uid = _peer(conn)
        if uid != os.getuid():
            _say(f"refused a request of uid {uid} (pid {client_pid}): only uid {os.getuid()} is served")
            conn.sendall(b"refused: another user\n")
            return None
        job = read_job(conn)
    except (OSError, LauncherRefused, ValueError, KeyError, TypeError) as err:
        with contextlib.suppress(OSError):
            conn.sendall(f"refused: {err}\n".encode())
        return None
    why = check_forkable()
    if why is not None:
        _say(f"refused a run for pid {client_pid}: {why}")
        _close_fds(job.handed())
        with contextlib.suppress(OSError):
            conn.sendall(f"refused: {why}\n".encode())
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    keeper = os.fork()
    if keeper:  # the zygote: the keeper has the connection and the descriptors now
        _close_fds(job.handed())
        return None
    # the keeper
    try:
        listener.close()
        # Blocked, not ignored: a group-wide stop reaches the engine and the keeper reports its end; and the
        # engine is forked with them blocked, so one forwarded before it set its handlers waits, never lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        conn.settimeout(None)
        conn.sendall(b"accepted\n")
        engine = os.fork()
    except BaseException:  # noqa: BLE001
        os._exit(1)
    if engine == 0:
        conn.close()
        return job
    _close_fds(job.handed())
    with contextlib.suppress(OSError):
        conn.sendall(f"started {engine}\n".encode())
    run = job.env.get("PREFECT__FLOW_RUN_ID") or " ".join(job.args) or "?"
    _say(f"flow run {run}: engine pid {engine}, for pid {client_pid}")
    keep(conn, engine, run)


def become(job: Job, module: str) -> None:
    """Make this forked process the job's: its descriptors 0-2, signal dispositions as a new interpreter has
    them, its exact environment, working directory and ``sys.path[0]``, and Prefect's settings and logging
    rebuilt from that environment."""
    for target, fd in enumerate(job.fds):
        if fd != target:
            os.dup2(fd, target)
    _close_fds(fd for fd in job.fds if fd > 2)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # one that came meanwhile is delivered now
    os.environ.clear()
    os.environ.update(job.env)
    if job.cwd_fd is not None:
        os.fchdir(job.cwd_fd)  # the client's directory, even where its path means nothing (PrivateTmp)
        os.close(job.cwd_fd)
    else:
        os.chdir(job.cwd)
    sys.path[0] = job.cwd
    sys.argv = [module, *job.args]
    # the zygote's imports stay frozen (gc.freeze): the collector never walks them, so their pages stay shared
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    if "prefect.logging.configuration" in sys.modules:
        from prefect.logging.configuration import setup_logging

        setup_logging(incremental=False)


def run_engine(job: Job, module: str) -> None:
    """Run the engine ``module`` for ``job`` in this (forked) process, as ``python -m prefect.engine`` does."""
    become(job, module)
    # As under ``python -m``: the module runs as ``__main__``, and a later ``import`` of its name loads it anew
    # (the zygote's own copy would also make runpy warn that it was imported before it ran).
    sys.modules.pop(module, None)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class _Stop(Exception):
    pass


def serve(name: str, modules: Sequence[str], *, say: bool = True) -> Job | None:
    """Import ``modules``, then serve requests on ``name`` until SIGTERM or SIGINT. Returns the job in an engine
    process (the caller runs it), None in the zygote when it stops. Raises ``RuntimeError`` when the imports
    started a thread (forking would then be unsafe)."""
    for module in modules:
        importlib.import_module(module)
    for module in WARM_PRELOAD if "prefect.engine" in modules else ():
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    why = check_forkable()
    if why is not None:
        raise RuntimeError(f"the launcher cannot fork flow runs: after importing {', '.join(modules)}, {why}")
    gc.collect()
    gc.freeze()  # the imported objects stay out of the collector's scans: fewer pages copied in each child
    stopping: list[int] = []

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_address(name))
        listener.listen(64)
        listener.settimeout(0.5)
        if say:
            _say(f"listening on {name} (pid {os.getpid()}, {len(modules)} modules imported)")
        while not stopping:
            _reap()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            with conn:
                job = handle(conn, listener)
            if job is not None:
                return job  # the engine process
    finally:
        listener.close()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if say:
        _say("stopped (runs in flight go on)")
    return None


def _reap() -> None:
    """Collect the keepers that ended (they are the zygote's children)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` (the zygote) or ``engine [ARGS]`` (the job command: the client)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["engine"]:
        client_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m splash_flows.flows.launcher",
                                     description="The pre-forked launcher of flow-run processes.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="Import the engine and the flows, then fork a process per run.")
    serve_p.add_argument("--name", default=os.environ.get(LAUNCHER_ENV),
                         help=f"Socket name (default: ${LAUNCHER_ENV}).")
    serve_p.add_argument("--project-file", type=Path, default=None,
                         help="prefect.yaml whose flow modules to import (default: the installed one).")
    serve_p.add_argument("--preload", action="append", default=[], help="Another module to import.")
    sub.add_parser("engine", help="The job command (client): run the engine through the launcher.")
    args = parser.parse_args(argv)
    if not args.name:
        parser.error(f"no socket name: pass --name or set {LAUNCHER_ENV}")
    project = args.project_file
    if project is None:
        project = Path(__file__).resolve().parent / "bl733" / "prefect.yaml"
    module = engine_module()  # read before any request: the zygote's own environment decides it
    job = serve(args.name, [*preload_modules(project if project.exists() else None, module), *args.preload])
    if job is None:
        return 0
    run_engine(job, module)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
