"""``splash-flows catalog`` and the catalogue column of ``status``, in-process (Typer's runner), on a site whose
scans were moved and catalogued through the services (no Prefect needed here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.cli.main import app
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import build_context
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from tests.fakes.scicat_server import FakeSciCat

runner = CliRunner()


@dataclass
class Site:
    config: Path
    root: Path
    paths: list[str]


def make_site(tmp_path: Path, catalogue: dict[str, object] | None = None, *, catalogue_now: bool = True) -> Site:
    root = tmp_path / "site"
    data = default_config_data(root)
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    if catalogue is not None:
        data["catalogue"] = catalogue
        data["dataset"] = {"contact_email": "bl733@example.org"}
    config = tmp_path / "splash.yaml"
    config.write_text(yaml.safe_dump(data))
    written = simulate_acquisitions(root / "data733", 4, small=True, hi_lo_every=3, autoexpose_every=4,
                                    proposal="ALS-00622", seed=5)
    paths = [p.relative_to(root / "data733").as_posix() for p in written]
    ctx = build_context(load_config_file(config))
    try:
        move_files(ctx, paths)
        if catalogue_now:
            catalogue_batch(ctx, paths)
    finally:
        ctx.close()
    return Site(config, root, paths)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def run(site: Site, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["--config", str(site.config), *args], env={"COLUMNS": "250"})
    assert result.exit_code == code, result.output
    return result.output


def test_search_lists_one_row_per_dataset_and_filters(site: Site) -> None:
    found = json.loads(run(site, "catalog", "search", "--json"))
    assert len(found) == 3  # 4 scans, one an autoexpose frame
    assert {d["proposal_id"] for d in found} == {"ALS-00622"}
    table = runner.invoke(app, ["--config", str(site.config), "catalog", "search"], env={"COLUMNS": "80"}).output
    assert "3 dataset(s)" in table and max(len(line) for line in table.splitlines()) <= 80
    shorts = [line.split()[0] for line in table.splitlines()[2:] if line.strip()]
    assert len(shorts) == 3 and all(any(d["pid"].endswith("/" + s) or s in d["pid"] for d in found) for s in shorts)
    for d in found:  # the short pid the table shows names the dataset for show (and download)
        short = next(s for s in shorts if d["pid"].rsplit("/", 1)[-1].startswith(s))
        assert json.loads(run(site, "catalog", "show", short, "--json"))["pid"] == d["pid"]
    assert json.loads(run(site, "catalog", "search", "--proposal", "ALS-99999", "--json")) == []
    hilo = [d for d in found if len(d["files"]) == 5]
    by_text = json.loads(run(site, "catalog", "search", "--text", hilo[0]["name"].upper(), "--json"))
    assert [d["pid"] for d in by_text] == [hilo[0]["pid"]]


def test_show_gives_metadata_files_and_locations(site: Site) -> None:
    [first, *_] = json.loads(run(site, "catalog", "search", "--json"))
    shown = json.loads(run(site, "catalog", "show", first["pid"], "--json"))
    assert shown["pid"] == first["pid"] and shown["files"] == first["files"]
    assert shown["ledger_copies"] == {f["path"]: {"data733": "verified", "lamarr": "verified", "cfs": "verified"}
                                      for f in first["files"]}
    text = run(site, "catalog", "show", first["pid"])
    for needle in ("ALS-00622", "locations", "lamarr", "cfs", "scientific metadata", first["files"][0]["chk"]):
        assert needle in text
    missing = run(site, "catalog", "show", "embedded/no-such-pid", code=1)
    assert "no dataset embedded/no-such-pid" in missing


def test_download_refuses_with_a_clear_error_when_no_verified_copy_exists(site: Site, tmp_path: Path) -> None:
    [first, *_] = json.loads(run(site, "catalog", "search", "--json"))
    folder = first["scan_key"].rpartition("/")[0]
    name = first["files"][0]["path"]
    for tier in ("data733", "lamarr", "cfs"):
        (site.root / tier / folder / name).unlink()
    out = run(site, "catalog", "download", first["pid"], "--to", str(tmp_path / "dl"), code=1)
    assert "1 of 2 file downloads" in out and "no verified copy" in out and name in out
    assert not (tmp_path / "dl" / name).exists()
    other = first["files"][1]["path"]
    assert (tmp_path / "dl" / other).read_bytes() == (site.root / "data733" / folder / other).read_bytes()


def test_status_shows_the_catalogue_state_of_every_file(site: Site) -> None:
    rows = json.loads(run(site, "status", "--json"))
    states = {r["path"]: r["catalogue"]["state"] for r in rows}
    assert {s for p, s in states.items() if "autoexpose" in p} == {"excluded"}
    assert {s for p, s in states.items() if "autoexpose" not in p} == {"catalogued"}
    table = run(site, "status")
    assert "catalogue" in table and "catalogued" in table and "excluded" in table


@pytest.fixture
def scicat_site(tmp_path: Path) -> Iterator[tuple[Site, FakeSciCat]]:
    with FakeSciCat() as fake:
        section = {"kind": "scicat", "url": fake.url, "username": "ingestor",
                   "password": fake.users["ingestor"], "retry": {"max_attempts": 1}, "admin_groups": ["ingestor"]}
        fake.fail_next(100_000)
        yield make_site(tmp_path, section), fake


def test_retry_fails_while_the_catalogue_is_down_and_catalogues_once_it_is_back(
        scicat_site: tuple[Site, FakeSciCat]) -> None:
    site, fake = scicat_site
    rows = json.loads(run(site, "status", "--json"))
    assert {r["catalogue"]["state"] for r in rows if "autoexpose" not in r["path"]} == {"pending_catalogue"}
    assert "pending" in run(site, "status")
    down = run(site, "catalog", "retry", code=1)
    assert "catalogue still unavailable" in down and fake.users["ingestor"] not in down
    fake.clear_faults()
    back = json.loads(run(site, "catalog", "retry", "--json"))
    assert back["catalogued"] == 3 and back["pending"] == 0
    assert len(fake.datasets) == 3
    assert json.loads(run(site, "catalog", "retry", "--json"))["catalogued"] == 0
