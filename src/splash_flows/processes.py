"""Starting, supervising and stopping the child processes of ``splash-flows up``, the init and the tests.

Children get their own process group and the default SIGINT disposition (a worker started from a background
job otherwise ignores SIGINT and therefore SIGTERM too, see docs/DEPLOYMENT.md), so ``stop`` can end a child and
everything it started. Each child also asks the kernel for SIGTERM when the process that started it dies
(``PR_SET_PDEATHSIG``), so a parent killed with SIGKILL leaves no orphan behind. ``Supervisor`` restarts a child
that dies with back-off. Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import splash_flows
from splash_flows.errors import OrchestrationError

OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def package_root() -> Path:
    """The folder holding the ``splash_flows`` package this process runs (``src/`` or ``site-packages``)."""
    return Path(splash_flows.__file__).resolve().parents[1]


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process that imports the same ``splash_flows`` as this one.

    When the package is not installed (run from a source tree via PYTHONPATH), its folder is put first on the
    child's PYTHONPATH as an absolute path, so children started in other folders (a worker's flow runs) find it.
    Telemetry is off unless the caller's environment says otherwise (these machines are offline).
    """
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    root = str(package_root())
    if "site-packages" not in root and "dist-packages" not in root:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        parts = [str(Path(p).resolve()) for p in parts]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([root, *parts]))
    env.update(extra or {})
    return env


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    The probe binds with ``SO_REUSEADDR``, as uvicorn (Prefect's server) does, so connections of a previous
    server still in TIME_WAIT do not count as "taken"; only a socket another program holds (a listener) does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if a server could listen there (see ``port_available``), else a free port chosen by the
    kernel. For tests and the benchmark; ``splash-flows up`` uses ``claim_port``, which never moves."""
    if preferred and port_available(preferred, host):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def listener_of(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port`` (IPv4 or IPv6), when /proc shows it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        return f"pid {proc.name} ({cmd[:120]})"
    return "a process this user cannot see"


def claim_port(port: int, host: str = "127.0.0.1", wait: float = 15.0) -> int:
    """Keep the server on ``port`` (0: a free port chosen by the kernel).

    A port still held by a server that is shutting down (a previous ``up`` of this folder, or the server this
    stack restarts) is waited for up to ``wait`` seconds. A port another program listens on is an error naming
    that program: moving to a random port would break every ``PREFECT_API_URL`` that names this one.
    """
    if port == 0:
        return free_port(None, host)
    deadline = time.monotonic() + wait
    while not port_available(port, host):
        if time.monotonic() >= deadline:
            who = listener_of(port)
            raise OrchestrationError(
                f"port {port} on {host} is in use" + (f" by {who}" if who else "") + f" (waited {wait:.0f} s): "
                "stop that program or choose another port (--port, or `up.port` in the configuration)")
        time.sleep(0.2)
    return port


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int, parent_pid: int) -> None:  # pragma: no cover - runs in the child
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    If the parent already died between ``fork`` and this call, the signal is sent at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's own stop() is the only protection
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def _child_setup(parent_pid: int, death_signal: int | None) -> None:  # pragma: no cover - child, before exec
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if death_signal is not None:
        set_parent_death_signal(death_signal, parent_pid)


@dataclass
class Child:
    """A started child process (leader of its own process group) and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (the child and every process it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT the group (a clean stop for Prefect servers and workers), then SIGTERM, then SIGKILL.

        Returns the child's exit code. Waits for the group, so no grandchild (a flow run) is left behind.
        """
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not self.alive() and not self._group_alive():
                break
            self.signal_group(sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.alive() or self._group_alive()):
                time.sleep(0.1)
        code = self.popen.poll()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL the child alone (not its group): what a crash or ``kill -9`` of that process does."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def start_child(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | None = None,
                cwd: Path | None = None, death_signal: int | None = signal.SIGTERM) -> Child:
    """Start ``argv`` in its own process group with SIGINT/SIGTERM at their defaults, output to ``log_path``
    (appended) or inherited when None.

    ``death_signal`` (default SIGTERM, a clean stop for every child we start) is what the child receives when
    this process dies, even by SIGKILL. Linux sends it when the *thread* that started the child ends: start
    long-lived children from the main thread.
    """
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # closed by Child.stop
    popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT if log is not None else None,
                             preexec_fn=functools.partial(_child_setup, os.getpid(), death_signal))
    return Child(name=name, popen=popen, log_path=log_path, _log=log)


def python_argv(*args: str) -> list[str]:
    """``python -m ...`` with this very interpreter (so children run in the same environment)."""
    return [sys.executable, *args]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (found through /proc), whatever session or group it is in."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(") ", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_children(children: Iterable[Child], timeout: float) -> None:
    """Stop ``children`` together within about ``timeout`` seconds: SIGINT to every group at once (a clean stop
    for Prefect servers, workers, the runner and the watcher), SIGKILL to whatever is left at the deadline.

    Processes a child started in a session of its own (a process worker's flow runs) are found beforehand and
    killed too if still alive: no process is left behind. What a kill interrupts is recorded in the ledger and
    finished by the watcher's outbox or ``splash-flows reconcile``.
    """
    children = [c for c in children]
    family = {c.name: descendants(c.pid) for c in children}
    for child in children:
        child.signal_group(signal.SIGINT)
    deadline = time.monotonic() + timeout

    def busy() -> bool:
        return any(c.alive() or c._group_alive() for c in children)

    while busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in children:
        child.signal_group(signal.SIGKILL)
        for pid in family[child.name]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    strays = [pid for pids in family.values() for pid in pids]
    while (busy() or any(pid_alive(p) for p in strays)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in children:
        child.stop(timeout=1.0)  # reaps, closes the log; at once when already gone


@dataclass(frozen=True)
class RestartPolicy:
    """How ``Supervisor`` restarts a child that died: after ``initial_delay`` seconds, doubling up to
    ``max_delay`` while it keeps dying; a child that ran ``reset_after`` seconds starts again from
    ``initial_delay``. An exit code in ``fatal_codes`` (2: configuration error) is not retried."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    reset_after: float = 60.0
    fatal_codes: frozenset[int] = frozenset({2})


@dataclass
class Supervised:
    """A child under supervision: how to start it again, and its restart history."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None
    cwd: Path | None
    child: Child
    started_at: float
    restarts: int = 0
    delay: float = 0.0
    restart_at: float | None = None
    last_code: int | None = None


# The guard: a tiny process of its own session that learns each child's process group through a pipe ("+PGID",
# "-PGID" lines) and, when the pipe reaches end-of-file without a clean "close" (the supervisor died, even by
# SIGKILL), sends SIGTERM to every group still registered, then SIGKILL after GUARD_KILL_AFTER seconds. It
# complements PR_SET_PDEATHSIG, which reaches only the direct children and only with a signal they may handle
# slowly. Standard library only, so it starts in ~50 ms and depends on nothing of ours.
GUARD_KILL_AFTER = 8.0
GUARD_CODE = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups = set()
clean = False
for line in sys.stdin:
    line = line.strip()
    if line == "close":
        clean = True
        break
    if line[:1] in "+-" and line[1:].isdigit():
        (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
if clean or not groups:
    sys.exit(0)
def send(sig):
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive
deadline = time.monotonic() + float(sys.argv[1])
groups = send(signal.SIGTERM)
while groups and time.monotonic() < deadline:
    time.sleep(0.1)
    groups = send(0)
send(signal.SIGKILL)
"""


class Guard:
    """The parent side of the guard process (see ``GUARD_CODE``)."""

    def __init__(self, kill_after: float = GUARD_KILL_AFTER) -> None:
        self.popen = subprocess.Popen([sys.executable, "-I", "-c", GUARD_CODE, str(kill_after)],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True, close_fds=True, text=True)

    def _send(self, line: str) -> None:
        if self.popen.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()

    def register(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def unregister(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        """Everything was stopped cleanly: let the guard exit without touching anything."""
        self._send("close")
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class ChildFailed(OrchestrationError):
    """A supervised child exited with a code restarting cannot help (a configuration error)."""


class Supervisor:
    """Starts children and restarts any that dies, with back-off; stops them all in order.

    ``check`` is called from the owner's loop (main thread: see ``start_child`` on the death signal). Each
    restart is reported through ``say`` with the exit code, the last lines of the child's log and the delay.
    If the owner dies without ``stop`` (even by SIGKILL), each child gets SIGTERM from the kernel and its whole
    process group SIGTERM then, ``guard_kill_after`` seconds later, SIGKILL from the guard process.
    """

    def __init__(self, policy: RestartPolicy | None = None, say: Callable[[str], None] = print,
                 on_start: Callable[[Supervised], None] | None = None,
                 guard_kill_after: float | None = GUARD_KILL_AFTER) -> None:
        self.policy = policy or RestartPolicy()
        self.say = say
        self.on_start = on_start
        self.entries: list[Supervised] = []
        self.guard: Guard | None = Guard(guard_kill_after) if guard_kill_after is not None else None

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None,
               cwd: Path | None) -> Child:
        child = start_child(name, argv, env=env, log_path=log_path, cwd=cwd)
        if self.guard is not None:
            self.guard.register(child.pid)  # the child leads its own process group: pgid == pid
        return child

    def _retire(self, child: Child, timeout: float) -> None:
        child.stop(timeout=timeout)
        if self.guard is not None:
            self.guard.unregister(child.pid)

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | None = None,
              cwd: Path | None = None) -> Child:
        child = self._spawn(name, argv, env, log_path, cwd)
        entry = Supervised(name=name, argv=list(argv), env=dict(env), log_path=log_path, cwd=cwd, child=child,
                           started_at=time.monotonic())
        self.entries.append(entry)
        if self.on_start is not None:
            self.on_start(entry)
        return child

    def retire(self, name: str, timeout: float) -> None:
        """Stop the child ``name`` (its whole process group) and stop supervising it."""
        for entry in [e for e in self.entries if e.name == name]:
            self.entries.remove(entry)
            stop_children([entry.child], timeout)
            if self.guard is not None:
                self.guard.unregister(entry.child.pid)

    @property
    def children(self) -> list[Child]:
        return [e.child for e in self.entries]

    def pids(self) -> dict[str, int]:
        return {e.name: e.child.pid for e in self.entries}

    def check(self, now: float | None = None) -> list[Supervised]:
        """Notice children that died (schedule their restart) and restart those whose delay is over.

        Returns the entries restarted by this call. Raises ``ChildFailed`` for a fatal exit code.
        """
        now = time.monotonic() if now is None else now
        restarted: list[Supervised] = []
        for entry in self.entries:
            if entry.restart_at is None:
                code = entry.child.popen.poll()
                if code is None:
                    continue
                self._retire(entry.child, 1.0)  # whatever it started goes too; closes its log
                entry.last_code = code
                tail = tail_of(entry.log_path)
                if code in self.policy.fatal_codes:
                    raise ChildFailed(f"{entry.name} exited with code {code}, which restarting cannot fix; last "
                                      f"lines of {entry.log_path}:\n{tail}")
                ran = now - entry.started_at
                entry.delay = (self.policy.initial_delay if ran >= self.policy.reset_after or not entry.delay
                               else min(self.policy.max_delay, entry.delay * 2))
                entry.restart_at = now + entry.delay
                self.say(f"{entry.name} (pid {entry.child.pid}) exited with code {code} after {ran:.1f} s; "
                         f"restarting it in {entry.delay:g} s. Last lines of {entry.log_path}:\n{tail}")
            if entry.restart_at is not None and now >= entry.restart_at:
                entry.child = self._spawn(entry.name, entry.argv, entry.env, entry.log_path, entry.cwd)
                entry.started_at = time.monotonic()
                entry.restart_at = None
                entry.restarts += 1
                self.say(f"{entry.name} restarted (pid {entry.child.pid}, restart {entry.restarts})")
                if self.on_start is not None:
                    self.on_start(entry)
                restarted.append(entry)
        return restarted

    def stop(self, phases: Sequence[tuple[Callable[[Supervised], bool], float]]) -> None:
        """Stop every child, phase by phase: each phase is (which entries, seconds allowed). Entries no phase
        selects are stopped last with 2 s."""
        left = list(self.entries)
        for selects, timeout in [*phases, (lambda _e: True, 2.0)]:
            now = [e for e in left if selects(e)]
            left = [e for e in left if not selects(e)]
            stop_children([e.child for e in now], timeout)
        for entry in self.entries:
            if self.guard is not None:
                self.guard.unregister(entry.child.pid)
        self.entries.clear()
        if self.guard is not None:
            self.guard.close()
            self.guard = None


def tail_of(path: Path | None, lines: int = 12) -> str:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])
