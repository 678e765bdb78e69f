"""Secrets never leak from the command line (issue 13 item 3): every secret of the configuration is a unique
marker (tests/support/leaks.py); successes, refusals and failures of the CLI must show none of them, and neither
may the ledger rows the commands wrote. The flows and the watcher: tests/flows/test_no_secret_leaks.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from tests.support.leaks import Leaks, SecretSite, cli, gather_ledger, secret_site
from tests.support.postgres import PostgresServer


@pytest.fixture
def site(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[SecretSite]:
    with secret_site(tmp_path, postgres_server) as made:
        yield made


def test_the_command_line_never_shows_a_secret(site: SecretSite) -> None:
    leaks = Leaks()
    config = str(site.config_file)
    paths = simulate_acquisitions(site.root / "data733", 1, small=True)
    assert cli(leaks, "config", "check", "--config", config).returncode == 0  # logs in to SciCat
    cli(leaks, "--config", config, "status", "--json")
    cli(leaks, "--config", config, "reconcile", "--dry-run", "--min-age", "0")
    cli(leaks, "--config", config, "prune", "--plan")
    cli(leaks, "--config", config, "catalog", "search", "--json")
    # failures: SciCat refuses every token, the ledger is unreachable, SciCat is down
    site.fake.reject_all_tokens = True
    assert cli(leaks, "config", "check", "--config", config, "--json").returncode == 1
    site.fake.reject_all_tokens = False
    site.fake.fail_next(10_000)
    cli(leaks, "--config", config, "catalog", "search")
    site.fake.clear_faults()
    broken = site.config_file.with_name("broken.yaml")
    data = yaml.safe_load(site.config_file.read_text())
    data["ledger"]["url"] = data["ledger"]["url"].replace("@127.0.0.1:", "@127.0.0.1:1")  # a port nobody serves
    broken.write_text(yaml.safe_dump(data))
    assert cli(leaks, "--config", str(broken), "status").returncode != 0
    assert paths
    gather_ledger(leaks, site.ledger_url)
    leaks.check()


