"""A wrapper around a real tier that lets a test watch deletions, or crash a run at the deletion.

``SimulatedCrash`` derives from BaseException so it behaves like ``kill -9`` for our code: handlers that
catch ``Exception`` (to release claims cleanly) do not see it, and the ledger is left as a dead run leaves it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from splash_flows.errors import TierError
from splash_flows.tiers.base import CopyItem, CopyOutcome, FileStat, ProgressCallback, Tier, WalkProblem


class SimulatedCrash(BaseException):
    """The process 'died' here."""


class ObservedTier:
    """Delegates to ``inner``; calls ``before_delete(tier, paths)`` first, records what was deleted, and
    optionally crashes just before or just after the real deletion (``crash`` = "before" / "after")."""

    def __init__(self, inner: Tier, *, before_delete: Callable[[str, Sequence[str]], None] | None = None,
                 deleted: list[tuple[str, str]] | None = None) -> None:
        self.inner = inner
        self.before_delete = before_delete
        self.deleted = deleted if deleted is not None else []
        self.crash: Literal["before", "after"] | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def checksum_alg(self) -> str:
        return self.inner.checksum_alg

    def stat(self, path: str) -> FileStat | None:
        return self.inner.stat(path)

    def checksum(self, path: str) -> str:
        return self.inner.checksum(path)

    def copy_from(self, source: Tier, items: Sequence[CopyItem],
                  progress: ProgressCallback | None = None) -> list[CopyOutcome]:
        src = source.inner if isinstance(source, ObservedTier) else source
        return self.inner.copy_from(src, items, progress)

    def delete(self, paths: Sequence[str]) -> list[TierError | None]:
        if self.before_delete is not None:
            self.before_delete(self.name, paths)
        if self.crash == "before":
            raise SimulatedCrash(f"crash before deleting {list(paths)} on {self.name}")
        out = self.inner.delete(paths)
        with self._lock:
            self.deleted += [(self.name, p) for p, o in zip(paths, out, strict=True) if o is None]
        if self.crash == "after":
            raise SimulatedCrash(f"crash after deleting {list(paths)} on {self.name}")
        return out

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        return self.inner.walk(prefix, ignore=ignore, problems=problems)

    def url(self, path: str) -> str:
        return self.inner.url(path)
