"""Read everything the catalogue needs about one 7.3.3 scan from its raw files.

:func:`read_scan` never fails on bad content: a missing sidecar, a truncated sidecar or EDF, an unparseable
date all become messages in ``ScanMetadata.errors`` and the scan is still described with what could be read
(the files exist and must be findable). It raises ``MetadataError`` only when none of the scan's files can be
found at all.

Where each field comes from:

- proposal / PI / ESAF: the primary sidecar (``<stem>.txt``, or the ``hi`` one of a hi/lo set). A missing
  proposal falls back to the first folder of the path matching ``proposal_folder`` (default
  ``PROPOSAL_FOLDER``: ``00622``, ``ALS-00622``, ``ALS-11111_Smith`` as 7.3.3 names its user folders), with
  an error saying so.
- creation time: the primary EDF ``Date`` (beamline local time, ``zone``). Otherwise the earliest file mtime,
  with an error (for ``other`` scans mtime is the only source and is not an error).
- scientific metadata: ``{name: {"value": v, "unit": u}}`` from the sidecar (duplicate keys kept as
  ``"Izero (AIs)"``, see :func:`sidecar.unique_keys`), EDF header values as ``"EDF <key>"``, and for hi/lo
  sets the ``lo`` values that differ from ``hi`` as ``"<name> [lo]"``. ``NaN`` (channel not measured) becomes
  ``None``: JSON has no NaN and SciCat/MongoDB would reject or mangle it. Units: see :func:`unit_for`.
- keywords: the technique of the detector (``2m`` -> SAXS, ``300kw`` -> WAXS) or ``saxs``/``waxs`` in the file
  name; plus ``GISAXS`` (``GIWAXS`` for a WAXS detector) when :func:`is_grazing_incidence` holds for the
  ``Sample Alpha Stage`` angle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from splash_flows.beamlines.bl733.edf import (
    DEFAULT_ZONE,
    EdfHeader,
    beamline_zone,
    parse_ctime,
    read_edf_header,
)
from splash_flows.beamlines.bl733.scans import DETECTOR_TECHNIQUES, Role, Scan, ScanFile, ScanKind
from splash_flows.beamlines.bl733.sidecar import Sidecar, SidecarEntry, read_sidecar, unique_keys
from splash_flows.errors import MetadataError

#: Grazing incidence: the sample is tilted by a small nonzero angle. Below GI_MIN_DEG the reading is treated
#: as zero (encoder noise on a transmission setup); at or above GI_MAX_DEG it is no longer grazing (GI
#: angles at 7.3.3 are ~0.05-0.5 deg, near the critical angle of the film).
GI_MIN_DEG = 0.01
GI_MAX_DEG = 5.0

#: Units by exact key, whatever the section.
EXACT_UNITS: Mapping[str, str] = {
    "Exposure time s": "s",
    "EDF count_time": "s",
    "Beam Current": "mA",
}
#: Units of motor positions (section ``Motors`` only: the DIOs/AIs of the same names are flags and voltages).
#: First matching rule wins; a motor matching none is unitless (we do not guess).
MOTOR_UNIT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(alpha|phi|pitch|rotation|angle)\b", re.IGNORECASE), "deg"),
    (re.compile(r"\b[XY]\b|\bBS\b|slit|beamstop|\b(horizontal|vertical)\b", re.IGNORECASE), "mm"),
)

#: EDF header keys that describe the encoding, not the measurement; left out of scientific metadata.
EDF_STRUCTURAL_KEYS: frozenset[str] = frozenset(
    {"HeaderID", "Image", "VersionNumber", "ByteOrder", "DataType", "Size", "EDF_DataBlockID",
     "EDF_BinarySize", "EDF_HeaderSize"}
)

#: A folder named for a proposal: ``00622``, ``ALS-00622``, ``ALS-11111_<PI>`` (the group ``proposal`` is the id).
PROPOSAL_FOLDER = r"(?P<proposal>(?:ALS[-_ ]?)?\d{5})(?:_.*)?"


def proposal_from_folder(folder: str, pattern: str | re.Pattern[str] = PROPOSAL_FOLDER) -> str | None:
    """The proposal id named by the first component of ``folder`` that ``pattern`` matches in full (its group
    ``proposal`` if it has one, else the whole name), or None."""
    rx = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.IGNORECASE)
    for part in folder.split("/"):
        m = rx.fullmatch(part)
        if m is not None:
            return m.group("proposal") if "proposal" in rx.groupindex else m.group(0)
    return None

CreationSource = Literal["edf", "mtime"]


@dataclass
class ScanMetadata:
    """What was read about one scan. ``edf_headers`` maps tier-relative EDF path -> raw header values.
    ``thumbnail_source`` is the file that best previews the scan (the ``.gb`` merge of a hi/lo set, else the
    primary EDF), or None."""

    scan_key: str
    name: str
    kind: ScanKind
    catalogue: bool
    creation_time: datetime
    creation_time_source: CreationSource
    proposal: str | None = None
    pi: str | None = None
    esaf: str | None = None
    keywords: list[str] = field(default_factory=list)
    scientific_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    edf_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    thumbnail_source: str | None = None
    errors: list[str] = field(default_factory=list)


def unit_for(section: str, key: str) -> str:
    """Unit of a sidecar/EDF value: ``EXACT_UNITS`` first, then ``MOTOR_UNIT_RULES`` for motors, else ``""``
    (unitless or unknown)."""
    if key in EXACT_UNITS:
        return EXACT_UNITS[key]
    if section == "Motors":
        for pattern, unit in MOTOR_UNIT_RULES:
            if pattern.search(key):
                return unit
    return ""


def is_grazing_incidence(alpha_deg: float | None) -> bool:
    """True when the sample alpha angle is a grazing-incidence angle:
    ``GI_MIN_DEG <= |alpha| < GI_MAX_DEG`` (0.01 <= |alpha| < 5 degrees)."""
    return alpha_deg is not None and math.isfinite(alpha_deg) and GI_MIN_DEG <= abs(alpha_deg) < GI_MAX_DEG


def techniques(scan: Scan, alpha_deg: float | None,
               detectors: Mapping[str, str] = DETECTOR_TECHNIQUES) -> list[str]:
    """Keywords for the scan's technique(s): SAXS/WAXS from the detector token or the file name, and
    GISAXS/GIWAXS when the alpha angle is grazing. Sorted, no duplicates."""
    found: set[str] = set()
    det = scan.detector
    if det is not None and det in detectors:
        found.add(detectors[det])
    lowered = scan.stem.lower()
    for technique in ("SAXS", "WAXS"):
        if technique.lower() in lowered:
            found.add(technique)
    if is_grazing_incidence(alpha_deg):
        if "WAXS" in found:
            found.add("GIWAXS")
        if "SAXS" in found or "WAXS" not in found:
            found.add("GISAXS")
    return sorted(found)


def _json_value(value: float | str | int) -> float | str | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sidecar_metadata(entries: list[SidecarEntry]) -> dict[str, dict[str, Any]]:
    return {
        name: {"value": _json_value(entry.value), "unit": unit_for(entry.section, entry.key)}
        for name, entry in unique_keys(entries)
    }


def _edf_metadata(values: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, text in values.items():
        if key in EDF_STRUCTURAL_KEYS:
            continue
        name = f"EDF {key}"
        value: float | str | int
        try:
            value = int(text) if key in ("Dim_1", "Dim_2", "run") else float(text)
        except ValueError:
            value = text
        if key == "Date":
            value = text
        out[name] = {"value": _json_value(value), "unit": unit_for("EDF", name)}
    return out


def _expected(scan: Scan) -> list[ScanFile]:
    """The files a complete scan of this kind has, whether or not they are in this batch."""
    if scan.kind == "other":
        return list(scan.files)
    det = scan.detector
    base = f"{scan.folder}/" if scan.folder else ""
    if scan.kind == "exposure":
        return [ScanFile(f"{base}{scan.stem}.{ext}", "single", ext, det) for ext in ("edf", "txt")]
    det = det or "2m"
    parts: tuple[Role, ...] = ("hi", "lo")
    files = [
        ScanFile(f"{base}{scan.stem}_{part}_{det}.{ext}", part, ext, det)
        for part in parts for ext in ("edf", "txt")
    ]
    files.append(ScanFile(f"{base}{scan.stem}_sfloat_{det}.gb", "merged", "gb", det))
    # a plain exposure sharing the key (see scans.py) is kept too
    files += [f for f in scan.files if f.role == "single"]
    return files


def read_scan(
    root: Path, scan: Scan, *, zone: str = DEFAULT_ZONE,
    detectors: Mapping[str, str] = DETECTOR_TECHNIQUES,
    proposal_folder: str | re.Pattern[str] = PROPOSAL_FOLDER,
) -> ScanMetadata:
    """Describe ``scan`` (tier-relative paths under ``root``) from its files on disk.

    Files of the scan that are on disk but not in ``scan.files`` (another batch) are read too, so the
    description does not depend on how the watcher batched the files. Raises ``MetadataError`` if none of
    the scan's files exist under ``root``, ``ConfigError`` if ``zone`` is not a known time zone.
    """
    errors: list[str] = []
    tz = beamline_zone(zone)
    present: list[ScanFile] = []
    for f in _dedupe(_expected(scan) + list(scan.files)):
        if (root / f.path).is_file():
            present.append(f)
        elif scan.kind != "other":
            what = "sidecar" if f.is_sidecar else "image" if f.is_image else "merged .gb frame"
            errors.append(f"{f.path}: {what} missing")
    if not present:
        raise MetadataError("none of the scan's files exist", path=f"{root}/{scan.key}")

    sidecars: dict[str, Sidecar] = {}
    headers: dict[str, EdfHeader] = {}
    for f in present:
        try:
            if f.is_sidecar:
                sidecars[f.role] = sc = read_sidecar(root / f.path, label=f.path)
                errors += sc.errors
            elif f.is_image and f.role in ("single", "hi", "lo"):
                headers[f.role] = h = read_edf_header(root / f.path, label=f.path)
                errors += h.errors
        except MetadataError as exc:  # vanished or unreadable between listing and reading
            errors.append(str(exc))

    primary_role = next((r for r in ("single", "hi", "lo") if r in sidecars or r in headers), None)
    primary = sidecars.get(primary_role) if primary_role else None
    if primary is None and sidecars:
        primary = next(iter(sidecars.values()))

    meta = ScanMetadata(
        scan_key=scan.key, name=scan.stem, kind=scan.kind, catalogue=scan.catalogue,
        creation_time=datetime.now(tz), creation_time_source="mtime",
    )
    if primary is not None:
        meta.proposal, meta.pi, meta.esaf = primary.proposal, primary.pi, primary.esaf
        meta.scientific_metadata.update(_sidecar_metadata(primary.entries))
        other = sidecars.get("lo") if primary is sidecars.get("hi") else None
        if other is not None:
            if (other.proposal, other.pi, other.esaf) != (primary.proposal, primary.pi, primary.esaf):
                errors.append(
                    f"{other.source}: proposal/PI/ESAF differ from {primary.source}; using the latter"
                )
            hi_values = primary.as_dict()
            for name, item in _sidecar_metadata(other.entries).items():
                if name not in hi_values or not _same(hi_values[name], item["value"]):
                    meta.scientific_metadata[f"{name} [lo]"] = item
    if meta.proposal is None:
        folder = proposal_from_folder(scan.folder, proposal_folder)
        if folder is not None:
            meta.proposal = folder
            errors.append(f"{scan.key}: proposal {folder!r} taken from the folder name (not in a sidecar)")
        elif scan.kind != "other" or primary is not None:
            errors.append(f"{scan.key}: no proposal found")

    for role, h in headers.items():
        meta.edf_headers[_path_of(present, role, "edf")] = dict(h.values)
        suffix = " [lo]" if role == "lo" and "hi" in headers else ""
        for name, item in _edf_metadata(h.values).items():
            meta.scientific_metadata[name + suffix] = item

    header = headers.get(primary_role) if primary_role else None
    if header is None and headers:
        header = next(iter(headers.values()))
    if header is not None and header.date is not None:
        try:
            meta.creation_time = parse_ctime(header.date, zone)
            meta.creation_time_source = "edf"
        except ValueError as exc:
            errors.append(f"{header.source}: EDF Date unreadable ({exc}); using file mtime")
    elif scan.kind != "other":
        errors.append(f"{scan.key}: no EDF Date; creation time is the file mtime")
    if meta.creation_time_source == "mtime":
        meta.creation_time = _earliest_mtime(root, present, tz, scan.key)

    alpha = primary.alpha_deg if primary is not None else None
    meta.keywords = techniques(scan, alpha, detectors)
    meta.thumbnail_source = _thumbnail_source(present)
    meta.errors = errors
    return meta


def _earliest_mtime(root: Path, files: list[ScanFile], tz: tzinfo, key: str) -> datetime:
    """The earliest modification time of the files still on disk, in ``tz``."""
    stamps: list[float] = []
    for f in files:
        try:
            stamps.append((root / f.path).stat().st_mtime)
        except OSError:
            continue  # vanished since it was listed; another file may still tell the time
    if not stamps:
        raise MetadataError("the scan's files vanished while being read", path=f"{root}/{key}")
    return datetime.fromtimestamp(min(stamps), tz)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float | None) and math.isnan(a):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def _dedupe(files: list[ScanFile]) -> list[ScanFile]:
    seen: set[str] = set()
    out: list[ScanFile] = []
    for f in files:
        if f.path not in seen:
            seen.add(f.path)
            out.append(f)
    return out


def _path_of(files: list[ScanFile], role: str, ext: str) -> str:
    return next(f.path for f in files if f.role == role and f.ext == ext)


def _thumbnail_source(present: list[ScanFile]) -> str | None:
    for role, ext in (("merged", "gb"), ("single", "edf"), ("hi", "edf"), ("lo", "edf")):
        for f in present:
            if f.role == role and f.ext == ext:
                return f.path
    return None

