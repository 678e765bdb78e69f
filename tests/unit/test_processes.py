"""Child processes: own process group, default signals even when the parent ignores SIGINT, group stop."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from splash_flows.processes import child_env, package_root, start_child

SLEEPER = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(os.getpid(), child.pid, signal.getsignal(signal.SIGINT) == signal.default_int_handler, flush=True)
time.sleep(600)
"""


def _pids(log: Path) -> tuple[int, int, str]:
    for _ in range(200):
        text = log.read_text() if log.exists() else ""
        if text.strip():
            pid, grandchild, handler = text.split()
            return int(pid), int(grandchild), handler
        time.sleep(0.05)
    raise AssertionError(f"child wrote nothing to {log}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_children_get_their_own_group_and_sigint_even_if_the_parent_ignores_it(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a background job from a script inherits
    try:
        child = start_child("sleeper", [sys.executable, "-c", SLEEPER], env=child_env(), log_path=tmp_path / "s.log")
    finally:
        signal.signal(signal.SIGINT, previous)
    pid, grandchild, handler = _pids(tmp_path / "s.log")
    assert pid == child.pid
    assert os.getpgid(pid) == pid != os.getpgid(0)
    assert os.getpgid(grandchild) == pid
    assert handler == "True"  # SIGINT raises KeyboardInterrupt in the child: a clean stop is possible
    code = child.stop(timeout=10)
    assert code is not None and not child.alive()
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_kill_hits_only_the_child_itself(tmp_path: Path) -> None:
    child = start_child("sleeper", [sys.executable, "-c", SLEEPER], env=child_env(), log_path=tmp_path / "s.log")
    _, grandchild, _ = _pids(tmp_path / "s.log")
    child.kill()
    assert not child.alive()
    assert _alive(grandchild)  # like kill -9 of a worker: what it started lives on
    child.stop(timeout=5)
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_child_env_makes_this_package_importable_from_anywhere() -> None:
    env = child_env({"X_TEST": "1"}, base={"PYTHONPATH": "relative/dir"})
    assert env["X_TEST"] == "1" and env["DO_NOT_TRACK"] == "1"
    root = str(package_root())
    if "site-packages" not in root:
        parts = env["PYTHONPATH"].split(os.pathsep)
        assert parts[0] == root and all(os.path.isabs(p) for p in parts)
