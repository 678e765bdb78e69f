"""The shipped prefect.yaml and the init's plain parts (no server): names, pools, schedules, entrypoints."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import prefect
import pytest
import yaml

from splash_flows.errors import ConfigError, ServerUnavailableError
from splash_flows.flows.deploy import (
    BL733_DIR,
    PREFECT_YAML,
    DeploymentSpec,
    pool_limits,
    read_deployment_specs,
    wait_for_server,
)
from splash_flows.processes import child_env, free_port, python_argv


def test_prefect_yaml_declares_the_seed_deployments_on_their_pools() -> None:
    specs = {s.name: s for s in read_deployment_specs()}
    assert {n: s.pool for n, s in specs.items()} == {
        "run_733_dispatcher": "dispatcher_733_pool", "new_file_733": "new_file_733_pool",
        "prune_733": "prune_733_pool", "flight_check_733": "dispatcher_733_pool",
        "catalogue_retry_733": "dispatcher_733_pool", "analysis_733": "analysis_733_pool",
        "archive_733": "archive_733_pool", "restore_drill_733": "archive_733_pool"}
    assert specs["run_733_dispatcher"].entrypoint == "splash_flows.flows.bl733.dispatcher.dispatcher"
    assert specs["new_file_733"].entrypoint == "splash_flows.flows.bl733.move.new_file_733"
    for spec in specs.values():
        assert spec.module.startswith("splash_flows.flows.bl733.")
    assert specs["run_733_dispatcher"].unavailable_reason() is None
    assert specs["new_file_733"].unavailable_reason() is None
    assert specs["analysis_733"].entrypoint == "splash_flows.flows.bl733.analysis.analysis_733"
    assert specs["analysis_733"].unavailable_reason() is None


def test_prefect_yaml_is_honest_about_version_code_location_and_schedules() -> None:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    major_minor = ".".join(prefect.__version__.split(".")[:2])
    assert str(data["prefect-version"]).startswith(major_minor + ".")
    # no clone/copy step: workers import the installed package (the one step only sets the working directory)
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/"}}]
    assert all(":" not in d["entrypoint"] for d in data["deployments"])  # module paths, not files
    deps = {d["name"]: d for d in data["deployments"]}
    assert deps["prune_733"]["schedules"][0]["interval"] == 3600
    assert deps["flight_check_733"]["schedules"][0]["interval"] == 12 * 3600
    # issue 9 item 4: scans waiting for their sidecar are retried on a clock, not only when a run happens
    assert deps["catalogue_retry_733"]["schedules"][0]["interval"] == 60
    assert "schedules" not in deps["run_733_dispatcher"]
    assert deps["archive_733"]["schedules"][0]["cron"] == "30 1 * * *"  # nightly
    assert deps["restore_drill_733"]["schedules"][0]["cron"] == "0 9 * * 1"  # weekly
    assert pool_limits(["archive_733_pool"]) == {"archive_733_pool": 1}  # one archive run at a time
    for name in ("run_733_dispatcher", "new_file_733"):
        assert deps[name]["parameters"] == {"config_path": None}


def test_unavailable_entrypoints_are_named() -> None:
    spec = DeploymentSpec("x", "splash_flows.flows.bl733.nope.flow_x", "p")
    assert spec.unavailable_reason() == "entrypoint module splash_flows.flows.bl733.nope is not installed"
    file_spec = DeploymentSpec("y", "nope.py:flow_y", "p")
    assert file_spec.module == "nope"
    assert "does not exist" in (file_spec.unavailable_reason() or "")


def test_bad_project_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: a\n    entrypoint: m.f\n")
    with pytest.raises(ConfigError, match=r"deployments\[0\] needs name, entrypoint and work_pool.name"):
        read_deployment_specs(bad)
    bad.write_text("deployments: [\n")
    with pytest.raises(ConfigError, match="cannot read the Prefect project file"):
        read_deployment_specs(bad)


def test_pool_limits_keep_pruning_serial() -> None:
    assert pool_limits(["a", "prune_733_pool", "a"], 3) == {"a": 3, "prune_733_pool": 1}


def test_waiting_for_a_server_that_never_answers_names_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=rf"the Prefect server at {url} did not answer .* within 1 s"):
        wait_for_server(url, timeout=1.0, interval=0.2)
    assert time.monotonic() - start < 30


def test_operator_scripts_beside_prefect_yaml_run_the_same_command() -> None:
    assert (BL733_DIR / "init_work_pools.py").is_file()
    script = BL733_DIR / "create_deployments_733.sh"
    assert script.stat().st_mode & 0o111
    env = child_env({"PYTHON": python_argv()[0]})
    env.pop("PREFECT_API_URL", None)
    for argv in (python_argv("init_work_pools.py", "--help"), ["bash", str(script), "--help"]):
        done = subprocess.run(argv, cwd=BL733_DIR, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "Wait for the Prefect server, create missing work pools" in done.stdout
    done = subprocess.run(python_argv("init_work_pools.py"), cwd=BL733_DIR, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    assert "no Prefect server given: pass --api-url or set PREFECT_API_URL" in done.stderr
