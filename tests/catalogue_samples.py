"""Sample catalogue documents shaped like Beamline 7.3.3 scans, shared by the catalogue tests.

Times are whole seconds (SciCat keeps milliseconds) so a document reads back exactly as written. The scan key
and the creation location are full of digit groups on purpose: SciCat's date-filter trap would swallow them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from splash_flows.catalogue.base import DataFileDoc, DatasetDoc, LocationDoc

# the smallest valid PNG: 1x1 pixel
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)
PNG_OTHER = PNG_1X1 + b"\x00trailing bytes make a different image"


def sample_doc(stem: str = "lab6_0001", **overrides: Any) -> DatasetDoc:
    """A hi/lo SAXS pair with its .gb, proposal ALS-11234, as the move flow would describe it."""
    when = datetime(2024, 5, 1, 13, 45, 10, tzinfo=UTC)
    folder = "2024/05/01"
    fields: dict[str, Any] = {
        "scan_key": f"{folder}/{stem}",
        "name": f"LaB6 calibration {stem}",
        "owner": "Beamline 7.3.3",
        "owner_group": "als-11234",
        "access_groups": ["als-11234", "bl733-staff"],
        "contact_email": "bl733@example.org",
        "principal_investigator": "Ada Lovelace",
        "proposal_id": "ALS-11234",
        "creation_time": when,
        "creation_location": "/ALS/7.3.3",
        "source_folder": f"/data/raw/{folder}",
        "source_folder_host": "bl733-data.als.example.org",
        "description": "LaB6 calibration series",
        "keywords": ["SAXS", "calibration"],
        "scientific_metadata": {
            "energy": {"value": 10.0, "unit": "keV"},
            "exposure_time": {"value": 1.5, "unit": "s"},
            "sample_name": "LaB6 standard",
            "detector": {"name": "Pilatus 2M", "distance_mm": 3500},
        },
        "checksum_algorithm": "xxh3-128",
        "files": [
            DataFileDoc(path=f"{stem}_hi_2m.edf", size=8_388_608, time=when, chk="a1" * 16),
            DataFileDoc(path=f"{stem}_lo_2m.edf", size=8_388_608, time=when, chk="b2" * 16),
            DataFileDoc(path=f"{stem}.gb", size=2_048, time=when, chk="c3" * 16),
        ],
        "locations": [],
        "errors": [],
    }
    fields.update(overrides)
    return DatasetDoc(**fields)


def location(tier: str, state: str = "verified", minute: int = 0) -> LocationDoc:
    return LocationDoc(
        tier=tier,
        url=f"{tier}://bl733/2024/05/01",
        state=state,
        since=datetime(2024, 5, 1, 14, minute, 0, tzinfo=UTC),
    )
