"""``init-work-pools --preview``: the resolved pools and deployments as YAML, changing nothing (issue 12.8)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from splash_flows.flows.deploy import PREFECT_YAML, pool_limits, preview, read_deployment_specs
from splash_flows.processes import child_env


def test_preview_resolves_every_deployment_and_pool() -> None:
    data = preview(concurrency=3)
    specs = read_deployment_specs(PREFECT_YAML)
    assert [d["name"] for d in data["deployments"]] == [s.name for s in specs]
    assert {p["name"]: p["concurrency_limit"] for p in data["work_pools"]} == pool_limits([s.pool for s in specs], 3)
    dispatcher = next(d for d in data["deployments"] if d["name"] == "run_733_dispatcher")
    assert dispatcher["full_name"] == "dispatcher/run_733_dispatcher"
    assert dispatcher["parameters"] == {"config_path": None}
    assert dispatcher["work_pool"]["name"] == "dispatcher_733_pool"
    prune = next(d for d in data["deployments"] if d["name"] == "prune_733")
    assert prune["parameters"]["limit"] == 1000  # the flow's default, resolved
    assert prune["schedules"][0]["slug"] == "prune-733-hourly"
    assert prune["pull"] and prune["pull"] is not dispatcher["pull"]
    # the zombie-run automation init makes, and the heartbeat interval every pool's runs get
    from splash_flows.flows.zombies import AUTOMATION_NAME, HEARTBEAT_ENV, HEARTBEAT_SECONDS, MISSING_AFTER_SECONDS

    [automation] = data["automations"]
    assert automation["name"] == AUTOMATION_NAME
    assert automation["trigger"]["within"] == MISSING_AFTER_SECONDS and automation["trigger"]["posture"] == "Proactive"
    assert automation["actions"][0]["state"] == "CRASHED"
    assert all(p["job_template_env"] == {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)} for p in data["work_pools"])


def test_preview_command_prints_yaml_and_contacts_no_server() -> None:
    env = child_env({"PREFECT_API_URL": ""})
    done = subprocess.run([sys.executable, "-m", "splash_flows", "init-work-pools", "--preview", "--name",
                           "prune_733"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "Nothing was changed" in done.stdout and "none was contacted" in done.stdout
    data = yaml.safe_load(done.stdout)
    assert [d["name"] for d in data["deployments"]] == ["prune_733"]
    assert [p["name"] for p in data["work_pools"]] == ["prune_733_pool"]
    assert "&id" not in done.stdout  # no YAML anchors: every deployment reads on its own
