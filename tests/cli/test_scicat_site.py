"""A site's SciCat from the command line (issue 9 items 12, 14 and 16): `config check` logs in and says whether
the account may attach files, and `demo --catalogue-from` runs the demo against the site's catalogue -- through
an outage -- while keeping the demo's own tiers. Real subprocesses against the FAKE SciCat server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from splash_flows.cli.demo import site_catalogue_sections
from splash_flows.errors import ConfigError
from tests.fakes.scicat_server import FakeSciCat, iter_violations

PASSWORD_VAR = "SPLASH_TEST_SITE_SCICAT_PASSWORD"
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
for _name in ("PREFECT_API_URL", "SPLASH_FLOWS_CONFIG"):
    ENV.pop(_name, None)


def cli(*args: str, password: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "splash_flows", *args], capture_output=True, text=True,
                          env={**ENV, PASSWORD_VAR: password}, timeout=600)
    if code is not None and proc.returncode != code:
        raise AssertionError(f"exit {proc.returncode} (wanted {code})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def fake() -> Iterator[FakeSciCat]:
    """ADMIN_GROUPS = admin. `limited` may create datasets for any proposal (CREATE_DATASET_PRIVILEGED_GROUPS) but
    is in no proposal's group; `ingestor` is in the admin group."""
    users = {"ingestor": "ingest-pw-4711", "limited": "limited-pw-4711"}
    groups = {"ingestor": {"ingestor", "admin"}, "limited": {"proposal-ingest"}}
    with FakeSciCat(users=users, groups=groups, admin_groups={"admin"}, privileged_groups={"proposal-ingest"}) as f:
        yield f
        assert not f.violations, "\n".join(iter_violations(f))


def site_file(tmp_path: Path, fake: FakeSciCat, user: str, **catalogue: Any) -> Path:
    """A site configuration whose tiers are empty folders here (`config check` proves local roots exist): only its
    catalogue and dataset facts matter."""
    roots = {name: tmp_path / "site" / name for name in ("data733", "cfs")}
    for root in roots.values():
        root.mkdir(parents=True, exist_ok=True)
    data = {
        "ledger": {"url": "postgresql://splash:${NOT_SET_HERE}@db.example.org/splash"},
        "tiers": {"data733": {"root": str(roots["data733"])}, "nersc_cfs": {"root": str(roots["cfs"])}},
        "move": {"source": "data733", "targets": ["nersc_cfs"]},
        "catalogue": {"kind": "scicat", "url": fake.url, "username": user, "password": f"${{{PASSWORD_VAR}}}",
                      "retry": {"max_attempts": 1}, "download_tiers": ["nersc_cfs"], **catalogue},
        "dataset": {"contact_email": "bl733@example.org", "source_folder_host": "bl733-data.als.example.org",
                    "archive_tier": "nersc_cfs"},
    }
    path = tmp_path / f"site-{user}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def check_config(tmp_path: Path, fake: FakeSciCat, user: str, password: str, code: int,
                 **catalogue: Any) -> dict[str, Any]:
    data = yaml.safe_load(site_file(tmp_path, fake, user, **catalogue).read_text())
    data["ledger"] = {"url": f"sqlite:///{tmp_path / 'ledger.db'}"}  # config check validates the whole file
    path = tmp_path / f"check-{user}.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = cli("config", "check", "--config", str(path), "--json", password=password, code=code)
    assert password not in proc.stdout + proc.stderr
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_config_check_logs_in_and_finds_an_account_that_cannot_attach_files(
        tmp_path: Path, fake: FakeSciCat) -> None:
    checks = check_config(tmp_path, fake, "limited", fake.users["limited"], 1)
    assert checks["scicat login"]["ok"] and "proposal-ingest" in checks["scicat login"]["detail"]
    assert checks["scicat create datasets"]["ok"]
    attach = checks["scicat attach files"]
    assert not attach["ok"] and "POST /api/v4/origdatablocks" in attach["detail"]
    assert "ADMIN_GROUPS" in attach["detail"] and "catalogue.admin_groups" in attach["detail"]
    assert not checks["scicat attach files (no proposal)"]["ok"]
    assert fake.datasets == {}  # a check creates nothing


def test_config_check_passes_for_an_account_in_an_admin_group(tmp_path: Path, fake: FakeSciCat) -> None:
    checks = check_config(tmp_path, fake, "ingestor", fake.users["ingestor"], 0, admin_groups=["admin"])
    assert all(c["ok"] for c in checks.values()), checks
    # the text form says the same, one line per check
    path = tmp_path / "check-ingestor.yaml"
    text = cli("config", "check", "--config", str(path), password=fake.users["ingestor"]).stdout
    assert "ok scicat attach files: in admin group admin" in text


def test_config_check_reports_a_failed_login_without_the_password(tmp_path: Path, fake: FakeSciCat) -> None:
    checks = check_config(tmp_path, fake, "ingestor", "wrong-pw-0815", 1, admin_groups=["admin"])
    assert list(checks) == ["scicat login"] and "401" in checks["scicat login"]["detail"]


def test_the_demo_takes_only_the_catalogue_and_dataset_facts_of_a_site_file(tmp_path: Path) -> None:
    with FakeSciCat() as fake:
        sections = site_catalogue_sections(site_file(tmp_path, fake, "ingestor"))
    assert set(sections) == {"catalogue", "dataset"}
    assert sections["catalogue"]["password"] == f"${{{PASSWORD_VAR}}}"  # a reference, never the secret
    assert "download_tiers" not in sections["catalogue"] and "archive_tier" not in sections["dataset"]
    literal = tmp_path / "literal.yaml"
    literal.write_text(yaml.safe_dump({"catalogue": {"kind": "scicat", "url": "https://x.org", "username": "u",
                                                     "password": "in-the-file"}}))
    with pytest.raises(ConfigError, match=r"literal.yaml: catalogue.password is written in the file"):
        site_catalogue_sections(literal)
    bare = tmp_path / "bare.yaml"
    bare.write_text("tiers: {}\n")
    with pytest.raises(ConfigError, match=r"bare\.yaml: the file has no `catalogue:` section"):
        site_catalogue_sections(bare)


def raw(fake: FakeSciCat) -> dict[str, dict[str, Any]]:
    """The raw datasets (one per scan); the demo's reduction adds a derived dataset per scan beside them."""
    return {pid: ds for pid, ds in fake.datasets.items() if ds["type"] == "raw"}


@pytest.mark.prefect
def test_demo_against_a_site_scicat_that_is_down_then_back(tmp_path: Path, fake: FakeSciCat) -> None:
    """Item 16: the outage no longer costs the summary; the scans wait and are catalogued once SciCat is back,
    in the site's SciCat, while the files went to the demo's own tiers."""
    site = site_file(tmp_path, fake, "ingestor", admin_groups=["admin"])
    root = tmp_path / "demo"
    password = fake.users["ingestor"]
    up = cli("demo", "--root", str(root), "--scans", "2", "--small", "--catalogue-from", str(site), password=password)
    assert "catalogue (2 datasets)" in up.stdout
    assert len(raw(fake)) == 2 and all(len(fake.blocks_of(pid)) == 1 for pid in raw(fake))
    written = (root / "splash-flows.yaml").read_text()
    assert fake.url in written and password not in written and "lamarr" in written

    fake.fail_next(100_000)  # SciCat answers 503 to everything: the new scan waits, the summary still comes
    down = cli("demo", "--root", str(root), "--scans", "1", "--small", "--more", "--catalogue-from", str(site),
               password=password, code=1)
    assert "demo summary" in down.stdout and "Traceback" not in down.stdout + down.stderr
    assert "catalogue (unreachable)" in down.stdout and "503" in down.stderr
    assert "1 scan(s) wait for the catalogue (pending_catalogue)" in down.stdout and "catalog retry" in down.stdout
    assert "0 copies not verified, 1 scans not catalogued" in down.stderr
    assert len(raw(fake)) == 2

    fake.clear_faults()
    cli("demo", "--root", str(root), "--stop-server", password=password)  # the demo keeps its Prefect server
    config = str(root / "splash-flows.yaml")
    retried = json.loads(cli("--config", config, "catalog", "retry", "--json", password=password).stdout)
    assert retried["catalogued"] == 1
    assert len(raw(fake)) == 3 and all(len(fake.blocks_of(pid)) == 1 for pid in raw(fake))

    # item 15: the keys the embedded catalogue prints, not SciCat's URL-encoded ones
    datasets = json.loads(cli("--config", config, "catalog", "search", "--json", password=password).stdout)
    keys = {k for ds in datasets for k in ds["scientific_metadata"]}
    stored = {k for ds in fake.datasets.values() for k in ds["scientificMetadata"]}
    assert any("%20" in k for k in stored), stored  # SciCat keeps them encoded ...
    assert keys and not [k for k in keys if "%" in k] and any(" " in k for k in keys), keys  # ... we decode
    shown = json.loads(cli("--config", config, "catalog", "show", datasets[0]["pid"], "--json",
                           password=password).stdout)
    assert shown["scientific_metadata"] == datasets[0]["scientific_metadata"]
