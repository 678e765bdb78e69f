"""Supervision primitives of ``splash-flows up`` with real processes and sockets: a port in TIME_WAIT is not
"taken", a port another program holds is an error naming it, children die with a parent killed by SIGKILL,
dead children are restarted with back-off, and a stop ends everything (even what ignores SIGINT) in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from splash_flows.errors import OrchestrationError
from splash_flows.processes import (
    ChildFailed,
    RestartPolicy,
    Supervisor,
    child_env,
    claim_port,
    free_port,
    pid_alive,
    port_available,
    start_child,
    stop_children,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _time_wait_on(port: int) -> None:
    """Leave a server-side connection of ``port`` in TIME_WAIT (the server closes first, as a stopped Prefect
    server does with its clients' keep-alive connections), then close the listener."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # server side closes first -> it ends in TIME_WAIT on the server's port
        time.sleep(0.05)
        client.close()
    table = Path("/proc/net/tcp").read_text()
    assert f":{port:04X} " in table  # the TIME_WAIT entry is there


def test_a_port_whose_old_connections_are_in_time_wait_is_kept() -> None:
    port = free_port()
    _time_wait_on(port)
    with socket.socket() as plain:  # what the old check did: bind without SO_REUSEADDR fails here
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert port_available(port)
    assert free_port(port) == port
    assert claim_port(port, wait=0.5) == port


def test_a_port_another_program_listens_on_is_an_error_naming_that_program() -> None:
    port = free_port()
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('ok', flush=True); time.sleep(600)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ok"
        assert not port_available(port)
        with pytest.raises(OrchestrationError, match=rf"port {port} on 127\.0\.0\.1 is in use by pid {other.pid} "):
            claim_port(port, wait=0.3)
    finally:
        other.kill()
        other.wait()


def test_a_port_released_while_waiting_is_taken() -> None:
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    threading.Timer(0.4, holder.close).start()
    assert claim_port(port, wait=10) == port


PARENT = """
import sys, time
from splash_flows.processes import child_env, start_child
child = start_child("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], env=child_env())
print(child.pid, flush=True)
time.sleep(600)
"""


def test_children_die_when_their_parent_is_killed_with_sigkill() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child) and os.getpgid(child) == child  # its own group: a killpg of the parent misses it
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not pid_alive(child)), f"child {child} outlived its parent"
    finally:
        parent.kill()


def test_a_dead_child_is_restarted_with_growing_back_off_and_each_restart_is_said(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(RestartPolicy(initial_delay=0.1, max_delay=0.4, reset_after=60), say=lines.append)
    first = sup.start("watcher", SLEEP, env=child_env(), log_path=tmp_path / "watcher.log")
    first.kill()
    assert sup.check() == []  # the death is noticed; the restart waits for its delay
    assert "watcher (pid" in lines[0] and "exited with code -9" in lines[0] and "restarting it in 0.1 s" in lines[0]
    assert _wait(lambda: bool(sup.check()), 5)
    second = sup.children[0]
    assert second.pid != first.pid and second.alive() and "restarted (pid" in lines[-1]
    delays = []
    for _ in range(3):  # dying again at once: 0.2, 0.4, then capped at 0.4
        sup.children[0].kill()
        sup.check()
        delays.append(sup.entries[0].delay)
        assert _wait(lambda: bool(sup.check()), 5)
    assert delays == [0.2, 0.4, 0.4] and sup.entries[0].restarts == 4
    sup.stop([(lambda _e: True, 2.0)])
    assert not any(pid_alive(p) for p in (first.pid, second.pid))


def test_a_child_exiting_with_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    sup = Supervisor(RestartPolicy(initial_delay=0.05), say=lambda _l: None)
    log = tmp_path / "runner.log"
    sup.start("runner", [sys.executable, "-c", "import sys; print('config error: bad'); sys.exit(2)"],
              env=child_env(), log_path=log)
    deadline = time.monotonic() + 10
    with pytest.raises(ChildFailed, match=r"(?s)runner exited with code 2.*config error: bad"):
        while time.monotonic() < deadline:
            sup.check()
            time.sleep(0.05)
    assert sup.entries[0].restarts == 0
    sup.stop([])


IGNORES_SIGINT = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(run.pid, flush=True)
time.sleep(600)
"""


def test_stop_ends_children_that_ignore_sigint_and_their_own_session_runs_within_the_timeout(
        tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    stubborn = start_child("worker", [sys.executable, "-c", IGNORES_SIGINT], env=child_env(), log_path=log)
    polite = start_child("watcher", SLEEP, env=child_env())
    assert _wait(lambda: log.exists() and log.read_text().strip() != "")
    flow_run = int(log.read_text().split()[0])  # like a process worker's flow run: a session of its own
    assert os.getsid(flow_run) == flow_run
    start = time.monotonic()
    stop_children([stubborn, polite], timeout=1.0)
    took = time.monotonic() - start
    assert not stubborn.alive() and not polite.alive() and not pid_alive(flow_run)
    assert took < 8, took  # 1 s for SIGINT, then SIGKILL: bounded even for a child that ignores SIGINT


SUPERVISOR_PARENT = """
import sys, time
from pathlib import Path
from splash_flows.processes import Supervisor, child_env
STUBBORN = '''
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a child slow to stop (a watcher busy retrying a trigger)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(os.getpid(), helper.pid, flush=True)
time.sleep(600)
'''
sup = Supervisor(say=lambda _l: None, guard_kill_after=1.0)
child = sup.start("watcher", [sys.executable, "-c", STUBBORN], env=child_env(), log_path=Path(sys.argv[1]))
time.sleep(600)
"""


def test_a_supervisor_killed_with_sigkill_takes_even_a_child_ignoring_sigterm_and_its_group(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISOR_PARENT, str(log)], env=child_env())
    try:
        assert _wait(lambda: log.exists() and len(log.read_text().split()) == 2)
        child, helper = (int(x) for x in log.read_text().split())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not pid_alive(child) and not pid_alive(helper), 15), "the group outlived its parent"
    finally:
        parent.kill()
