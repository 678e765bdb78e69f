"""The acquisition simulator: layout, determinism, atomic appearance, and a round trip through the reader."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import fabio
import numpy as np
import pytest
from bl733_helpers import SAMPLE_SIDECAR

from splash_flows.beamlines.bl733.edf import parse_ctime, read_edf_header, read_edf_image
from splash_flows.beamlines.bl733.metadata import is_grazing_incidence, read_scan
from splash_flows.beamlines.bl733.scans import group_scans
from splash_flows.beamlines.bl733.sidecar import read_sidecar
from splash_flows.beamlines.bl733.simulator import SMALL_SHAPE, simulate_acquisitions
from splash_flows.beamlines.bl733.thumbnail import thumbnail_png

WHEN = datetime(2024, 3, 25, 17, 6, 51)  # naive: beamline local time (PDT)
WHEN_UTC = datetime(2024, 3, 26, 0, 6, 51, tzinfo=UTC)


def _rel(root: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        root = tmp_path / name
        paths = simulate_acquisitions(root, 3, when=WHEN, seed=seed, hi_lo_every=2, small=True)
        runs.append((root, paths))
    (ra, pa), (rb, pb), (_, pc) = runs
    assert _rel(ra, pa) == _rel(rb, pb)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(pa, pb, strict=True))
    edf_a = next(p for p in pa if p.suffix == ".edf")
    edf_c = next(p for p in pc if p.suffix == ".edf")
    assert not np.array_equal(read_edf_image(edf_a), read_edf_image(edf_c))


def test_round_trip_simulate_group_read(tmp_path: Path) -> None:
    paths = simulate_acquisitions(
        tmp_path, 4, proposal="ALS-04242", pi="Curie", when=WHEN, seed=3, hi_lo_every=2,
        autoexpose_every=3, small=True,
    )
    rels = _rel(tmp_path, paths)
    assert all(r.startswith("ALS-04242/20240325/") for r in rels)
    assert len(rels) == 2 + 5 + 2 + 5  # exposure, hi/lo set, autoexpose exposure, hi/lo set
    scans = group_scans(rels)
    assert [s.kind for s in scans].count("hilo") == 2
    assert [s.catalogue for s in scans].count(False) == 1
    times = []
    for scan in scans:
        meta = read_scan(tmp_path, scan)
        assert meta.errors == [], meta.errors
        assert (meta.proposal, meta.pi, meta.esaf) == ("ALS-04242", "Curie", "ALS-04242-001")
        assert meta.creation_time_source == "edf"
        sm = meta.scientific_metadata
        assert sm["Exposure time s"]["value"] == pytest.approx(sm["EDF count_time"]["value"])
        assert ("GISAXS" in meta.keywords) == is_grazing_incidence(sm["Sample Alpha Stage"]["value"])
        assert "SAXS" in meta.keywords
        times.append(meta.creation_time)
    assert min(times) == WHEN_UTC
    assert len(set(times)) == len(times)


def test_sidecar_has_the_exact_layout_of_the_real_sample(tmp_path: Path) -> None:
    paths = simulate_acquisitions(tmp_path, 1, when=WHEN, small=True, pi="Franklin", proposal="00999")
    simulated = read_sidecar(next(p for p in paths if p.suffix == ".txt"))
    real = read_sidecar(SAMPLE_SIDECAR)
    assert simulated.errors == [] and simulated.complete
    assert simulated.sections == real.sections
    assert [(e.section, e.key) for e in simulated.entries] == [(e.section, e.key) for e in real.entries]
    assert (simulated.proposal, simulated.pi, simulated.esaf) == ("00999", "Franklin", "00999-001")
    header_izero, ais_izero = simulated.all("Izero")
    assert simulated.leading[0] == header_izero.value == ais_izero.value


def test_full_size_frame_is_a_real_pilatus_2m_edf(tmp_path: Path) -> None:
    [edf, txt] = simulate_acquisitions(tmp_path, 1, when=WHEN, seed=1)
    header = read_edf_header(edf)
    assert header.errors == [] and header.shape == (1679, 1475)
    assert header.values["DataType"] == "SignedInteger" and header.values["ByteOrder"] == "LowByteFirst"
    assert header.values["Date"] == "Mon Mar 25 17:06:51 2024"
    for key in ("HeaderID", "Image", "VersionNumber", "count_time", "title", "run"):
        assert key in header.values
    data = fabio.open(str(edf)).data
    assert data.dtype == np.int32 and data.shape == (1679, 1475)
    assert (data == -1).sum() > 100_000  # module gaps
    assert data.max() > 20 * np.median(data[data >= 0])  # rings and centre stand out
    assert len(thumbnail_png(edf)) > 1000
    assert txt.read_text().rstrip().endswith("!0")


def test_small_gb_merge_previews(tmp_path: Path) -> None:
    paths = simulate_acquisitions(tmp_path, 1, when=WHEN, hi_lo_every=1, small=True)
    gb = next(p for p in paths if p.suffix == ".gb")
    assert gb.stat().st_size == SMALL_SHAPE[0] * SMALL_SHAPE[1] * 4
    assert thumbnail_png(gb, gb_shape=SMALL_SHAPE).startswith(b"\x89PNG")


def test_files_appear_by_rename_from_a_hidden_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src: Path, dst: Path) -> None:
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    paths = simulate_acquisitions(tmp_path, 2, when=WHEN, small=True)
    assert [dst for _, dst in renames] == [p.name for p in paths]
    assert all(src == f".{dst}.part" for src, dst in renames)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_folder_date_is_the_beamline_local_date(tmp_path: Path) -> None:
    # 02:00 UTC on the 26th is still the 25th in California
    [edf, _] = simulate_acquisitions(tmp_path, 1, when=datetime(2024, 3, 26, 2, 0, tzinfo=UTC), small=True)
    assert edf.parent.name == "20240325"
    assert read_edf_header(edf).date == "Mon Mar 25 19:00:00 2024"


def test_later_scans_start_after_earlier_exposures(tmp_path: Path) -> None:
    paths = simulate_acquisitions(tmp_path, 3, when=WHEN, small=True, seed=5)
    dates = [read_edf_header(p).date for p in paths if p.suffix == ".edf"]
    parsed = [parse_ctime(d or "") for d in dates]
    assert all(b - a >= timedelta(seconds=4) for a, b in pairwise(parsed))


def test_zero_scans_and_negative_count(tmp_path: Path) -> None:
    assert simulate_acquisitions(tmp_path, 0, when=WHEN, small=True) == []
    with pytest.raises(ValueError):
        simulate_acquisitions(tmp_path, -1)
