"""From scan metadata to the catalogue's DatasetDoc: ownership from the proposal, contact, files, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from bl733_helpers import SAMPLE_SIDECAR, put

from splash_flows.beamlines.bl733.dataset import dataset_for_scan, normalise_proposal
from splash_flows.beamlines.bl733.edf import edf_bytes
from splash_flows.beamlines.bl733.metadata import ScanMetadata, read_scan
from splash_flows.beamlines.bl733.scans import group_scans
from splash_flows.catalogue.base import DatasetDoc

WHEN = datetime(2024, 3, 26, 0, 6, 51, tzinfo=UTC)
FILES = [
    ("p/s_2m.txt", 3300, datetime(2024, 3, 25, 17, 7, tzinfo=timezone(timedelta(hours=-7))), "aa"),
    ("p/s_2m.edf", 9906612, datetime(2024, 3, 26, 0, 7), "bb"),  # naive = UTC
]


def _meta(**changes: object) -> ScanMetadata:
    meta = ScanMetadata(
        scan_key="p/s_2m", name="s_2m", kind="exposure", catalogue=True, creation_time=WHEN,
        creation_time_source="edf", proposal="00622", pi="PILastname", esaf="00622-001",
        keywords=["GISAXS", "SAXS"], scientific_metadata={"Exposure time s": {"value": 10.0, "unit": "s"}},
        errors=["p/s_2m.txt: something odd"],
    )
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def _doc(meta: ScanMetadata) -> DatasetDoc:
    return dataset_for_scan(
        meta, FILES, checksum_algorithm="xxh3_128", source_folder="/data733/raw",
        source_folder_host="data733.als.lbl.gov", default_owner_group="bl733-staff",
        contact_email="beamline733@lbl.gov",
    )


def test_dataset_fields_from_metadata() -> None:
    doc = _doc(_meta())
    assert doc.scan_key == "p/s_2m" and doc.name == "s_2m"
    assert doc.owner_group == "ALS-00622" and doc.proposal_id == "ALS-00622"
    assert doc.access_groups == ["ALS-00622", "bl733"]
    assert doc.owner == "PILastname" and doc.principal_investigator == "PILastname"
    assert doc.contact_email == "beamline733@lbl.gov"
    assert doc.creation_location == "/ALS/7.3.3" and doc.creation_time == WHEN
    assert doc.keywords == ["GISAXS", "SAXS"]
    assert doc.scientific_metadata["Exposure time s"] == {"value": 10.0, "unit": "s"}
    assert doc.errors == ["p/s_2m.txt: something odd"]
    assert doc.checksum_algorithm == "xxh3_128" and doc.source_folder_host == "data733.als.lbl.gov"


def test_files_are_sorted_and_times_are_utc() -> None:
    doc = _doc(_meta())
    assert [f.path for f in doc.files] == ["p/s_2m.edf", "p/s_2m.txt"]
    assert all(f.time.utcoffset() == timedelta(0) for f in doc.files)
    assert doc.files[1].time == datetime(2024, 3, 26, 0, 7, tzinfo=UTC)
    assert doc.size == 9906612 + 3300


def test_no_proposal_defaults_the_group_and_says_so() -> None:
    doc = _doc(_meta(proposal=None, pi=None))
    assert doc.owner_group == "bl733-staff" and doc.proposal_id is None
    assert doc.access_groups == ["bl733-staff", "bl733"]
    assert doc.owner == "bl733-staff" and doc.principal_investigator == "unknown"
    assert any("no proposal" in e for e in doc.errors) and any("no PI" in e for e in doc.errors)


def test_contact_email_is_never_derived_from_the_pi() -> None:
    doc = _doc(_meta(pi="Someone"))
    assert "someone" not in doc.contact_email.lower()


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("00622", "ALS-00622"), ("ALS-00622", "ALS-00622"), ("als_622", "ALS-00622"), (" 622 ", "ALS-00622"),
     ("ALS-123456", "ALS-123456"), ("RA 12/x", "RA-12-X")],
)
def test_normalise_proposal(raw: str, normal: str) -> None:
    assert normalise_proposal(raw) == normal


def _no_nan(token: str) -> float:
    raise AssertionError(f"{token} in JSON")


def test_document_from_the_real_sample_is_strict_json(tmp_path: Path) -> None:
    """The sample sidecar has NaN channels; the document must still be valid (strict) JSON for SciCat."""
    put(tmp_path, "00622/s_2m.txt", SAMPLE_SIDECAR.read_text())
    frame = edf_bytes(np.zeros((4, 4), np.int32), {"Date": "Mon Mar 25 17:06:51 2024"})
    put(tmp_path, "00622/s_2m.edf", frame)
    [scan] = group_scans(["00622/s_2m.txt", "00622/s_2m.edf"])
    doc = _doc(read_scan(tmp_path, scan))
    data = json.loads(doc.model_dump_json(), parse_constant=_no_nan)
    assert data["scientific_metadata"]["Pyro"] == {"value": None, "unit": ""}
    assert data["owner_group"] == "ALS-00622" and data["keywords"] == ["GISAXS", "SAXS"]
