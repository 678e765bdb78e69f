"""The storage tier interface.

A tier copies a batch into itself from another tier, verifies, stats and deletes. The move service never
knows whether a tier is a local folder or a Globus collection: it hands over a batch and gets one outcome per
item back (a result or a typed error), so one bad file never stops the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from splash_flows.errors import TierError


@dataclass(frozen=True)
class FileStat:
    """What a tier can say about one file without reading it."""

    path: str
    size: int
    mtime: float


class Fingerprint(NamedTuple):
    """A file as registration sees it: its stat, and its checksum (None: not read, as the ledger already holds
    this size and mtime)."""

    stat: FileStat
    checksum: str | None


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


@dataclass(frozen=True)
class WalkProblem:
    """Something a walk met but could not list as a file. ``path`` is tier-relative (it may hold undecodable
    bytes as surrogate escapes, see ``selection.display_path``). ``fatal``: the walk is incomplete (a folder
    that could not be listed, an entry that could not be stat'ed); otherwise a thing that is not a file to move
    (a FIFO, a socket, a device), reported and left alone."""

    path: str
    reason: str
    fatal: bool


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

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        """Every regular file under ``prefix`` (tier-relative), for scans and reconciliation.

        ``ignore(name)`` True leaves out a file or folder (and everything beneath it) by its name. What is not
        a regular file, and folders that cannot be listed, are appended to ``problems``; without ``problems``
        a walk that could not list a folder raises TierError naming it, after yielding everything else. Only a
        file that vanished while the walk ran is skipped quietly."""
        ...

    def url(self, path: str) -> str:
        """Where ``path`` is, as a person or a catalogue would name it."""
        ...
