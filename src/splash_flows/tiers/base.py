"""The storage tier interface.

A tier copies a batch into itself from another tier, verifies, stats and deletes. The move service never
knows whether a tier is a local folder or a Globus collection: it hands over a batch and gets one outcome per
item back (a result or a typed error), so one bad file never stops the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from splash_flows.errors import TierError


@dataclass(frozen=True)
class FileStat:
    """What a tier can say about one file without reading it."""

    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class CopyItem:
    """One file to copy. ``checksum`` is the source checksum the ledger holds (None: not yet known)."""

    path: str
    checksum: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class CopyResult:
    """A verified copy: the destination's checksum equals the source's, both computed by us (or by the service)."""

    path: str
    size: int
    mtime: float
    checksum: str
    skipped: bool  # the destination already matched; nothing was written
    source_checksum: str
    # How the copy was verified, when a tier has more to say than "we hashed both" (e.g. a Globus task id and
    # which checksum Globus compared). Recorded with the ledger's copied/verified events.
    detail: Mapping[str, Any] | None = field(default=None, compare=False)


CopyOutcome = CopyResult | TierError
ProgressCallback = Callable[[str, int], None]  # (path, bytes done for this call)


@runtime_checkable
class Tier(Protocol):
    """A named storage tier."""

    name: str
    kind: str
    checksum_alg: str

    def stat(self, path: str) -> FileStat | None:
        """Size and mtime of ``path``, or None if absent. Raises TierError if the tier cannot be asked."""
        ...

    def checksum(self, path: str) -> str:
        """Checksum of ``path`` on this tier with ``checksum_alg`` (re-reads the data)."""
        ...

    def copy_from(self, source: Tier, items: Sequence[CopyItem],
                  progress: ProgressCallback | None = None) -> list[CopyOutcome]:
        """Copy ``items`` from ``source`` into this tier at the same relative paths and verify each.

        Returns one outcome per item, in order. Never leaves a partial file under a final name.
        Raises TierError only when the whole batch could not be attempted (e.g. unsupported source kind).
        """
        ...

    def delete(self, paths: Sequence[str]) -> list[TierError | None]:
        """Delete ``paths`` (and folders left empty, never the root). One outcome per path: None = deleted."""
        ...

    def walk(self, prefix: str = "") -> Iterator[FileStat]:
        """Every file under ``prefix`` (tier-relative), for scans and reconciliation."""
        ...

    def url(self, path: str) -> str:
        """Where ``path`` is, as a person or a catalogue would name it."""
        ...
