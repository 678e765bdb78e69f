"""``splash-flows calibration`` and ``analyse`` (and the analysis in ``status`` / ``catalog show``), in-process
with Typer's runner on a site whose scans were moved and catalogued through the services."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni
from splash_flows.cli.main import app
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import build_context
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files

runner = CliRunner()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "site"
    data = default_config_data(root)
    data["analysis"] = {"workers": 1, "npt": 300, "gi_npt": 64}
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    config = tmp_path / "splash.yaml"
    config.write_text(yaml.safe_dump(data))
    written = simulate_acquisitions(root / "data733", 3, small=True, hi_lo_every=3,
                                    when=datetime(2026, 3, 1, 10, 0, 0), seed=11)
    paths = [p.relative_to(root / "data733").as_posix() for p in written]
    ctx = build_context(load_config_file(config))
    try:
        move_files(ctx, paths).raise_for_failures()
        catalogue_batch(ctx, paths).raise_for_failures()
    finally:
        ctx.close()
    (tmp_path / "agbh.poni").write_text(simulated_poni(small=True))
    return config, root


def _run(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_pending_then_calibration_add_then_analyse_pending(site: tuple[Path, Path], tmp_path: Path) -> None:
    config, _root = site
    code, out = _run(config, "analyse", "ALS-00000")
    assert code == 0 and "3 waiting for a calibration" in out
    code, out = _run(config, "calibration", "add", str(tmp_path / "agbh.poni"), "--from", "2026-02-01")
    assert code == 0 and "calibration #1 recorded: from 2026-02-01T08:00:00+00:00" in out  # local time (PST)
    assert "3 scan(s) waiting" in out and "analyse --pending" in out
    code, out = _run(config, "calibration", "add", str(tmp_path / "agbh.poni"), "--from", "2026-02-01")
    assert code == 0 and "already recorded" in out
    code, out = _run(config, "calibration", "list", "--json")
    assert [c["id"] for c in json.loads(out)] == [1]
    code, out = _run(config, "analyse", "--pending", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert len(report["reduced"]) == 3 and len(report["catalogued"]) == 3
    code, out = _run(config, "status", "--analysis", "--json")
    rows = json.loads(out)
    assert {r["state"] for r in rows} == {"reduced"} and all(r["results"].endswith("/reduced") for r in rows)
    code, out = _run(config, "status")
    assert "analysis: 3 reduced" in out
    raw_pid = rows[0]["derived_pid"]
    code, out = _run(config, "catalog", "show", raw_pid, "--json")
    assert json.loads(out)["analysis"]["state"] == "derived"
    code, out = _run(config, "catalog", "search", "--json")
    raw = next(d for d in json.loads(out) if d.get("dataset_type", "raw") == "raw")
    code, out = _run(config, "catalog", "show", raw["pid"], "--json")
    info = json.loads(out)["analysis"]
    assert info["state"] == "reduced" and info["derived_pid"] and info["results"].startswith("data733:")
    code, out = _run(config, "catalog", "show", raw["pid"])
    assert "reduction" in out and "reduced (local" in out


def test_analyse_by_pid_and_bad_input(site: tuple[Path, Path], tmp_path: Path) -> None:
    config, _root = site
    _run(config, "calibration", "add", str(tmp_path / "agbh.poni"), "--from", "2026-02-01T00:00+00:00")
    code, out = _run(config, "catalog", "search", "--json")
    pid = json.loads(out)[0]["pid"]
    code, out = _run(config, "analyse", pid)
    assert code == 0 and "1 scan(s) reduced (local)" in out
    code, out = _run(config, "calibration", "add", str(config), "--from", "2026-03-01")
    assert code == 1 and "not a readable PONI file" in out
    code, out = _run(config, "calibration", "add", str(tmp_path / "agbh.poni"), "--from", "yesterday")
    assert code == 2 and "not an ISO date" in out
    code, out = _run(config, "analyse")
    assert code == 2 and "--pending" in out
