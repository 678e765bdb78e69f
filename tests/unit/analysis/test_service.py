"""The analysis service end to end on real files: calibration pending then finished, a truncated frame among
good ones, hi/lo, delivery of the results, derived datasets linked to raw ones and updated in place."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from splash_flows.analysis import service
from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni
from splash_flows.config import Config
from splash_flows.context import Context, build_context
from splash_flows.ledger import analysis as ledger_an
from splash_flows.ledger.models import AnalysisState
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files

WHEN = datetime(2026, 3, 1, 10, 0, 0)  # beamline local time of the first simulated exposure


@pytest.fixture
def site(sqlite_config: Config) -> Iterator[tuple[Context, list[str]]]:
    analysis = sqlite_config.analysis.model_copy(update={"workers": 1, "npt": 300, "gi_npt": 64})
    config = sqlite_config.model_copy(update={"analysis": analysis})
    root = Path(config.tiers["data733"].root)
    written = simulate_acquisitions(root, 3, small=True, hi_lo_every=3, when=WHEN, seed=3)
    paths = [p.relative_to(root).as_posix() for p in written]
    ctx = build_context(config)
    move_files(ctx, paths).raise_for_failures()
    catalogue_batch(ctx, paths).raise_for_failures()
    yield ctx, paths
    ctx.close()


def _calibrate(ctx: Context, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
    ledger_an.add_calibration(ctx.ledger, simulated_poni(small=True), start, source="agbh-2026-01.poni")


def _derived(ctx: Context) -> list[str]:
    return [e.pid for e in ctx.catalogue().search() if e.doc.dataset_type == "derived"]


def test_no_calibration_leaves_scans_pending_then_adding_one_finishes_them(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    report = service.analyse_paths(ctx, paths)
    assert len(report.pending) == 3 and not report.reduced and not report.failed
    assert all("calibration add" in why for why in report.pending.values())
    records = ledger_an.analyses(ctx.ledger)
    assert {r.state for r in records} == {AnalysisState.PENDING_CALIBRATION}
    assert not list(Path(ctx.config.tiers["data733"].root).rglob("reduced"))  # nothing guessed

    _calibrate(ctx, datetime(2026, 6, 1, tzinfo=UTC))  # starts after the scans: still not covered
    assert len(service.analyse_pending(ctx).pending) == 3

    _calibrate(ctx)
    report = service.analyse_pending(ctx)
    assert len(report.reduced) == 3 and not report.pending and not report.failed
    assert sorted(report.merges.values()) == ["gb", "single", "single"]
    records = ledger_an.analyses(ctx.ledger)
    assert {r.state for r in records} == {AnalysisState.REDUCED}
    assert all(r.calibration_id == 2 and r.pid for r in records)  # the calibration valid then, not the later one


def test_results_are_delivered_and_catalogued_as_derived_datasets(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    _calibrate(ctx)
    report = service.analyse_paths(ctx, paths)
    assert len(report.reduced) == 3 and len(report.catalogued) == 3
    outputs = [p for ps in report.reduced.values() for p in ps]
    assert all("/reduced/" in p for p in outputs)
    for target in ctx.config.move.targets:  # moved onward like any file, verified
        assert ctx.ledger.count_verified(target, outputs, ctx.config.move.source) == len(outputs)
    raw = {e.doc.scan_key: e.pid for e in ctx.catalogue().search() if e.doc.dataset_type == "raw"}
    assert len(raw) == 3  # the outputs were never catalogued as raw data
    for key, pid in report.catalogued.items():
        entry = ctx.catalogue().get(pid)
        assert entry.doc.input_datasets == [raw[key]]
        assert entry.doc.scan_key == service.derived_key(key, "reduced")
        assert entry.doc.scientific_metadata["method"] == "pyFAI integrate1d"
        assert entry.doc.scientific_metadata["npt"] == 300
        assert "Wavelength" in entry.doc.job_parameters["poni"]
        assert any(s.startswith("pyFAI ") for s in entry.doc.used_software)
        assert {loc.tier for loc in entry.doc.locations} == {"lamarr", "cfs"}
        png = ctx.catalogue().thumbnail(pid, service.THUMBNAIL_CAPTION)
        assert png is not None and png.startswith(b"\x89PNG")

    again = service.analyse_paths(ctx, paths)  # seen again, nothing changed: nothing reduced again
    assert not again.reduced and not again.failed and set(again.up_to_date) == set(report.reduced)
    assert all("already reduced" in why for why in again.up_to_date.values())
    assert "3 already up to date" in again.describe()

    root = Path(ctx.config.tiers["data733"].root)
    key = next(iter(report.reduced))
    frame = next(root / p for p in paths if p.startswith(key) and p.endswith(".edf"))
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))  # rewritten since
    changed = service.analyse_paths(ctx, paths)  # re-reduced; its derived dataset updated, never added
    assert set(changed.reduced) == {key} and changed.catalogued == {key: report.catalogued[key]}
    assert len(_derived(ctx)) == 3


def test_a_scan_is_reduced_again_when_its_outputs_or_calibration_change(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    _calibrate(ctx)
    report = service.analyse_paths(ctx, paths)
    root = Path(ctx.config.tiers["data733"].root)
    key, outputs = next(iter(report.reduced.items()))
    (root / next(o for o in outputs if o.endswith(".dat"))).unlink()  # an output lost on data733
    assert set(service.analyse_paths(ctx, paths).reduced) == {key}

    _calibrate(ctx, datetime(2026, 2, 1, tzinfo=UTC))  # a newer calibration now covers every scan
    again = service.analyse_paths(ctx, paths)
    assert set(again.reduced) == set(report.reduced) and not again.up_to_date
    assert {r.calibration_id for r in ledger_an.analyses(ctx.ledger)} == {2}


def test_outputs_are_never_analysed_again(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    _calibrate(ctx)
    outputs = [p for ps in service.analyse_paths(ctx, paths).reduced.values() for p in ps]
    report = service.analyse_paths(ctx, outputs)
    assert not report.reduced and set(report.skipped) == set(outputs)
    assert catalogue_batch(ctx, outputs).summary()["catalogued"] == 0


def test_a_truncated_frame_is_one_clear_error_and_the_rest_is_reduced(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    _calibrate(ctx)
    root = Path(ctx.config.tiers["data733"].root)
    victim = next(p for p in paths if p.endswith(".edf") and "_hi_" not in p and "_lo_" not in p)
    (root / victim).write_bytes((root / victim).read_bytes()[:5000])
    report = service.analyse_paths(ctx, paths)
    assert len(report.failed) == 1 and len(report.reduced) == 2
    (key, err), = report.failed.items()
    assert victim.rsplit(".", 1)[0] == key and "truncated" in str(err) and victim in str(err)
    assert ledger_an.get_analysis(ctx.ledger, "data733", key).state == AnalysisState.FAILED


def test_hilo_without_gb_is_merged_by_us_and_says_so(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    _calibrate(ctx)
    root = Path(ctx.config.tiers["data733"].root)
    gb = next(p for p in paths if p.endswith(".gb"))
    (root / gb).unlink()
    key = gb.removesuffix("_sfloat_2m.gb")
    young = service.analyse_paths(ctx, [p for p in paths if p != gb])  # the .gb may still be on its way
    assert key not in young.reduced and "gb missing" in young.skipped[key]
    hour_ago = time.time() - 3600
    for p in paths:
        if p != gb:
            os.utime(root / p, (hour_ago, hour_ago))
    report = service.analyse_paths(ctx, [p for p in paths if p != gb])  # settled: merged by us
    assert report.merges[key] == "own"
    record = ledger_an.get_analysis(ctx.ledger, "data733", key)
    assert record is not None and record.merge == "own"
    pid = report.catalogued[key]
    assert ctx.catalogue().get(pid).doc.scientific_metadata["merge"] == "own"
