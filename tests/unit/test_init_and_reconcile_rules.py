"""Small rules behind the init and reconcile: which limit an existing pool gets, which config_path triggered
runs carry, and the legacy deployment script finding the project's Python without a virtualenv on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from splash_flows.config import default_config_data, load_config_file
from splash_flows.flows.deploy import BL733_DIR, limit_to_set


def test_serial_pools_always_get_1_and_other_pools_get_a_limit_only_when_they_have_none() -> None:
    assert limit_to_set("prune_733_pool", None, 4) == 1  # made by hand: `prefect work-pool create` sets none
    assert limit_to_set("prune_733_pool", 3, 4) == 1
    assert limit_to_set("prune_733_pool", 1, 4) is None  # idempotent
    assert limit_to_set("dispatcher_733_pool", None, 4) == 4
    assert limit_to_set("dispatcher_733_pool", 8, 4) is None  # an operator's choice is kept
    assert limit_to_set("dispatcher_733_pool", 4, 4) is None


def test_triggered_runs_carry_the_file_the_configuration_came_from(tmp_path: Path) -> None:
    data = default_config_data(tmp_path)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_config_file(path).flow_config_path() == str(path.resolve())
    data["watcher"] = {"flow_config_path": "/etc/splash-flows/workers.yaml"}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_config_file(path).flow_config_path() == "/etc/splash-flows/workers.yaml"


def test_create_deployments_script_finds_the_projects_python_without_a_venv_on_path() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = "/usr/bin:/bin"  # the project's venv is not on PATH (the seed's `./create_deployments_733.sh`)
    done = subprocess.run([str(BL733_DIR / "create_deployments_733.sh"), "--help"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No module named" not in done.stderr and "init-work-pools" in done.stdout
