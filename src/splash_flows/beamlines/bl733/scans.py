"""Group a batch of tier-relative file paths into 7.3.3 scans (one scan = one catalogue dataset).

Naming rules (detector token ``<det>`` is one of ``DETECTOR_TECHNIQUES``, default ``2m``, ``1m``, ``300kw``):

===============================================  ==========  ==================  ===========================
file name                                         kind        scan stem           role
===============================================  ==========  ==================  ===========================
``<scan>_hi_<det>.edf`` / ``.txt``               ``hilo``    ``<scan>``          ``hi`` image / sidecar
``<scan>_lo_<det>.edf`` / ``.txt``               ``hilo``    ``<scan>``          ``lo`` image / sidecar
``<scan>_sfloat_<det>.gb``                        ``hilo``    ``<scan>``          ``merged`` float frame
``<stem>.edf`` / ``<stem>.txt``                   ``exposure``  ``<stem>``        ``single`` image / sidecar
anything else (``x.poni``, ``notes.csv``, ...)    ``other``   the full file name  ``other``
===============================================  ==========  ==================  ===========================

Decisions, and why:

- The scan key is ``<folder>/<scan stem>`` (just ``<scan stem>`` for files at the tier root). It depends only
  on the path, so files of one scan arriving in different batches map to the same key and the catalogue can
  find the existing dataset (idempotent ingest).
- Extensions are matched case-insensitively.
- A file of any other shape is its own one-file scan keyed by its *full file name* (extension included), so
  ``foo.poni`` never merges with the ``foo.edf``/``foo.txt`` exposure. It is moved and kept like every file,
  but it is not 7.3.3 data (``Scan.is_data`` is False: no image, sidecar or ``.gb`` merge), so it never becomes
  a dataset -- a dataset of a ``notes.csv`` would be nothing but errors. (Scans of only 0-byte files, i.e.
  markers, are likewise not catalogued: the catalogue step decides that from the ledger's sizes.)
- If a plain exposure and a hi/lo set share a stem in one folder (``foo.edf`` and ``foo_hi_2m.edf``), they
  share the key and become one ``hilo`` scan: the key rule above is what keeps ingest idempotent, so it wins.
- ``catalogue`` is False when the scan stem (or, for ``other``, the file name) contains any of ``exclude``
  (case-insensitive; default ``autoexpose``, ``beamstop_test``): operators do not want alignment frames as
  datasets. Such files are still moved and kept -- only cataloguing is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from splash_flows.errors import PathEscapeError

#: Default stem substrings of frames not to catalogue.
DEFAULT_EXCLUDE: tuple[str, ...] = ("autoexpose", "beamstop_test")

#: Detector tokens in 7.3.3 file names and the technique each detector measures. The 2M is the SAXS detector;
#: the sidecar's AI channels also name a Pilatus 1M (SAXS) and a 300K-W (the WAXS detector).
DETECTOR_TECHNIQUES: Mapping[str, str] = {"2m": "SAXS", "1m": "SAXS", "300kw": "WAXS"}

ScanKind = Literal["exposure", "hilo", "other"]
Role = Literal["single", "hi", "lo", "merged", "other"]


@dataclass(frozen=True)
class ScanFile:
    """One file of a scan and what it is: ``role`` (see module table) and ``ext`` (lower case, no dot)."""

    path: str
    role: Role
    ext: str
    detector: str | None = None

    @property
    def is_image(self) -> bool:
        """An EDF image (the ``.gb`` merge is not an EDF and has no header)."""
        return self.ext == "edf"

    @property
    def is_sidecar(self) -> bool:
        """A ``.txt`` sidecar of an image."""
        return self.ext == "txt" and self.role in ("single", "hi", "lo")


@dataclass(frozen=True)
class Scan:
    """A group of files forming one dataset. ``files`` is sorted by path; ``key`` is stable (module doc)."""

    key: str
    folder: str
    stem: str
    kind: ScanKind
    files: tuple[ScanFile, ...]
    catalogue: bool

    @property
    def paths(self) -> list[str]:
        """The tier-relative paths of the scan's files, sorted."""
        return [f.path for f in self.files]

    @property
    def is_data(self) -> bool:
        """Whether the scan is 7.3.3 data (an image, a sidecar or a ``.gb`` merge), i.e. may become a dataset."""
        return self.kind != "other"

    @property
    def detector(self) -> str | None:
        """The detector token of the scan's files (first one found), or None."""
        return next((f.detector for f in self.files if f.detector is not None), None)

    def by_role(self, role: Role, ext: str | None = None) -> list[ScanFile]:
        """Files with this role (and extension, if given)."""
        return [f for f in self.files if f.role == role and (ext is None or f.ext == ext)]


#: When files of different kinds share a key, the scan takes the first kind of this list that is present.
_KIND_PRECEDENCE: tuple[ScanKind, ...] = ("hilo", "exposure", "other")


@dataclass(frozen=True)
class _Classified:
    folder: str
    stem: str
    kind: ScanKind
    file: ScanFile


def _normalise(path: str) -> PurePosixPath:
    """A clean tier-relative path; refuses absolute paths and ``..`` (they would leave the tier)."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or path.endswith("/"):
        raise PathEscapeError(f"not a tier-relative file path: {path!r}")
    return pure


def _patterns(detectors: Iterable[str]) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    dets = "|".join(sorted((re.escape(d) for d in detectors), key=len, reverse=True)) or "(?!)"
    hilo = re.compile(rf"^(?P<scan>.+)_(?P<part>hi|lo)_(?P<det>{dets})\.(?P<ext>edf|txt)$", re.IGNORECASE)
    merged = re.compile(rf"^(?P<scan>.+)_sfloat_(?P<det>{dets})\.(?P<ext>gb)$", re.IGNORECASE)
    single = re.compile(rf"^(?P<scan>.+?)(?:_(?P<det>{dets}))?\.(?P<ext>edf|txt)$", re.IGNORECASE)
    return hilo, merged, single


def classify(
    path: str, *, detectors: Iterable[str] = DETECTOR_TECHNIQUES
) -> tuple[str, str, ScanKind, ScanFile]:
    """Classify one tier-relative path: ``(folder, scan stem, kind, ScanFile)``.

    Raises ``PathEscapeError`` for an absolute path or one with ``..``."""
    c = _classify(path, _patterns(detectors))
    return c.folder, c.stem, c.kind, c.file


def _classify(path: str, patterns: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]) -> _Classified:
    pure = _normalise(path)
    rel = pure.as_posix()
    folder = pure.parent.as_posix() if len(pure.parts) > 1 else ""
    name = pure.name
    hilo, merged, single = patterns
    if m := hilo.match(name):
        role: Role = "hi" if m["part"].lower() == "hi" else "lo"
        return _Classified(folder, m["scan"], "hilo", ScanFile(rel, role, m["ext"].lower(), m["det"].lower()))
    if m := merged.match(name):
        return _Classified(folder, m["scan"], "hilo", ScanFile(rel, "merged", "gb", m["det"].lower()))
    if m := single.match(name):
        stem = name[: -len(m["ext"]) - 1]
        det = m["det"].lower() if m["det"] else None
        return _Classified(folder, stem, "exposure", ScanFile(rel, "single", m["ext"].lower(), det))
    ext = name.rsplit(".", 1)[1].lower() if "." in name.lstrip(".") else ""
    return _Classified(folder, name, "other", ScanFile(rel, "other", ext))


def scan_key(folder: str, stem: str) -> str:
    """The stable key of a scan: ``folder/stem``, or ``stem`` at the tier root."""
    return f"{folder}/{stem}" if folder else stem


def group_scans(
    paths: Iterable[str],
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    detectors: Iterable[str] = DETECTOR_TECHNIQUES,
) -> list[Scan]:
    """Group tier-relative file paths into scans, sorted by key. Duplicate paths are counted once.

    Raises ``PathEscapeError`` if a path is absolute or contains ``..`` (such a path is a caller bug).
    """
    patterns = _patterns(detectors)
    groups: dict[str, list[_Classified]] = {}
    seen: set[str] = set()
    for path in paths:
        c = _classify(path, patterns)
        if c.file.path in seen:
            continue
        seen.add(c.file.path)
        groups.setdefault(scan_key(c.folder, c.stem), []).append(c)
    lowered = [s.lower() for s in exclude if s]
    scans: list[Scan] = []
    for key in sorted(groups):
        members = groups[key]
        kinds = {m.kind for m in members}
        kind: ScanKind = next(k for k in _KIND_PRECEDENCE if k in kinds)
        stem = members[0].stem
        scans.append(Scan(
            key=key,
            folder=members[0].folder,
            stem=stem,
            kind=kind,
            files=tuple(sorted((m.file for m in members), key=lambda f: f.path)),
            catalogue=not any(s in stem.lower() for s in lowered),
        ))
    return scans


#: Default sub-folder of a scan's folder where its reduced results are written (``analysis.results_folder``).
RESULTS_FOLDER = "reduced"


def is_results_path(path: str, results_folder: str = RESULTS_FOLDER) -> bool:
    """Whether a tier-relative path lies in a results folder (``<scan folder>/reduced/...``): such files are
    outputs of the analysis, moved like any file but never analysed again and never catalogued as raw data."""
    return results_folder in PurePosixPath(path).parts[:-1]
