"""``splash-flows archive``, ``restore``, ``catalog show``, ``status`` and ``prune --plan`` after an archive, in-process
(Typer's runner), on a site whose scans were moved, scheduled and catalogued as ``make demo`` leaves them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import load_config_file
from splash_flows.context import build_context
from splash_flows.services import prune
from tests.cli.test_catalog_cli import make_site

runner = CliRunner()


def test_archive_plan_execute_catalog_restore_prune_plan(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    cfg = ["--config", str(site.config)]
    ctx = build_context(load_config_file(site.config))
    try:
        prune.schedule_all(ctx)
    finally:
        ctx.close()
    before = runner.invoke(app, [*cfg, "prune", "--plan", "--until", "+31d", "--json"])
    assert before.exit_code == 0, before.output
    assert not [i for i in json.loads(before.output)["due"] if i["tier"] == "lamarr"]  # waits for hpss

    plan = runner.invoke(app, [*cfg, "archive", "--plan", "--json"])
    assert plan.exit_code == 0, plan.output
    new = json.loads(plan.output)["new"]
    assert len(new) == 1 and new[0]["name"].startswith("ALS-00622/ALS-00622_") and new[0]["files"] == len(site.paths)
    text_plan = runner.invoke(app, [*cfg, "archive", "--plan"])
    assert "1 new" in text_plan.output

    done = runner.invoke(app, [*cfg, "archive", "--execute", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["verified"] == [new[0]["name"]] and result["files"] == len(site.paths)
    assert result["failed"] == {} and result["catalogued"] == [new[0]["name"]]

    pid = json.loads(runner.invoke(app, [*cfg, "catalog", "search", "--json"]).output)[0]["pid"]
    shown = runner.invoke(app, [*cfg, "catalog", "show", pid], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "archived" in shown.output and new[0]["name"].split("/")[1] in shown.output

    out = tmp_path / "restored"
    restored = runner.invoke(app, [*cfg, "restore", site.paths[0], pid, "--to", str(out), "--json"])
    assert restored.exit_code == 0, restored.output
    got = json.loads(restored.output)["restored"]
    assert site.paths[0] in {r["path"] for r in got}
    for r in got:
        assert Path(r["to"]).read_bytes() == (site.root / "data733" / r["path"]).read_bytes()
    missing = runner.invoke(app, [*cfg, "restore", "no/such/file.edf", "--to", str(out)])
    assert missing.exit_code == 1 and "no/such/file.edf" in missing.output

    lamarr = json.loads(runner.invoke(app, [*cfg, "prune", "--plan", "--until", "+31d", "--json"]).output)
    assert {i["path"] for i in lamarr["due"] if i["tier"] == "lamarr"} == set(site.paths)
    assert all([r["tier"] for r in i["requires"]] == ["cfs", "hpss"] for i in lamarr["due"] if i["tier"] == "lamarr")
    data733 = json.loads(runner.invoke(app, [*cfg, "prune", "--plan", "--until", "+181d", "--json"]).output)
    d733 = [i for i in data733["due"] if i["tier"] == "data733"]
    assert {i["path"] for i in d733} == set(site.paths)
    assert all("hpss verified" in i["why"] for i in d733)
    cfs = json.loads(runner.invoke(app, [*cfg, "prune", "--plan", "--until", "+366d", "--json"]).output)
    assert {i["path"] for i in cfs["due"] if i["tier"] == "cfs"} == set(site.paths)
    assert not [i for i in data733["due"] if i["tier"] == "cfs"]  # cfs only once its own age is met

    drill = runner.invoke(app, [*cfg, "status"], env={"COLUMNS": "200"})
    assert "restore drill" not in drill.output
    ctx = build_context(load_config_file(site.config))
    try:
        from splash_flows.services.archive.service import restore_drill

        assert restore_drill(ctx).ok
    finally:
        ctx.close()
    status = runner.invoke(app, [*cfg, "status"], env={"COLUMNS": "200"})
    assert "last restore drill: ok" in status.output


def test_archive_needs_exactly_one_mode(tmp_path: Path) -> None:
    site = make_site(tmp_path, catalogue_now=False)
    result = runner.invoke(app, ["--config", str(site.config), "archive"])
    assert result.exit_code == 2 and "--plan or --execute" in result.output
