"""Starting and stopping the child processes of ``splash-flows up``, the init and the integration tests.

Children get their own process group and the default SIGINT disposition (a worker started from a background
job otherwise ignores SIGINT and therefore SIGTERM too, see docs/DEPLOYMENT.md), so ``stop`` can end a child and
everything it started. Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import splash_flows

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


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port chosen by the kernel."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
                cwd: Path | None = None) -> Child:
    """Start ``argv`` in its own process group with SIGINT/SIGTERM at their defaults, output to ``log_path``
    (appended) or inherited when None."""
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # closed by Child.stop
    popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT if log is not None else None,
                             preexec_fn=_child_setup)
    return Child(name=name, popen=popen, log_path=log_path, _log=log)


def python_argv(*args: str) -> list[str]:
    """``python -m ...`` with this very interpreter (so children run in the same environment)."""
    return [sys.executable, *args]
