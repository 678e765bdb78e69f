"""The Globus flight check (service and ``splash-flows globus check``) against the fake Transfer service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import yaml
from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import Config, default_config, parse_config
from splash_flows.context import Context, build_context
from splash_flows.errors import ConfigError
from splash_flows.ledger.transfers import TransferBatches
from splash_flows.services.flight_check import PROBE_DIR, run_flight_check
from tests.fakes.globus import (
    CFS_COLLECTION,
    CLIENT_SECRET,
    ENV,
    LAMARR_COLLECTION,
    FakeClock,
    FakeGlobus,
    fake_collections,
    globus_config_data,
    make_context,
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    return tmp_path / "site"


@pytest.fixture
def fake(site: Path) -> Iterator[FakeGlobus]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeGlobus(rsps, fake_collections(site))


def config_for(site: Path, **kwargs: Any) -> Config:
    data = globus_config_data(site, f"sqlite:///{site / 'ledger.db'}", **kwargs)
    return parse_config(data, source="<test>", base=site, environ=ENV)


@pytest.fixture
def gctx(site: Path, fake: FakeGlobus) -> Iterator[Context]:
    ctx = make_context(config_for(site), FakeClock())
    yield ctx
    ctx.close()


def by_name(report: Any) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def test_everything_works(gctx: Context, fake: FakeGlobus, site: Path) -> None:
    report = run_flight_check(gctx)
    assert report.ok, report.summary()
    assert list(by_name(report)) == [
        "credentials", "list data733", "list lamarr", "list cfs", "probe file on data733",
        "probe data733 -> lamarr", "delete probe on lamarr", "probe data733 -> cfs", "delete probe on cfs"]
    checks = by_name(report)
    assert "verified by Globus" in checks["probe data733 -> cfs"].detail
    assert "4096 bytes" in checks["probe data733 -> cfs"].detail
    # the probe really went end to end, and nothing is left behind
    (sent,) = [b for b in fake.bodies("transfer") if b["destination_endpoint"] == CFS_COLLECTION]
    assert sent["verify_checksum"] is True and sent["DATA"][0]["destination_path"].startswith(
        f"/global/cfs/733/{PROBE_DIR}/")
    assert len(fake.bodies("delete")) == 2
    for folder in ("remote_cfs", "remote_lamarr", "data733"):
        leftovers = list((site / folder).rglob("*")) if (site / folder).exists() else []
        assert [p for p in leftovers if p.is_file()] == []
    kinds = sorted(b.kind for b in TransferBatches(gctx.ledger).recent())
    assert kinds == ["delete", "delete", "probe", "probe"]
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_expired_secret_is_said_plainly_and_nothing_else_runs(gctx: Context, fake: FakeGlobus) -> None:
    fake.reject_secret = True
    report = run_flight_check(gctx)
    assert not report.ok
    checks = by_name(report)
    assert checks["credentials"].ok is False
    assert "client secret is wrong, expired or revoked" in checks["credentials"].detail
    assert "renew the client secret" in (checks["credentials"].hint or "")
    assert CLIENT_SECRET not in json.dumps(report.to_json())
    assert all(c.ok is None for name, c in checks.items() if name != "credentials")
    assert fake.tasks == {}


def test_missing_consent_and_unreachable_collection(gctx: Context, fake: FakeGlobus) -> None:
    fake.consent_missing.add(LAMARR_COLLECTION)
    fake.unreachable.add(CFS_COLLECTION)
    report = run_flight_check(gctx)
    checks = by_name(report)
    assert checks["credentials"].ok and checks["list data733"].ok
    lamarr = checks["list lamarr"]
    assert lamarr.ok is False and "missing consent" in lamarr.detail and "data_access" in lamarr.detail
    assert "consent" in (lamarr.hint or "")
    cfs = checks["list cfs"]
    assert cfs.ok is False and "GCDisconnected" in cfs.detail and "unreachable" in cfs.detail
    assert "not reachable" in (cfs.hint or "")
    assert checks["probe data733 -> lamarr"].ok is None and checks["probe data733 -> cfs"].ok is None
    assert "2 failed" in report.summary()


def test_permission_denied_on_a_collection(gctx: Context, fake: FakeGlobus) -> None:
    fake.denied.add(CFS_COLLECTION)
    checks = by_name(run_flight_check(gctx))
    assert checks["list cfs"].ok is False and "permission denied" in checks["list cfs"].detail
    assert "clients.auth.globus.org" in (checks["list cfs"].hint or "")
    assert checks["probe data733 -> lamarr"].ok is True


def test_without_a_mount_an_existing_probe_file_is_moved(site: Path, fake: FakeGlobus) -> None:
    (site / "data733" / "probe").mkdir(parents=True)
    (site / "data733" / "probe" / "probe.txt").write_bytes(b"probe")
    ctx = make_context(config_for(site, data733_mounted=False, flight_check={"probe_path": "probe/probe.txt"}),
                       FakeClock())
    try:
        report = run_flight_check(ctx)
        assert report.ok, report.summary()
        assert "existing probe file probe/probe.txt (5 bytes)" in by_name(report)["probe file on data733"].detail
        assert (site / "data733" / "probe" / "probe.txt").read_bytes() == b"probe"  # only read, never removed
    finally:
        ctx.close()


def test_without_a_mount_or_probe_path_the_probe_check_fails(site: Path, fake: FakeGlobus) -> None:
    ctx = make_context(config_for(site, data733_mounted=False), FakeClock())
    try:
        report = run_flight_check(ctx)
        check = by_name(report)["probe file on data733"]
        assert check.ok is False and "globus.flight_check.probe_path" in check.detail
        assert not report.ok
    finally:
        ctx.close()


def test_no_globus_tier_is_a_config_error(tmp_path: Path) -> None:
    ctx = build_context(default_config(tmp_path))
    try:
        with pytest.raises(ConfigError, match="no tier is of kind globus"):
            run_flight_check(ctx)
    finally:
        ctx.close()


def test_cli_globus_check(site: Path, fake: FakeGlobus) -> None:
    data = globus_config_data(site, f"sqlite:///{site / 'ledger.db'}", transfer={"poll_initial_s": 0.001,
                                                                                 "poll_max_s": 0.001})
    config_file = site / "splash.yaml"
    config_file.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    env = {**ENV, "COLUMNS": "200"}
    ok = runner.invoke(app, ["--config", str(config_file), "globus", "check", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    fake.unreachable.add(CFS_COLLECTION)
    bad = runner.invoke(app, ["--config", str(config_file), "globus", "check", "--no-probe"], env=env)
    assert bad.exit_code == 1
    assert "list cfs" in bad.stdout and "FAILED" in bad.stdout and "what to do" in bad.stdout
    assert "probe" not in bad.stdout
    assert CLIENT_SECRET not in bad.stdout + bad.stderr
