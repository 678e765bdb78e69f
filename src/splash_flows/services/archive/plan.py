"""The bundle planner: pure functions, no I/O (property-tested in tests/unit/test_archive_plan.py).

Input: the archivable files (verified on the archive's source tier, not yet in any bundle) with their size,
acquisition time and proposal. Output: bundles, deterministic for a given input:

- files are grouped by proposal and beam cycle (``beamlines.bl733.cycles``);
- a file larger than ``single_file_bytes``, or whose path breaks htar's ustar limits (a name part of at most
  99 bytes and a prefix of at most 154 bytes, in UTF-8), goes ALONE (kind ``file``: ``hsi cput``) -- never
  into a bundle and never dropped. htar silently leaves such a path out of its archive while saying
  "HTAR SUCCESSFUL" (exit 70), which is why the check is made here, before anything is written;
- the others fill bundles (kind ``tar``) in path order, a bundle being closed before it would pass
  ``bundle_target_bytes``; no bundle's packed size (tar headers and padding included) exceeds ``bundle_max_bytes``;
- a bundle is named ``<proposal>/<proposal>_<year>-<cycle>_partNNN.tar``; numbering continues after the parts a
  group already has (``next_part``), so a later run never reuses a name. A single file keeps its own path
  under ``<proposal>/<proposal>_<year>-<cycle>_files/``.

Idempotence is the ledger's part: a planned bundle is recorded with its members before anything is written,
and files already in a bundle are not archivable, so re-planning after a crash yields nothing new for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from splash_flows.beamlines.bl733.cycles import BeamCycle, beam_cycle, proposal_of_path

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default record: an archive is padded to a multiple of it
HTAR_NAME_MAX = 99
HTAR_PREFIX_MAX = 154

BundleKind = Literal["tar", "file"]


@dataclass(frozen=True)
class ArchivableFile:
    """A file that may be archived: ledger id, source-relative path, size, checksum and acquisition time."""

    file_id: int
    path: str
    size: int
    checksum: str
    acquired_at: datetime


@dataclass(frozen=True)
class PlannedBundle:
    """One bundle to write: its name (archive-relative), kind, group and members (in order)."""

    name: str
    kind: BundleKind
    proposal: str
    cycle: str
    part: int
    members: tuple[ArchivableFile, ...]
    why_alone: str | None = None

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def packed_size(self) -> int:
        return packed_size([m.size for m in self.members]) if self.kind == "tar" else self.size


@dataclass(frozen=True)
class PlanLimits:
    """Sizes from ``config.archive``."""

    target_bytes: int
    max_bytes: int
    single_file_bytes: int


@dataclass
class Plan:
    """The bundles a run would write, in name order."""

    bundles: list[PlannedBundle] = field(default_factory=list)


def packed_size(sizes: Iterable[int]) -> int:
    """Bytes of a ustar archive holding members of these sizes: a header block and the data padded to whole
    blocks per member, two zero blocks at the end, the whole padded to a record."""
    total = sum(BLOCK + -(-s // BLOCK) * BLOCK for s in sizes) + 2 * BLOCK
    return -(-total // RECORD) * RECORD


def htar_path_problem(path: str) -> str | None:
    """Why htar cannot store ``path`` (None: it can). ustar splits a path at a '/' into a prefix of at most
    154 bytes and a name of at most 99 bytes; a path that cannot be split so is left out by htar."""
    data = path.encode("utf-8", "surrogateescape")
    if len(data) <= HTAR_NAME_MAX:
        return None
    name = data.rsplit(b"/", 1)[-1]
    if len(name) > HTAR_NAME_MAX:
        return f"file name is {len(name)} bytes (htar stores at most {HTAR_NAME_MAX})"
    # the prefix can end at any '/' that leaves a name of at most 99 bytes
    for i, byte in enumerate(data):
        if byte == ord("/") and i <= HTAR_PREFIX_MAX and len(data) - i - 1 <= HTAR_NAME_MAX:
            return None
    return f"path is {len(data)} bytes and cannot be split into a prefix of <= {HTAR_PREFIX_MAX} bytes and a " \
           f"name of <= {HTAR_NAME_MAX} bytes (htar would leave it out)"


def bundle_name(proposal: str, cycle: BeamCycle | str, part: int) -> str:
    """``<proposal>/<proposal>_<year>-<cycle>_partNNN.tar``."""
    return f"{proposal}/{proposal}_{cycle}_part{part:03d}.tar"


def single_name(proposal: str, cycle: BeamCycle | str, path: str) -> str:
    """Where a file archived alone goes: ``<proposal>/<proposal>_<year>-<cycle>_files/<path>``."""
    return f"{proposal}/{proposal}_{cycle}_files/{path}"


def plan_bundles(files: Sequence[ArchivableFile], limits: PlanLimits, *, zone: str,
                 next_part: Mapping[tuple[str, str], int] | None = None) -> Plan:
    """Group ``files`` into bundles (module doc). ``next_part[(proposal, cycle)]`` is the first free part number
    of a group (default 1). Deterministic: the same input gives the same plan whatever its order."""
    groups: dict[tuple[str, str], list[ArchivableFile]] = {}
    for f in files:
        key = (proposal_of_path(f.path), str(beam_cycle(f.acquired_at, zone)))
        groups.setdefault(key, []).append(f)
    plan = Plan()
    for (proposal, cycle), members in sorted(groups.items()):
        plan.bundles += _plan_group(proposal, cycle, members, limits, (next_part or {}).get((proposal, cycle), 1))
    plan.bundles.sort(key=lambda b: b.name)
    return plan


def _plan_group(proposal: str, cycle: str, members: Sequence[ArchivableFile], limits: PlanLimits,
                first_part: int) -> list[PlannedBundle]:
    """The bundles of one (proposal, cycle) group, parts numbered from ``first_part``."""
    out: list[PlannedBundle] = []
    part = first_part
    current: list[ArchivableFile] = []
    for f in sorted(members, key=lambda m: (m.path, m.file_id)):
        why = (f"{f.size} bytes is over the single-file threshold of {limits.single_file_bytes}"
               if f.size > limits.single_file_bytes else htar_path_problem(f.path))
        if why is not None:
            out.append(PlannedBundle(single_name(proposal, cycle, f.path), "file", proposal, cycle, 0, (f,),
                                     why_alone=why))
            continue
        sizes = [m.size for m in current]
        if current and (sum(sizes) + f.size > limits.target_bytes
                        or packed_size([*sizes, f.size]) > limits.max_bytes):
            out.append(PlannedBundle(bundle_name(proposal, cycle, part), "tar", proposal, cycle, part, tuple(current)))
            part += 1
            current = []
        current.append(f)
    if current:
        out.append(PlannedBundle(bundle_name(proposal, cycle, part), "tar", proposal, cycle, part, tuple(current)))
    return out
