"""What every archive tier (HPSS: ``local`` for the embedded default, ``sfapi`` at NERSC) does, and the parts
they share.

An archive tier stores *bundles* planned by ``services.archive.plan`` and recorded in the ledger
(``ledger.archive``): ``write_bundle`` writes one and verifies it against its manifest (the ledger's member
names, sizes and checksums), ``restore`` extracts members and verifies each against the ledger's checksum.
It is also a ``Tier`` for the rest of the system, addressed by the *source* file's path: ``stat`` and
``checksum`` answer from the bundle holding the file (its listing; a re-read where the backend can), which is
how the prune step re-verifies a required hpss copy. Copying single files into it or deleting from it is
refused: files reach tape only in verified bundles, and nothing is pruned from tape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from splash_flows.errors import DeleteError, TierError
from splash_flows.ledger.archive import BundleRecord, MemberRecord, bundle_of_path, bundles
from splash_flows.ledger.models import BundleState
from splash_flows.ledger.store import Ledger
from splash_flows.tiers.base import CopyItem, CopyOutcome, FileStat, ProgressCallback, Tier, WalkProblem

BundleProgress = Callable[[str, int], None]  # (member path, bytes done in this call)


@dataclass(frozen=True)
class BundleWritten:
    """A bundle written and verified: its packed size, where it is, and the evidence of the verification."""

    packed_size: int
    url: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedMember:
    """One line of a bundle's listing (``tarfile`` locally, ``htar -tvf`` at NERSC)."""

    name: str
    size: int


@runtime_checkable
class ArchiveTier(Tier, Protocol):
    """A ``Tier`` that stores bundles (module doc)."""

    ledger: Ledger | None

    def write_bundle(self, source: Tier, bundle: BundleRecord,
                     progress: BundleProgress | None = None) -> BundleWritten:
        """Write ``bundle`` from ``source`` (under a temporary name), verify it against its manifest, then give
        it its final name. Raises a TierError naming the bundle (and the members) on any failure."""
        ...

    def restore(self, bundle: BundleRecord, members: Sequence[MemberRecord], dest: Path) -> list[Path]:
        """Extract ``members`` of ``bundle`` to ``dest/<source path>``, each verified against its ledger checksum
        (VerificationError naming the file otherwise); return the paths written."""
        ...

    def bundle_url(self, name: str) -> str:
        """Where the bundle ``name`` is, as a person or a catalogue would name it."""
        ...


def compare_listing(bundle: BundleRecord, listing: Sequence[ListedMember], *, tier: str) -> None:
    """Raise VerificationError unless the listing holds exactly the manifest's members with their sizes.

    Zero matches, fewer members (htar leaves out paths it cannot store and still says "SUCCESSFUL"), a size
    mismatch and an unexpected member are each a failure naming the bundle and the members."""
    from splash_flows.errors import VerificationError

    listed = {m.name: m.size for m in listing}
    expected = {m.member: m.size for m in bundle.members}
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))
    wrong = sorted(n for n in set(expected) & set(listed) if listed[n] != expected[n])
    problems = []
    if not set(expected) & set(listed):
        problems.append(f"the listing matches none of its {len(expected)} member(s)")
    if missing:
        problems.append(f"{len(missing)} member(s) missing from the listing: {_names(missing)}")
    if wrong:
        problems.append("size differs from the manifest for " + _names(
            [f"{n} ({listed[n]} != {expected[n]})" for n in wrong]))
    if extra:
        problems.append(f"{len(extra)} unexpected member(s): {_names(extra)}")
    if problems:
        raise VerificationError(f"bundle {bundle.name}: " + "; ".join(problems), tier=tier)


def _names(names: Sequence[str], limit: int = 10) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class ArchiveTierBase:
    """``Tier`` methods shared by the archive tiers: files are addressed by their source path and found
    through the ledger's manifests; only verified bundles count."""

    name: str
    checksum_alg: str
    ledger: Ledger | None

    def _member(self, path: str) -> tuple[BundleRecord, MemberRecord] | None:
        if self.ledger is None:
            raise TierError("an archive tier needs the ledger to find the bundle of a file", tier=self.name)
        found = bundle_of_path(self.ledger, self.name, path)
        if found is None or found[0].state != BundleState.VERIFIED:
            return None
        return found

    def copy_from(self, source: Tier, items: Sequence[CopyItem],
                  progress: ProgressCallback | None = None) -> list[CopyOutcome]:
        raise TierError("files reach an archive tier only in verified bundles (`splash-flows archive`), never "
                        "one by one; remove it from move.targets", tier=self.name)

    def delete(self, paths: Sequence[str]) -> list[TierError | None]:
        return [DeleteError("nothing is deleted from the tape archive (no retention rule may name it)",
                            tier=self.name, path=p) for p in paths]

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        """The members of verified bundles under ``prefix``, from the ledger (tape is never listed by walking);
        ``ignore`` and ``problems`` are accepted for the Tier protocol: a bundle's members were chosen by the one
        move rule already and a ledger read has no unreadable folders."""
        if self.ledger is None:
            return
        for b in bundles(self.ledger, self.name, states=[BundleState.VERIFIED]):
            for m in b.members:
                if m.source_path.startswith(prefix):
                    yield FileStat(m.source_path, m.size, 0.0)
