"""The move service, unchanged, with every tier a Globus collection (only the configuration differs).

Globus is a fake Transfer service over local folders (tests/fakes/globus.py): its tasks really copy the bytes,
so the test can check that every file arrived, was recorded verified, and that a re-run sends nothing.
Runs on SQLite and on PostgreSQL (the ``ledger_url`` fixture).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import parse_config
from splash_flows.context import Context
from splash_flows.ledger import EventKind
from splash_flows.ledger.transfers import TransferBatches
from splash_flows.services.move import move_files
from tests.conftest import write_file
from tests.fakes.globus import ENV, FakeClock, FakeGlobus, fake_collections, globus_config_data, make_context


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


@pytest.fixture
def fake(site: Path) -> Iterator[FakeGlobus]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeGlobus(rsps, fake_collections(site))


@pytest.fixture
def gctx(site: Path, ledger_url: str, fake: FakeGlobus) -> Iterator[Context]:
    config = parse_config(globus_config_data(site, ledger_url), source="<test>", base=site, environ=ENV)
    ctx = make_context(config, FakeClock())
    yield ctx
    ctx.close()


def test_move_files_runs_unchanged_on_globus_tiers(gctx: Context, fake: FakeGlobus, site: Path) -> None:
    paths = [f"ALS-00622/20260301/scan_{i:03d}.edf" for i in range(4)]
    for i, p in enumerate(paths):
        write_file(site / "data733", p, os.urandom(5000 + i))

    report = move_files(gctx, paths)

    report.raise_for_failures()
    assert report.verified_everywhere() == sorted(paths)
    assert all(len(r.copied) == 4 and r.bytes_copied == sum(5000 + i for i in range(4))
               for r in report.tiers.values())
    for p in paths:
        data = (site / "data733" / p).read_bytes()
        assert (site / "remote_lamarr" / p).read_bytes() == data
        assert (site / "remote_cfs" / p).read_bytes() == data
    for row in gctx.ledger.status():
        assert {t: c.state for t, c in row.copies.items()} == {"data733": "verified", "lamarr": "verified",
                                                              "cfs": "verified"}
        assert row.copies["cfs"].checksum == row.checksum  # the ledger's source checksum, verified by Globus
    copied = gctx.ledger.events(kind=EventKind.COPIED)
    assert len(copied) == 8 and all(e.detail["verified_by"] == "globus" and e.detail["globus_task_id"]
                                    for e in copied)
    bodies = fake.bodies("transfer")
    assert sorted(b["destination_endpoint"] for b in bodies) == sorted(
        [gctx.config.tiers["lamarr"].collection_id, gctx.config.tiers["cfs"].collection_id])  # type: ignore[union-attr]
    assert all(b["sync_level"] == 3 and b["verify_checksum"] is True and len(b["DATA"]) == 4 for b in bodies)
    assert [b.status for b in TransferBatches(gctx.ledger).recent()] == ["succeeded", "succeeded"]

    again = move_files(gctx, paths)  # a re-run: Globus finds every copy identical by checksum, sends nothing
    again.raise_for_failures()
    assert all(r.copied == [] and len(r.skipped) == 4 for r in again.tiers.values())
    assert gctx.ledger.counts()["copies"] == 12


def test_a_missing_source_file_fails_alone(gctx: Context, fake: FakeGlobus, site: Path) -> None:
    write_file(site / "data733", "ok.edf", b"fine")
    report = move_files(gctx, ["ok.edf", "gone.edf"])
    assert report.verified_everywhere() == ["ok.edf"]
    assert set(report.failures()) == {"gone.edf (register)"}


def test_status_transfers_shows_the_metrics(gctx: Context, fake: FakeGlobus, site: Path) -> None:
    write_file(site / "data733", "a.edf", b"x" * 1234)
    move_files(gctx, ["a.edf"]).raise_for_failures()
    config_file = site / "splash.yaml"
    import yaml

    data = globus_config_data(site, gctx.config.ledger.url_value())
    config_file.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(config_file), "status", "--transfers", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    assert len(rows) == 2
    assert {r["dest_tier"] for r in rows} == {"lamarr", "cfs"}
    for r in rows:
        assert (r["kind"], r["status"], r["files"], r["bytes_transferred"]) == ("transfer", "succeeded", 1, 1234)
        assert r["effective_bytes_per_second"] == 12340.0 and r["task_id"]
    table = runner.invoke(app, ["--config", str(config_file), "status", "--transfers"], env={**ENV, "COLUMNS": "200"})
    assert table.exit_code == 0 and "data733 -> cfs" in table.stdout and "succeeded" in table.stdout


def test_reads_without_a_mount_go_through_globus(gctx: Context, fake: FakeGlobus, site: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import splash_flows.tiers.globus as globus_mod

    paths = ["A/s1.edf", "A/s2.edf", "A/sub/s3.edf", "B/s4.edf", "top.edf"]
    for p in paths:
        write_file(site / "data733", p, p.encode())
    move_files(gctx, paths).raise_for_failures()
    monkeypatch.setattr(globus_mod, "LS_PAGE", 2)  # exercise paging of folder listings
    cfs = gctx.tier("cfs")
    listed = list(cfs.walk())
    local = [(st.path, st.size) for st in gctx.tier("data733").walk()]  # data733 is read through its mount
    assert [(st.path, st.size) for st in listed] == local  # the same order and sizes as a local walk
    assert sorted(p for p, _ in local) == sorted(paths)
    assert [st.path for st in cfs.walk("A")] == ["A/s1.edf", "A/s2.edf", "A/sub/s3.edf"]
    st = cfs.stat("A/sub/s3.edf")
    assert st is not None and st.size == len(b"A/sub/s3.edf")
    assert st.mtime == int((site / "data733" / "A/sub/s3.edf").stat().st_mtime)  # preserved timestamp
    assert cfs.stat("A/nope.edf") is None
    collection = gctx.config.tiers["cfs"].collection_id  # type: ignore[union-attr]
    assert cfs.url("A/s1.edf") == f"globus://{collection}/global/cfs/733/A/s1.edf"
