"""The pre-forked launcher (``splash_flows.flows.launcher``) without Prefect: a real zygote process serving a
small engine module, and the real client (the job command) as the worker would run it. What the worker must
see is what ``python -m ENGINE`` would have given it: the job's environment, working directory, arguments and
output, its exit code or signal, SIGTERM reaching the engine, the engine dying with a killed client, and the
engine started directly when no launcher takes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from splash_flows.flows.launcher import (
    ENGINE_ENV,
    LAUNCHER_ENV,
    check_forkable,
    launcher_name,
    preload_modules,
)

ENGINE = '''
import os, signal, sys, time
import zygote_mark
zygote_mark.RUNS += 1  # a run that saw another run's state would print 2
print(f"engine pid={os.getpid()} forked={zygote_mark.IMPORT_PID != os.getpid()} runs={zygote_mark.RUNS} "
      f"mark={os.environ.get('JOB_MARK')} cwd={os.getcwd()} args={sys.argv[1:]}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
mode = os.environ.get("JOB_MODE", "exit")
if mode == "exit":
    sys.exit(int(os.environ.get("JOB_EXIT", "0")))
if mode == "killself":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "term":
    def on_term(signum, frame):
        print("engine got SIGTERM", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
'''

# Imported by the zygote before it serves (``--preload``); a process started without it imports it fresh.
MARK = '''
import os
IMPORT_PID = os.getpid()  # another pid at run time: the run was forked from the process that imported this
RUNS = 0
'''


@dataclass
class Zygote:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen[str] | None

    def client(self, *args: str, cwd: Path, **extra: str) -> subprocess.Popen[str]:
        env = {**self.env, **extra}
        return subprocess.Popen([sys.executable, "-m", "splash_flows.flows.launcher", "engine", *args], cwd=cwd,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _base_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "fake_engine.py").write_text(textwrap.dedent(ENGINE), encoding="utf-8")
    (tmp_path / "zygote_mark.py").write_text(textwrap.dedent(MARK), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPLASH_FLOWS_", "PYTHONPATH"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path[1:]])
    env[ENGINE_ENV] = "fake_engine"
    return env


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    env = _base_env(tmp_path)
    name = f"splash-flows-test-launcher-{uuid.uuid4().hex[:12]}"
    env[LAUNCHER_ENV] = name
    proc = subprocess.Popen([sys.executable, "-m", "splash_flows.flows.launcher", "serve", "--name", name,
                             "--preload", "zygote_mark"], env=env, cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until it listens (or it died)
    assert "listening on" in line, line + proc.stderr.read()
    yield Zygote(name, env, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _read_until(stream: object, text: str) -> str:
    seen = ""
    while text not in seen:
        line = stream.readline()  # type: ignore[attr-defined]
        assert line, f"stream ended before {text!r}; got {seen!r}"
        seen += line
    return seen


def test_a_run_gets_the_jobs_environment_cwd_arguments_and_output_and_its_exit_code(zygote: Zygote,
                                                                                      tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    proc = zygote.client("RUN-ID", cwd=work, JOB_MARK="m1", JOB_EXIT="7")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7
    assert "forked=True" in out  # it ran in a child of the zygote, with the zygote's imports
    assert f"mark=m1 cwd={work} args=['RUN-ID']" in out
    assert "to stderr" in err


def test_each_run_is_its_own_process_and_sees_no_state_of_another(zygote: Zygote, tmp_path: Path) -> None:
    outs = []
    for _ in range(2):
        proc = zygote.client(cwd=tmp_path)
        out, _err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        outs.append(out)
    pids = {line.split("pid=")[1].split()[0] for line in outs}
    assert len(pids) == 2
    assert all("runs=1" in out for out in outs)
    assert zygote.proc is not None and zygote.proc.poll() is None  # the zygote itself ran nothing


def test_sigterm_to_the_client_reaches_the_engine_and_its_exit_code_comes_back(zygote: Zygote,
                                                                               tmp_path: Path) -> None:
    proc = zygote.client(cwd=tmp_path, JOB_MODE="term")
    _read_until(proc.stdout, "ready")
    proc.send_signal(signal.SIGTERM)  # what the worker's cancellation does to the process it started
    out, _err = proc.communicate(timeout=60)
    assert "engine got SIGTERM" in out
    assert proc.returncode == 3


def test_an_engine_killed_by_a_signal_makes_the_client_die_of_the_same_signal(zygote: Zygote,
                                                                               tmp_path: Path) -> None:
    proc = zygote.client(cwd=tmp_path, JOB_MODE="killself")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_an_engine_that_ignores_nothing_dies_of_a_forwarded_sigterm(zygote: Zygote, tmp_path: Path) -> None:
    proc = zygote.client(cwd=tmp_path, JOB_MODE="wait")
    _read_until(proc.stdout, "ready")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # as `python -m ENGINE` killed by the worker would exit


def _gone(pid: int, deadline_s: float = 60.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    return True  # a zombie: dead, waiting for its keeper to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_client_killed_with_sigkill_takes_its_engine_with_it(zygote: Zygote, tmp_path: Path) -> None:
    proc = zygote.client(cwd=tmp_path, JOB_MODE="wait")
    first = _read_until(proc.stdout, "ready")
    engine_pid = int(first.split("pid=")[1].split()[0])
    assert engine_pid != proc.pid
    proc.kill()  # the worker's escalation after its grace period
    proc.wait(timeout=30)
    assert _gone(engine_pid), "the engine outlived its client"


def test_without_a_launcher_the_client_starts_the_engine_itself(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "splash_flows.flows.launcher", "engine", "direct"], cwd=tmp_path,
                          env={**env, "JOB_EXIT": "5", "JOB_MARK": "d"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 5
    assert "forked=False" in done.stdout and "mark=d" in done.stdout
    assert done.stderr.strip() == "to stderr"  # no launcher configured: nothing to say


def test_with_no_launcher_listening_the_client_says_so_and_starts_the_engine(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    env[LAUNCHER_ENV] = f"splash-flows-test-nobody-{uuid.uuid4().hex[:12]}"
    done = subprocess.run([sys.executable, "-m", "splash_flows.flows.launcher", "engine", "direct"], cwd=tmp_path,
                          env={**env, "JOB_EXIT": "4"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4
    assert "forked=False" in done.stdout
    assert "no launcher on" in done.stderr and "starting the flow run's engine directly" in done.stderr


def test_the_launcher_refuses_to_fork_while_another_thread_runs() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="holds-a-lock-maybe")
    thread.start()
    try:
        why = check_forkable()
        assert why is not None and "holds-a-lock-maybe" in why
    finally:
        stop.set()
        thread.join()


def test_the_zygote_preloads_the_engine_and_every_flow_module_of_the_project(tmp_path: Path) -> None:
    project = tmp_path / "prefect.yaml"
    project.write_text("deployments:\n  - name: a\n    entrypoint: pkg.flows.one.flow_a\n"
                       "  - name: b\n    entrypoint: pkg.flows.one.flow_b\n"
                       "  - name: c\n    entrypoint: path/to/file.py:flow_c\n", encoding="utf-8")
    modules = preload_modules(project)
    assert modules[0] == "prefect.engine"
    assert modules.count("pkg.flows.one") == 1
    assert not any("file.py" in m for m in modules)  # a file entrypoint is loaded by the engine, not preloaded


def test_launcher_names_differ_per_stack_root(tmp_path: Path) -> None:
    assert launcher_name(str(tmp_path / "a")) != launcher_name(str(tmp_path / "b"))
    assert launcher_name(str(tmp_path / "a")) == launcher_name(str(tmp_path / "a"))


def test_a_signal_before_the_handshake_is_not_lost(zygote: Zygote, tmp_path: Path) -> None:
    """A SIGTERM that arrives while the client is still connecting is forwarded once the engine started."""
    proc = zygote.client(cwd=tmp_path, JOB_MODE="term")
    proc.send_signal(signal.SIGTERM)
    out, _err = proc.communicate(timeout=60)
    # Either the engine started and got it (exit 3, or killed before it set its handler), or the client
    # stopped before anything started (killed by SIGTERM): never a run left going.
    assert proc.returncode in (3, -signal.SIGTERM), out


def test_a_launcher_whose_imports_started_a_thread_refuses_to_serve_and_clients_start_the_engine(
        tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait, name='pool-keeper', daemon=True).start()\n",
        encoding="utf-8")
    name = f"splash-flows-test-launcher-{uuid.uuid4().hex[:12]}"
    env[LAUNCHER_ENV] = name
    zygote = subprocess.run([sys.executable, "-m", "splash_flows.flows.launcher", "serve", "--name", name,
                             "--preload", "starts_a_thread"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert zygote.returncode != 0
    assert "cannot fork flow runs" in zygote.stderr and "pool-keeper" in zygote.stderr
    done = subprocess.run([sys.executable, "-m", "splash_flows.flows.launcher", "engine", "direct"], cwd=tmp_path,
                          env={**env, "JOB_EXIT": "0"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "forked=False" in done.stdout


def test_a_launcher_that_takes_the_request_but_never_answers_is_not_second_guessed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No fallback once the request is sent and unanswered: the launcher might still start the engine."""
    import socket

    from splash_flows.flows import launcher

    name = f"splash-flows-test-silent-{uuid.uuid4().hex[:12]}"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind("\0" + name)
    silent.listen(1)
    monkeypatch.setattr(launcher, "_ANSWER_TIMEOUT", 0.2)
    try:
        with pytest.raises(launcher.LauncherSilent):
            launcher.request(name, [], {"A": "b"}, "/", [0, 1, 2])
        with pytest.raises(launcher.LauncherRefused):  # nobody listening: safe to start the engine directly
            launcher.request(name + "-nobody", [], {}, "/", [0, 1, 2])
    finally:
        silent.close()
