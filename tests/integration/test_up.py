"""``splash-flows up`` end to end with real processes: one command starts server (SQLite), init, runner and
watcher; files written into DIR/data733 end verified; a watcher killed with SIGKILL while files arrive is
restarted and misses nothing; a runner killed mid-run is restarted and its run marked Crashed, reconcile
finishes it; ``up`` killed with SIGKILL takes every child with it (checked by PID); a restart
comes back on the same port (the one fixed in the configuration); Ctrl-C with a run in flight stops all of it
within 10 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from splash_flows.cli.up import READY_LINE
from splash_flows.flows.deploy import trigger_deployment
from splash_flows.ledger import Ledger
from splash_flows.processes import Child, child_env, free_port, pid_alive, python_argv, start_child
from tests.integration.conftest import descendants, wait_final, write_like_a_detector

pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(600)]


def _start_up(root: Path, log: Path, *extra: str) -> Child:
    env = child_env()
    env.pop("PREFECT_API_URL", None)
    env.pop("SPLASH_FLOWS_CONFIG", None)
    up = start_child("up", python_argv("-m", "splash_flows", "up", "--root", str(root), "--no-ui", "--limit", "2",
                                       *extra), env=env, log_path=log)
    deadline = time.monotonic() + 300
    while READY_LINE not in (log.read_text(errors="replace") if log.exists() else ""):
        assert up.alive(), log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return up


def _state(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "up.json").read_text())
    return data


def _verified(root: Path, paths: list[str]) -> dict[str, int]:
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    try:
        return {t: ledger.count_verified(t, paths, "data733") for t in ("lamarr", "cfs")}
    finally:
        ledger.close()


def _wait_verified(root: Path, paths: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (counts := _verified(root, paths)) != {"lamarr": len(paths), "cfs": len(paths)}:
        assert time.monotonic() < deadline, f"only {counts} of {len(paths)} verified"
        time.sleep(0.3)


def _running_runs(api_url: str) -> list[str]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with SyncPrefectClient(api_url) as client:
        return [str(r.id) for r in client.read_flow_runs(flow_run_filter=running)]


def _wait_dead(pids: list[int], timeout: float) -> list[str]:
    """PIDs (with their command line) still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    out = []
    for pid in alive:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append(f"{pid}: {cmd[:150]}")
    return out


def test_up_supervises_its_children_keeps_its_port_and_never_leaves_one_behind(tmp_path: Path) -> None:
    root = tmp_path / "up"
    port = free_port()
    log = tmp_path / "up.log"
    up = _start_up(root, log, "--port", str(port))
    again: Child | None = None
    try:
        out = log.read_text()
        api_url = f"http://127.0.0.1:{port}/api"
        assert api_url in out and "deployment run_733_dispatcher: deployed" in out
        state = _state(root)
        assert state["pid"] == up.pid and state["api_url"] == api_url
        assert {"server", "runner", "watcher"} <= set(state["children"])

        # by hand, as the ready message says
        paths = [f"ALS-1/scan {i} ü.edf" for i in range(4)]
        for rel in paths:
            write_like_a_detector(root / "data733" / rel, 30_000)
        runs = trigger_deployment(api_url, [paths])  # the watcher sends them too: harmless
        assert all(s.is_completed() for s in wait_final(api_url, runs, timeout=120).values())
        _wait_verified(root, paths, timeout=30)
        status = subprocess.run(python_argv("-m", "splash_flows", "--config", str(root / "splash-flows.yaml"),
                                            "status", "--json"), env=child_env(), capture_output=True, text=True,
                                timeout=60, check=True)
        rows = {r["path"]: r for r in json.loads(status.stdout)}
        assert all(rows[p]["copies"]["cfs"]["state"] == "verified" for p in paths)

        # the watcher dies by SIGKILL while files arrive: restarted at once, nothing missed
        dead_watcher = state["children"]["watcher"]
        arriving = [f"ALS-2/frame_{i:02d}.edf" for i in range(8)]
        for i, rel in enumerate(arriving):
            write_like_a_detector(root / "data733" / rel, 20_000, pause=0.05)
            if i == 2:
                os.kill(dead_watcher, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _state(root)["children"]["watcher"] == dead_watcher:
            assert up.alive() and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert pid_alive(_state(root)["children"]["watcher"])
        assert f"watcher (pid {dead_watcher}) exited with code -9" in log.read_text()
        _wait_verified(root, arriving)  # no trigger by hand: the restarted watcher found them

        # the runner dies by SIGKILL mid-run: restarted, the run it held is marked Crashed (no pool slot held
        # forever), and reconcile finishes its files
        batch = [f"ALS-4/frame_{i:03d}.edf" for i in range(150)]
        for rel in batch:
            (root / "data733" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "data733" / rel).write_bytes(os.urandom(200_000))
        trigger_deployment(api_url, [batch])  # the watcher sends them too: whichever run copies, it is killed
        deadline = time.monotonic() + 120
        while not (root / "cfs" / "ALS-4").is_dir() or len(list((root / "cfs" / "ALS-4").iterdir())) < 3:
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.02)
        dead_runner = _state(root)["children"]["runner"]
        os.kill(dead_runner, signal.SIGKILL)
        held = _running_runs(api_url)
        assert held, "no run was Running when the runner was killed"
        for state in wait_final(api_url, held, timeout=120).values():
            assert state.name == "Crashed" and "is gone" in (state.message or ""), state
        assert _state(root)["children"]["runner"] != dead_runner
        done = subprocess.run(python_argv("-m", "splash_flows", "--config", str(root / "splash-flows.yaml"),
                                          "reconcile", "--min-age", "0", "--api-url", api_url), env=child_env(),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        _wait_verified(root, batch)

        # `up` killed with SIGKILL: every child it started goes too
        family = descendants(up.pid)
        assert set(_state(root)["children"].values()) <= set(family)
        up.popen.send_signal(signal.SIGKILL)
        up.popen.wait(timeout=10)
        assert _wait_dead(family, timeout=30) == [], "children outlived `up`"

        # started again at once, without --port: the port fixed in the configuration, not a random one
        config = root / "splash-flows.yaml"
        data = yaml.safe_load(config.read_text())
        data["up"] = {"port": port}
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        log2 = tmp_path / "up-again.log"
        again = _start_up(root, log2)
        assert _state(root)["api_url"] == api_url

        # Ctrl-C with a run in flight: everything stops within 10 s
        burst = [f"ALS-3/burst_{i:03d}.edf" for i in range(300)]
        for rel in burst:
            (root / "data733" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "data733" / rel).write_bytes(os.urandom(300_000))
        trigger_deployment(api_url, [burst])
        deadline = time.monotonic() + 120
        while not (root / "lamarr" / "ALS-3").is_dir() or len(list((root / "lamarr" / "ALS-3").iterdir())) < 5:
            assert time.monotonic() < deadline, "the burst never started"
            time.sleep(0.02)
        family = descendants(again.pid)
        in_flight = _verified(root, burst)
        again.popen.send_signal(signal.SIGINT)
        began = time.monotonic()
        code = again.popen.wait(timeout=60)
        took = time.monotonic() - began
        assert min(in_flight.values()) < len(burst), "the burst finished before Ctrl-C"
        assert code == 0, log2.read_text()
        assert took < 10, f"stopping took {took:.1f} s"
        assert _wait_dead(family, timeout=2) == []
        assert "stopped in" in log2.read_text() and not (root / "up.json").exists()
    finally:
        for child in (up, again):
            if child is not None:
                child.stop(timeout=30)
