"""Turn a scan's metadata and its files' ledger facts into the catalogue's ``DatasetDoc``.

Ownership rules (who may see the dataset), and why:

- ``owner_group`` is the proposal id normalised by :func:`normalise_proposal` (``00622``, ``als-622`` and
  ``ALS-00622`` are one proposal typed three ways, so they must give one group: ``ALS-00622``). The proposal's
  members are the people entitled to the data.
- ``access_groups`` = ``[owner_group, beamline_group]`` (default ``bl733``): beamline staff support every
  user.
- No proposal readable -> ``default_owner_group`` (configured; staff-only), ``proposal_id`` None, and an error
  on the dataset so someone fixes it rather than the data silently becoming public or lost.
- ``owner`` is the PI when known (a person accountable for the data), else the owner group.
- ``contact_email`` is the configured beamline contact address: sidecars carry a PI surname only, and an
  address invented from it would send mail to a stranger.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from splash_flows.beamlines.bl733.metadata import ScanMetadata
from splash_flows.catalogue.base import DataFileDoc, DatasetDoc

DEFAULT_CREATION_LOCATION = "/ALS/7.3.3"
DEFAULT_BEAMLINE_GROUP = "bl733"
UNKNOWN_PI = "unknown"

_ALS_PROPOSAL = re.compile(r"(?:ALS[-_ ]?)?0*(\d{1,9})", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def normalise_proposal(proposal: str) -> str:
    """Canonical ALS proposal id: ``ALS-`` + the number zero-padded to 5 digits (``00622`` -> ``ALS-00622``).

    Something that is not an ALS proposal number is kept, upper-cased, with runs of characters other than
    letters, digits, ``.``, ``_``, ``-`` replaced by ``-`` (group names end up in URLs and queries).
    """
    text = proposal.strip()
    m = _ALS_PROPOSAL.fullmatch(text)
    if m:
        return f"ALS-{int(m.group(1)):05d}"
    return _UNSAFE.sub("-", text).strip("-").upper()


def dataset_for_scan(
    meta: ScanMetadata,
    files: Sequence[tuple[str, int, datetime, str]],
    *,
    checksum_algorithm: str,
    source_folder: str,
    source_folder_host: str | None = None,
    creation_location: str = DEFAULT_CREATION_LOCATION,
    default_owner_group: str,
    contact_email: str,
    beamline_group: str = DEFAULT_BEAMLINE_GROUP,
) -> DatasetDoc:
    """Build the dataset document of one scan.

    ``files`` are ``(tier-relative path, size, mtime, checksum)`` from the ledger; a naive mtime is taken as
    UTC, an aware one is converted to UTC. Paths are kept as given (tier-relative, as ``DataFileDoc``
    expects). ``meta.errors`` are carried over, plus any ownership fallback.
    """
    errors = list(meta.errors)
    proposal_id = normalise_proposal(meta.proposal) if meta.proposal else None
    if proposal_id:
        owner_group = proposal_id
    else:
        proposal_id = None
        owner_group = default_owner_group
        errors.append(f"{meta.scan_key}: no proposal; owner group defaulted to {default_owner_group!r}")
    access_groups = list(dict.fromkeys([owner_group, beamline_group]))
    pi = meta.pi.strip() if meta.pi and meta.pi.strip() else None
    if pi is None:
        errors.append(f"{meta.scan_key}: no PI in the sidecar")
    doc_files = [
        DataFileDoc(path=path, size=size, time=_utc(mtime), chk=checksum)
        for path, size, mtime, checksum in sorted(files)
    ]
    description = f"Beamline 7.3.3 {meta.kind} scan {meta.name} ({len(doc_files)} files)"
    if meta.keywords:
        description += ": " + ", ".join(meta.keywords)
    return DatasetDoc(
        scan_key=meta.scan_key,
        name=meta.name,
        owner=pi or owner_group,
        owner_group=owner_group,
        access_groups=access_groups,
        contact_email=contact_email,
        principal_investigator=pi or UNKNOWN_PI,
        proposal_id=proposal_id,
        creation_time=meta.creation_time,
        creation_location=creation_location,
        source_folder=source_folder,
        source_folder_host=source_folder_host,
        description=description,
        keywords=list(meta.keywords),
        scientific_metadata=dict(meta.scientific_metadata),
        checksum_algorithm=checksum_algorithm,
        files=doc_files,
        errors=errors,
    )


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)
