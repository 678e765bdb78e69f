"""Pruned copies become location history in the catalogue (issue 5 item 5), without Prefect.

Simulated 7.3.3 scans are moved, catalogued and archived to hpss; the clock is advanced past retention so a
prune deletes data733 (not a catalogue location) and lamarr (one). The catalogue then says lamarr ``pruned``
(since the deletion) and cfs still ``verified``; ``catalog show`` and ``status`` say so; ``catalog download``
reads a verified tier. A catalogue outage during the update (the fake SciCat answering 503) does not fail the
prune: the scans stay queued and the update lands on ``retry_pending``; so does one interrupted by a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.cli.main import app
from splash_flows.config import (
    CatalogueRetryConfig,
    Config,
    DatasetConfig,
    SciCatCatalogueConfig,
    default_config_data,
    load_config_file,
)
from splash_flows.context import Context, build_context
from splash_flows.ledger.catalogue import file_states, get_scan, scan_counts
from splash_flows.services import prune
from splash_flows.services.catalogue import catalogue_batch, download_dataset, retry_pending
from splash_flows.services.move import move_files
from tests.fakes.clock import FakeClock
from tests.fakes.scicat_server import FakeSciCat, iter_violations
from tests.fakes.tiers import SimulatedCrash
from tests.support.prune import archive

runner = CliRunner()


def locations(ctx: Context) -> dict[str, dict[str, tuple[str, datetime]]]:
    """Per dataset pid: tier -> (state, since), as the catalogue holds them."""
    return {e.pid: {loc.tier: (loc.state, loc.since) for loc in e.doc.locations} for e in ctx.catalogue().search()}


def moved_catalogued_archived(ctx: Context, clock: FakeClock) -> list[str]:
    """What the demo does (small simulated scans, moved and catalogued) plus the archive copy on hpss."""
    root = Path(ctx.config.tiers["data733"].root)
    written = simulate_acquisitions(root, 3, small=True, hi_lo_every=3, autoexpose_every=0, proposal="ALS-00622",
                                    seed=11)
    paths = [p.relative_to(root).as_posix() for p in written]
    report = move_files(ctx, paths)
    report.raise_for_failures()
    prune.schedule_prune(ctx, report.register.sources, clock=clock)
    catalogued = catalogue_batch(ctx, paths)
    catalogued.raise_for_failures()
    assert len(catalogued.catalogued) == 3 and not catalogued.all_pending()
    for p in paths:
        assert archive(ctx, p)
    return paths



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))  # the simulator stamps acquisitions with the real time


def test_pruned_copies_are_history_in_the_catalogue(config_file: Path, clock: FakeClock, tmp_path: Path) -> None:
    ctx = build_context(load_config_file(config_file, {}))
    try:
        paths = moved_catalogued_archived(ctx, clock)
        before = locations(ctx)
        assert all(set(locs) == {"lamarr", "cfs"} and {s for s, _ in locs.values()} == {"verified"}
                   for locs in before.values())
        clock.advance(days=200)  # data733 (180 d) and lamarr (30 d, once on cfs and hpss) are due; cfs is not

        report = prune.execute_prune(ctx, clock=clock)

        report.raise_for_failures()
        assert sorted((p.tier, p.path) for p in report.pruned) == sorted(
            (t, p) for p in paths for t in ("data733", "lamarr"))
        assert sorted(report.catalogue_updated.values()) == sorted(before) and not report.catalogue_pending
        after = locations(ctx)
        for pid, locs in after.items():
            assert locs["lamarr"] == ("pruned", clock.now)  # since the deletion
            assert locs["cfs"] == before[pid]["cfs"]  # untouched, still verified since the move
            assert set(locs) == {"lamarr", "cfs"}  # data733 is not a catalogue location
        assert scan_counts(ctx.ledger) == {"catalogued": 3}
        assert {s.state for s in file_states(ctx.ledger).values()} == {"catalogued"}
        # nothing more to update: a catalogue step finds every scan unchanged
        assert len(catalogue_batch(ctx, []).retried.catalogued) == 0  # type: ignore[union-attr]
        # download reads cfs, never a pruned tier (the ledger decides, not the catalogue)
        pid = next(iter(after))
        got = download_dataset(ctx, pid, tmp_path / "download")
        got.raise_for_failures()
        assert {f.tier for f in got.files} == {"cfs"}
        assert all(any(n.startswith("lamarr: not verified in the ledger (pruned)") for n in notes)
                   for notes in got.notes.values())
    finally:
        ctx.close()

    env = {"COLUMNS": "250"}
    shown = runner.invoke(app, ["--config", str(config_file), "catalog", "show", pid, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert {loc["tier"]: loc["state"] for loc in doc["locations"]} == {"lamarr": "pruned", "cfs": "verified"}
    assert all(states["data733"] == "pruned" and states["lamarr"] == "pruned" and states["cfs"] == "verified"
               for states in doc["ledger_copies"].values())
    text = runner.invoke(app, ["--config", str(config_file), "catalog", "show", pid], env=env)
    assert text.exit_code == 0 and "pruned" in text.stdout and clock.now.date().isoformat() in text.stdout
    status = runner.invoke(app, ["--config", str(config_file), "status", "--json"], env=env)
    rows = json.loads(status.stdout)
    assert {(r["copies"]["data733"]["state"], r["copies"]["lamarr"]["state"], r["catalogue"]["state"])
            for r in rows} == {("pruned", "pruned", "catalogued")}


@pytest.fixture
def scicat(tmp_path: Path) -> Iterator[tuple[Config, FakeSciCat]]:
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    with FakeSciCat() as fake:
        base = load_config_file(_write(tmp_path / "splash.yaml", data), {})
        config = base.model_copy(update={
            "catalogue": SciCatCatalogueConfig(kind="scicat", url=fake.url, username="ingestor",
                                               password=SecretStr(fake.users["ingestor"]),
                                               retry=CatalogueRetryConfig(max_attempts=2, backoff_base=0.0),
                                               admin_groups=["ingestor"]),
            "dataset": DatasetConfig(contact_email="bl733@example.org")})
        yield config, fake
        assert not fake.violations, "\n".join(iter_violations(fake))


def _write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_catalogue_outage_does_not_fail_the_prune_and_the_update_lands_on_retry(
        scicat: tuple[Config, FakeSciCat], clock: FakeClock) -> None:
    config, fake = scicat
    ctx = build_context(config)
    try:
        paths = moved_catalogued_archived(ctx, clock)
        pids = sorted(locations(ctx))
        clock.advance(days=200)
        fake.fail_next(100_000)  # SciCat is down during the prune

        report = prune.execute_prune(ctx, clock=clock)

        report.raise_for_failures()  # the deletions happened and are recorded; the outage is not a failure
        assert len(report.pruned) == 2 * len(paths) and not report.catalogue_updated
        assert len(report.catalogue_pending) == 3 and "location update waits" in next(
            iter(report.catalogue_pending.values()))
        assert "queued for 3 scan(s)" in report.summary()
        assert scan_counts(ctx.ledger) == {"pending_catalogue": 3}
        assert {s.pid for s in file_states(ctx.ledger).values()} == set(pids)  # the pid is kept while queued

        fake.clear_faults()  # back: the next catalogue step (or `catalog retry`) does the update
        retried = retry_pending(ctx)

        assert sorted(retried.catalogued.values()) == pids and not retried.pending and not retried.failed
        assert all(locs["lamarr"] == ("pruned", clock.now) and locs["cfs"][0] == "verified"
                   for locs in locations(ctx).values())
        assert scan_counts(ctx.ledger) == {"catalogued": 3}
        assert retry_pending(ctx).catalogued == {}  # nothing left queued
    finally:
        ctx.close()


def test_a_location_update_interrupted_by_a_crash_is_done_by_the_next_retry(
        config_file: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = build_context(load_config_file(config_file, {}))
    try:
        moved_catalogued_archived(ctx, clock)
        clock.advance(days=200)

        def killed(*args: object) -> None:
            raise SimulatedCrash("killed after the deletions were recorded")

        monkeypatch.setattr(prune.catalogue_service, "update_locations", killed)
        with pytest.raises(SimulatedCrash):
            prune.execute_prune(ctx, clock=clock)
        monkeypatch.undo()
        assert scan_counts(ctx.ledger) == {"pending_catalogue": 3}  # queued with the deletions, not lost
        assert all(locs["lamarr"][0] == "verified" for locs in locations(ctx).values())

        retried = catalogue_batch(ctx, [])  # the next move's catalogue step retries the queue first
        assert retried.retried is not None and len(retried.retried.catalogued) == 3
        assert all(locs["lamarr"][0] == "pruned" for locs in locations(ctx).values())
        record = get_scan(ctx.ledger, "data733", next(iter(file_states(ctx.ledger).values())).scan_key)
        assert record is not None and record.locations["lamarr"]["state"] == "pruned"
    finally:
        ctx.close()
