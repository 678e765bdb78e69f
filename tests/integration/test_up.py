"""``splash-flows up`` end to end: one command starts server (SQLite), init, runner and watcher (when installed);
files written into DIR/data733 end verified; SIGTERM stops every process it started."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from splash_flows.cli.up import READY_LINE
from splash_flows.flows.deploy import trigger_deployment
from splash_flows.ledger import Ledger
from splash_flows.processes import child_env, free_port, python_argv, start_child
from tests.integration.conftest import descendants, wait_final, write_like_a_detector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_up_runs_the_whole_stack_and_ctrl_c_stops_all_of_it(tmp_path: Path) -> None:
    root = tmp_path / "up"
    port = free_port()
    env = child_env()
    env.pop("PREFECT_API_URL", None)
    env.pop("SPLASH_FLOWS_CONFIG", None)
    up = start_child("up", python_argv("-m", "splash_flows", "up", "--root", str(root), "--port", str(port),
                                       "--no-ui", "--limit", "2"), env=env, log_path=tmp_path / "up.log")
    try:
        deadline = time.monotonic() + 240
        while READY_LINE not in (tmp_path / "up.log").read_text(errors="replace"):
            assert up.alive(), (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        out = (tmp_path / "up.log").read_text()
        api_url = f"http://127.0.0.1:{port}/api"
        assert api_url in out and "deployment run_733_dispatcher: deployed" in out
        assert (root / "splash-flows.yaml").is_file() and (root / "logs" / "server.log").is_file()
        paths = [f"ALS-1/scan {i} ü.edf" for i in range(4)]
        for rel in paths:
            write_like_a_detector(root / "data733" / rel, 30_000)
        runs = trigger_deployment(api_url, [paths])  # the watcher, when installed, sends them too: harmless
        states = wait_final(api_url, runs, timeout=120)
        assert all(s.is_completed() for s in states.values())
        ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        try:
            assert {t: ledger.count_verified(t, paths, "data733") for t in ("lamarr", "cfs")} == {
                "lamarr": 4, "cfs": 4}
        finally:
            ledger.close()
        status = subprocess.run(python_argv("-m", "splash_flows", "--config", str(root / "splash-flows.yaml"),
                                            "status", "--json"), env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        rows = {r["path"]: r for r in json.loads(status.stdout)}
        assert all(rows[p]["copies"]["cfs"]["state"] == "verified" for p in paths)

        family = descendants(up.pid)
        assert len(family) >= 2  # at least the server and the runner
        up.popen.send_signal(signal.SIGTERM)  # to `up` alone, as systemd or a terminal would
        assert up.popen.wait(timeout=120) == 0
        time.sleep(0.5)
        assert [pid for pid in family if _alive(pid)] == []
        assert "stopped." in (tmp_path / "up.log").read_text()
    finally:
        up.stop(timeout=30)
