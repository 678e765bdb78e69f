"""Reading one scan: fields, units, keywords, creation time and every kind of damage recorded, not raised."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from bl733_helpers import put

from splash_flows.beamlines.bl733.edf import edf_bytes
from splash_flows.beamlines.bl733.metadata import is_grazing_incidence, read_scan, techniques, unit_for
from splash_flows.beamlines.bl733.scans import group_scans
from splash_flows.errors import ConfigError, MetadataError

DATE = "Mon Mar 25 17:06:51 2024"  # PDT (UTC-7) at the beamline
DATE_UTC = datetime(2024, 3, 26, 0, 6, 51, tzinfo=UTC)
FOLDER = "ALS-01234/20240325"


def _edf(date: str = DATE, count_time: str = "10.000000000") -> bytes:
    header = {"HeaderID": "EH:000001:000000:000000", "Image": "1", "Date": date, "count_time": count_time,
              "title": "# Pixel_size 172e-6 m x 172e-6 m", "run": "0"}
    return edf_bytes(np.ones((8, 6), np.int32), header)


def _scan(root: Path, files: dict[str, bytes | str]) -> tuple[Path, list[str]]:
    for rel, data in files.items():
        put(root, rel, data)
    return root, list(files)


def test_exposure_scan_from_the_sample_sidecar(tmp_path: Path, sample_text: str) -> None:
    root, rels = _scan(tmp_path, {f"{FOLDER}/s_2m.edf": _edf(), f"{FOLDER}/s_2m.txt": sample_text})
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert meta.errors == []
    assert (meta.proposal, meta.pi, meta.esaf) == ("00622", "PILastname", "00622-001")
    assert meta.creation_time_source == "edf"
    assert meta.creation_time == DATE_UTC and meta.creation_time.utcoffset() == timedelta(hours=-7)
    assert meta.keywords == ["GISAXS", "SAXS"]  # 2M detector, alpha 0.130909 deg
    assert meta.thumbnail_source == f"{FOLDER}/s_2m.edf"
    assert meta.edf_headers[f"{FOLDER}/s_2m.edf"]["Date"] == DATE
    sm = meta.scientific_metadata
    assert sm["Exposure time s"] == {"value": 10.0, "unit": "s"}
    assert sm["Sample Alpha Stage"] == {"value": 0.130909, "unit": "deg"}
    assert sm["Sample X Stage"]["unit"] == sm["BS Y"]["unit"] == sm["Slit1 top"]["unit"] == "mm"
    assert sm["M1 Pitch"]["unit"] == "deg" and sm["Sample Rotation Stage"]["unit"] == "deg"
    assert sm["Beam Current"] == {"value": 499.509338, "unit": "mA"}
    assert sm["Slit 1 in Position"]["unit"] == ""  # a DIO flag, not a position
    assert sm["M1 Bend"]["unit"] == ""  # unknown motor: no guessed unit
    assert sm["Pyro"] == {"value": None, "unit": ""}  # NaN -> null
    assert sm["Izero (AIs)"]["value"] == 401.0
    assert sm["ALS Proposal #"]["value"] == "00622"
    assert sm["EDF count_time"] == {"value": 10.0, "unit": "s"}
    assert "EDF HeaderID" not in sm
    assert all(v is None or not (isinstance(v, float) and math.isnan(v))
               for v in (item["value"] for item in sm.values()))


def test_creation_time_follows_the_configured_zone(tmp_path: Path, sample_text: str) -> None:
    root, rels = _scan(tmp_path, {"p/s_2m.edf": _edf(), "p/s_2m.txt": sample_text})
    [scan] = group_scans(rels)
    assert read_scan(root, scan, zone="UTC").creation_time == datetime(2024, 3, 25, 17, 6, 51, tzinfo=UTC)
    assert read_scan(root, scan, zone="Europe/Berlin").creation_time == DATE_UTC - timedelta(hours=8)


def test_missing_sidecar_still_gives_metadata(tmp_path: Path) -> None:
    root, rels = _scan(tmp_path, {f"{FOLDER}/s_2m.edf": _edf()})
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert any(f"{FOLDER}/s_2m.txt: sidecar missing" in e for e in meta.errors)
    assert meta.proposal == "ALS-01234"  # from the folder, and said so
    assert any("from the folder name" in e for e in meta.errors)
    assert meta.pi is None
    assert meta.creation_time == DATE_UTC
    assert meta.keywords == ["SAXS"]


def test_missing_image_falls_back_to_mtime(tmp_path: Path, sample_text: str) -> None:
    root, rels = _scan(tmp_path, {"p/s_2m.txt": sample_text})
    stamp = DATE_UTC.timestamp() + 3600
    os.utime(root / "p/s_2m.txt", (stamp, stamp))
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert meta.creation_time_source == "mtime"
    assert meta.creation_time == DATE_UTC + timedelta(hours=1)
    assert str(meta.creation_time.tzinfo) == "America/Los_Angeles"
    assert any("image missing" in e for e in meta.errors)
    assert any("no EDF Date" in e for e in meta.errors)
    assert meta.proposal == "00622"


def test_truncated_sidecar_and_truncated_edf_are_recorded(tmp_path: Path, sample_text: str) -> None:
    edf = _edf()
    short = "\n".join(sample_text.splitlines()[:30])
    root, rels = _scan(tmp_path, {"p/s_2m.edf": edf[:-10], "p/s_2m.txt": short})
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert any("p/s_2m.txt: truncated" in e for e in meta.errors)
    assert any("p/s_2m.edf: truncated EDF" in e for e in meta.errors)
    assert meta.proposal == "00622" and meta.creation_time == DATE_UTC  # header and sidecar start still used


@pytest.mark.parametrize("content", [b"\x89PNG not an edf", _edf(date="sometime last week")])
def test_corrupt_edf_or_bad_date_falls_back_to_mtime(
    tmp_path: Path, sample_text: str, content: bytes
) -> None:
    root, rels = _scan(tmp_path, {"p/s_2m.edf": content, "p/s_2m.txt": sample_text})
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert meta.creation_time_source == "mtime"
    assert any("p/s_2m.edf" in e for e in meta.errors)


def test_hilo_scan_reads_both_halves_and_previews_the_gb(tmp_path: Path, sample_text: str) -> None:
    lo_text = sample_text.replace("Exposure time s: 10.000", "Exposure time s: 1.000")
    root, _ = _scan(tmp_path, {
        "p/s1_hi_2m.edf": _edf(), "p/s1_hi_2m.txt": sample_text,
        "p/s1_lo_2m.edf": _edf(date="Mon Mar 25 17:07:05 2024", count_time="1.0"), "p/s1_lo_2m.txt": lo_text,
        "p/s1_sfloat_2m.gb": np.zeros((8, 6), "<f4").tobytes(),
    })
    [scan] = group_scans(["p/s1_hi_2m.edf"])  # this batch saw one file; the others are read from disk
    meta = read_scan(root, scan)
    assert meta.errors == []
    assert meta.creation_time == DATE_UTC  # the hi exposure's date
    assert meta.scientific_metadata["Exposure time s"]["value"] == 10.0
    assert meta.scientific_metadata["Exposure time s [lo]"]["value"] == 1.0
    assert meta.scientific_metadata["EDF count_time [lo]"]["value"] == 1.0
    assert "Sample X Stage [lo]" not in meta.scientific_metadata  # equal values are not repeated
    assert meta.thumbnail_source == "p/s1_sfloat_2m.gb"
    assert set(meta.edf_headers) == {"p/s1_hi_2m.edf", "p/s1_lo_2m.edf"}


def test_incomplete_hilo_scan_names_what_is_missing(tmp_path: Path, sample_text: str) -> None:
    root, rels = _scan(tmp_path, {"p/s1_hi_2m.edf": _edf(), "p/s1_hi_2m.txt": sample_text})
    [scan] = group_scans(rels)
    errors = read_scan(root, scan).errors
    assert sorted(e.split(":")[0] for e in errors) == [
        "p/s1_lo_2m.edf", "p/s1_lo_2m.txt", "p/s1_sfloat_2m.gb",
    ]


def test_other_file_uses_mtime_and_folder_proposal(tmp_path: Path) -> None:
    root, rels = _scan(tmp_path, {f"{FOLDER}/cal.poni": "poni"})
    [scan] = group_scans(rels)
    meta = read_scan(root, scan)
    assert meta.kind == "other" and meta.creation_time_source == "mtime"
    assert meta.proposal == "ALS-01234" and meta.thumbnail_source is None


def test_scan_with_no_file_on_disk_raises(tmp_path: Path) -> None:
    [scan] = group_scans(["p/gone_2m.edf"])
    with pytest.raises(MetadataError, match="gone_2m"):
        read_scan(tmp_path, scan)


@pytest.mark.parametrize(
    ("alpha", "grazing"),
    [(None, False), (0.0, False), (0.005, False), (0.01, True), (0.13, True), (-0.2, True), (4.99, True),
     (5.0, False), (90.0, False), (math.nan, False), (math.inf, False)],
)
def test_grazing_incidence_rule(alpha: float | None, grazing: bool) -> None:
    assert is_grazing_incidence(alpha) is grazing


def test_technique_keywords() -> None:
    [saxs] = group_scans(["p/x_2m.edf"])
    [waxs] = group_scans(["p/x_300kw.edf"])
    [named] = group_scans(["p/film_waxs.edf"])
    [unknown] = group_scans(["p/x.edf"])
    assert techniques(saxs, 0.0) == ["SAXS"] and techniques(saxs, 0.2) == ["GISAXS", "SAXS"]
    assert techniques(waxs, 0.2) == ["GIWAXS", "WAXS"]
    assert techniques(named, None) == ["WAXS"]
    assert techniques(unknown, 0.2) == ["GISAXS"] and techniques(unknown, 0.0) == []


def test_unit_table() -> None:
    assert unit_for("header", "Exposure time s") == "s"
    assert unit_for("Motors", "Sample Phi Stage") == "deg"
    assert unit_for("Motors", "GIWAXS beamstop Y") == "mm"
    assert unit_for("Motors", "Detector Vertical") == "mm"
    assert unit_for("AIs", "PHI Alignment Beamstop") == ""  # a voltage, despite the words
    assert unit_for("AIs", "Beam Current") == "mA"


def test_unknown_zone_is_a_config_error(tmp_path: Path, sample_text: str) -> None:
    root, rels = _scan(tmp_path, {"p/s_2m.edf": _edf(), "p/s_2m.txt": sample_text})
    [scan] = group_scans(rels)
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        read_scan(root, scan, zone="Mars/Olympus")
