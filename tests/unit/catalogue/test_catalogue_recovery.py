"""Issue 9 items 4 and 5: a scan waiting for its sidecar is catalogued by the clock's heal once its wait ends,
with its proposal from the folder path and what is missing named; junk is moved and kept, never a dataset."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splash_flows.beamlines.bl733.metadata import proposal_from_folder
from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import Config, DatasetConfig
from splash_flows.context import Context, build_context
from splash_flows.ledger.catalogue import file_states
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from splash_flows.services.reconcile import heal


@pytest.fixture
def make_ctx(sqlite_config: Config) -> Iterator[Callable[..., Context]]:
    opened: list[Context] = []

    def make(**dataset: float) -> Context:
        ctx = build_context(sqlite_config.model_copy(update={"dataset": DatasetConfig(**dataset)}))
        opened.append(ctx)
        return ctx

    yield make
    for ctx in opened:
        ctx.close()


def _write(root: Path, proposal_folder: str, n: int) -> list[str]:
    written = simulate_acquisitions(root, n, small=True, hi_lo_every=0, autoexpose_every=0,
                                    proposal=proposal_folder, seed=5)
    return [p.relative_to(root).as_posix() for p in written]


def test_a_scan_without_its_sidecar_is_catalogued_on_the_clock_with_the_folder_proposal(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(settle_seconds=1.5)
    root = Path(ctx.config.tiers["data733"].root)
    paths = [p for p in _write(root, "ALS-11111_Smith", 1) if p.endswith(".edf")]
    (root / paths[0].replace(".edf", ".txt")).unlink()  # the sidecar never comes
    move_files(ctx, paths).raise_for_failures()
    [(key, reason)] = catalogue_batch(ctx, paths).pending.items()
    assert "waiting up to 2 s" in reason
    assert heal(ctx).catalogue is not None and ctx.catalogue().find(key) is None  # still within its wait
    time.sleep(1.6)
    report = heal(ctx)  # what catalogue_retry_733 runs every minute: no other run needed
    assert report.catalogue is not None and list(report.catalogue.catalogued) == [key]
    entry = ctx.catalogue().find(key)
    assert entry is not None
    assert entry.doc.proposal_id == "ALS-11111" and entry.doc.owner_group == "ALS-11111"  # not bl733 alone
    assert any(paths[0].replace(".edf", ".txt") in e and "sidecar missing" in e for e in entry.doc.errors)


@pytest.mark.parametrize(("folder", "expected"), [
    ("ALS-11111_Smith/20260101", "ALS-11111"), ("00622/20240325", "00622"), ("als-00622", "als-00622"),
    ("users/ALS-12345_Lee_Kim/run2", "ALS-12345"), ("20260101/scans", None), ("calibration", None)])
def test_proposal_from_the_folder_path(folder: str, expected: str | None) -> None:
    assert proposal_from_folder(folder) == expected
    assert proposal_from_folder("site/P42-x/a", r"P(?P<proposal>\d+)-x") == "42"


def test_junk_is_moved_and_kept_but_never_becomes_a_dataset(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(settle_seconds=0)
    root = Path(ctx.config.tiers["data733"].root)
    good = _write(root, "ALS-00622", 2)
    folder = good[0].rsplit("/", 1)[0]
    junk = {f"{folder}/scan_done.edf": b"", f"{folder}/READY": b"", f"{folder}/notes.csv": b"a,b\n1,2\n",
            f"{folder}/camera.png": os.urandom(64), f"{folder}/cal.poni": b"Distance: 1.2\n"}
    for rel, data in junk.items():
        (root / rel).write_bytes(data)
    paths = good + list(junk)
    move_files(ctx, paths).raise_for_failures()
    report = catalogue_batch(ctx, paths)
    report.raise_for_failures()
    assert len(report.catalogued) == 2 and sorted(report.excluded) == sorted(
        [f"{folder}/scan_done", f"{folder}/READY", f"{folder}/notes.csv", f"{folder}/camera.png",
         f"{folder}/cal.poni"])
    assert len(ctx.catalogue().search()) == 2
    states = file_states(ctx.ledger)
    assert {states[("data733", rel)].state for rel in junk} == {"excluded"}
    for tier in ("lamarr", "cfs"):  # moved and kept all the same
        assert all((Path(ctx.config.tiers[tier].root) / rel).read_bytes() == data for rel, data in junk.items())
