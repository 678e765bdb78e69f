"""The shipped systemd units: restart policies, the right stop signals, hardening, and systemd's own verifier."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
NAMES = ["prefect-server.service", "splash-worker@.service", "splash-runner.service", "splash-watcher.service",
         "splash-status.service", "splash-launcher.service"]


def _read(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize("name", NAMES)
def test_units_restart_run_unprivileged_and_are_hardened(name: str) -> None:
    unit = _read(name)
    service = unit["Service"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["Restart"] in ("always", "on-failure") and service["RestartSec"]
    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] in ("strict", "full") and service["PrivateTmp"] == "yes"
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in (UNITS / name).read_text()
    assert "EnvironmentFile=/etc/splash-flows/" in (UNITS / name).read_text()  # secrets stay out of the unit


def test_stop_signals_match_what_each_process_handles() -> None:
    worker = _read("splash-worker@.service")["Service"]
    assert worker["KillSignal"] == "SIGINT" and worker["KillMode"] == "mixed"
    assert "--pool %i" in worker["ExecStart"] and "--limit ${SPLASH_WORKER_LIMIT}" in worker["ExecStart"]
    # the launcher's runs belong to their workers: stopping or restarting it (an upgrade) must not kill them
    launcher = _read("splash-launcher.service")
    assert launcher["Service"]["KillMode"] == "process" and launcher["Service"]["KillSignal"] == "SIGTERM"
    assert "splash_flows.flows.launcher serve" in launcher["Service"]["ExecStart"]
    worker_unit = _read("splash-worker@.service")["Unit"]
    assert "splash-launcher.service" in worker_unit["Wants"] and "splash-launcher.service" in worker_unit["After"]
    runner = _read("splash-runner.service")["Service"]
    assert runner["KillSignal"] == "SIGTERM"
    grace = int(runner["ExecStart"].split("--grace ")[1].split()[0])
    assert int(runner["TimeoutStopSec"]) > grace  # systemd must not SIGKILL before the runner's grace ends


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    for name in NAMES:
        text = (UNITS / name).read_text()
        for tool in ("prefect", "splash-flows", "python"):  # the venv does not exist here; verify needs an executable
            text = text.replace(f"/opt/splash-flows/venv/bin/{tool}", "/bin/true")
        target = tmp_path / name.replace("@.", "@dispatcher_733_pool.")
        target.write_text(text)
        done = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0 and done.stderr.strip() == "", f"{name}: {done.stderr}"
