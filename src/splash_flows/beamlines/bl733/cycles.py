"""Beam cycles and proposals as the 7.3.3 archive counts them (one rule, one place).

- A beam cycle is a half year as the beamline counts it: cycle 1 from January 1 to July 15, cycle 2 from
  July 16 to December 31, in the beamline's local time (``config.timezone``). A file belongs to the cycle of its
  acquisition time (the source file's mtime, which every verified copy keeps).
- The proposal of a file for archiving is the first folder of its path that looks like an ALS proposal
  (``00622``, ``ALS-00622``), normalised as the catalogue normalises it (``ALS-00622``); a file outside any
  proposal folder is archived under ``UNASSIGNED`` (staff-only data, kept together, never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

from splash_flows.beamlines.bl733.dataset import normalise_proposal
from splash_flows.beamlines.bl733.metadata import proposal_from_folder

UNASSIGNED = "UNASSIGNED"


@dataclass(frozen=True, order=True)
class BeamCycle:
    """A beam cycle: ``year`` and ``half`` (1: Jan 1 - Jul 15, 2: Jul 16 - Dec 31). Prints as ``2026-2``."""

    year: int
    half: int

    def __str__(self) -> str:
        return f"{self.year}-{self.half}"


def beam_cycle(when: datetime, zone: str = "America/Los_Angeles") -> BeamCycle:
    """The beam cycle of an aware ``when``, read in the beamline's time zone."""
    local = when.astimezone(ZoneInfo(zone))
    return BeamCycle(local.year, 1 if (local.month, local.day) <= (7, 15) else 2)


def proposal_of_path(path: str) -> str:
    """The proposal a tier-relative path belongs to (module doc), e.g. ``ALS-00622``."""
    found = proposal_from_folder(str(PurePosixPath(path).parent))
    return normalise_proposal(found) if found is not None else UNASSIGNED
