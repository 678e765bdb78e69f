"""The flow-733 playbook (deploy/ansible): Ansible's own syntax check, and a ``--check --diff`` run against this
machine (connection local) that must pass, change nothing, keep every secret out of its output, and render a
configuration that ``splash-flows`` accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from splash_flows.config import parse_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK_DIR = REPO / "deploy" / "ansible"
ANSIBLE = Path(sys.executable).with_name("ansible-playbook")
MARKER = "s3cret-MARKER-7f3a"


def _require() -> None:
    missing = []
    if not ANSIBLE.exists():
        missing.append("ansible-playbook (pip: ansible-core, in the test extras)")
    if shutil.which("apt-get") is None or subprocess.run(["/usr/bin/python3", "-c", "import apt"],
                                                        capture_output=True, check=False).returncode:
        missing.append("apt with the system Python's python3-apt (scripts/ensure-packages.sh python3-apt)")
    if missing:
        if os.environ.get("SPLASH_TEST_REQUIRE_ANSIBLE") == "1":
            pytest.fail(f"missing: {'; '.join(missing)} but SPLASH_TEST_REQUIRE_ANSIBLE=1")
        pytest.skip(f"missing: {'; '.join(missing)}")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ANSIBLE), *args], cwd=PLAYBOOK_DIR, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", **(env or {})},
                          check=False)


def test_syntax_check() -> None:
    _require()
    done = _run(["-i", "localhost,", "site.yml", "--syntax-check"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_run_against_localhost_changes_nothing_and_shows_no_secret(tmp_path: Path) -> None:
    _require()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("splash_flows-*.whl")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[flow733]\nlocalhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3 "
                         "ansible_become=false\n")
    before = {p: p.exists() for p in (Path("/etc/splash-flows"), Path("/opt/splash-flows"))}
    env = {"SPLASH_LEDGER_PASSWORD": MARKER, "PREFECT_DB_PASSWORD": MARKER + "-db",
           "SCICAT_PASSWORD": MARKER + "-scicat", "SPLASH_ALERT_URL": f"json://127.0.0.1:9/{MARKER}"}
    done = _run(["-i", str(inventory), "site.yml", "--check", "--diff", "-e", f"splash_wheel={wheel}"], env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0", out), out
    assert MARKER not in out  # secrets go to root-only env files, never into a diff or a log line
    assert {p: p.exists() for p in before} == before  # check mode changed nothing here
    for task in ("Install PostgreSQL", "Install the package into its own venv", "systemd units from deploy/systemd",
                 "Environment of the splash units"):
        assert f"TASK [{'postgresql' if 'PostgreSQL' in task else 'splash_flows'} : {task}" in out
    # the configuration it would write is one splash-flows loads (its ${VAR}s filled from the env file)
    block = out.split("TASK [splash_flows : Configuration")[1].split("TASK [")[0]
    text = "\n".join(line[1:] for line in block.splitlines() if line.startswith("+") and not line.startswith("+++"))
    config = parse_config(yaml.safe_load(text), source="rendered", base=tmp_path, environ=env)
    assert config.ledger.url_value().startswith(f"postgresql://splash:{MARKER}@127.0.0.1")
    assert config.monitoring.host == "127.0.0.1"
    assert [u.get_secret_value() for u in config.alerts.urls] == [env["SPLASH_ALERT_URL"]]
