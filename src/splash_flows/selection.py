"""What counts as a file to move: the one rule shared by the watcher (live events, backfill, rescans),
``reconcile`` (and its dry run) and the dispatcher.

A path on the move source tier is a file to move when

- no component of it matches ``watcher.ignore_patterns`` (hidden files, other programs' temporary and
  half-written files, editor and office lock files by default: ``config.DEFAULT_IGNORE_PATTERNS``);
- its name is valid UTF-8 and a clean relative path (the ledger, Prefect and the catalogue all carry names as
  UTF-8 text: a name that is not cannot travel, so it is refused, never half-handled);
- it is a regular file (a FIFO, a socket or a device is refused; symlinks are each command's own business).

A refused path gets ONE line and a ``refused`` ledger event; the rest of the tree goes on. Names that are not
UTF-8 are shown and recorded in ``display_path`` form (undecodable bytes as ``\\xNN``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splash_flows.config import Config
from splash_flows.errors import LedgerError, PathEscapeError
from splash_flows.ledger import EventKind, Ledger
from splash_flows.paths import display_path, normalize_relpath
from splash_flows.tiers.base import FileStat, Tier, WalkProblem
from splash_flows.tiers.local import FolderListing, LocalTier, SkipFolders, list_tree

log = logging.getLogger(__name__)

NOT_UTF8 = "file name is not valid UTF-8; rename it"


@dataclass(frozen=True)
class Refusal:
    """A path that is not a file to move, and why. ``path`` is in ``display_path`` form."""

    path: str
    reason: str


class MoveRule:
    """The rule, built once from the configuration (``MoveRule.from_config``)."""

    def __init__(self, ignore_patterns: Sequence[str], *, tier: str) -> None:
        self.tier = tier
        self.ignore_patterns = list(ignore_patterns)
        # Plain "X*", "*X" and "X" patterns (most of them) become startswith / endswith / equality tests, which
        # a scan pays per name; any other pattern joins one regex. Same answers as fnmatch (case-sensitive).
        prefixes: list[str] = []
        suffixes: list[str] = []
        exact: set[str] = set()
        rest: list[str] = []
        for p in self.ignore_patterns:
            body = p.strip("*")
            stars = p.count("*")
            if any(c in body for c in "*?[]") or not body:
                rest.append(p)
            elif stars == 0:
                exact.add(p)
            elif stars == 1 and p.endswith("*"):
                prefixes.append(body)
            elif stars == 1 and p.startswith("*"):
                suffixes.append(body)
            else:
                rest.append(p)
        self._prefixes, self._suffixes, self._exact = tuple(prefixes), tuple(suffixes), frozenset(exact)
        self._ignore = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in rest)) if rest else None

    @classmethod
    def from_config(cls, config: Config) -> MoveRule:
        return cls(config.watcher.ignore_patterns, tier=config.move.source)

    def ignored_name(self, name: str) -> bool:
        """Whether a file or folder named ``name`` is left alone (it and everything beneath it)."""
        return (name.startswith(self._prefixes) or name.endswith(self._suffixes) or name in self._exact
                or (self._ignore is not None and self._ignore.match(name) is not None))

    def ignored(self, rel: str) -> bool:
        """Whether any component of the tier-relative ``rel`` is ignored."""
        return any(self.ignored_name(part) for part in rel.split("/") if part)

    def refusal(self, rel: str, *, check_path: bool = True) -> Refusal | None:
        """Why ``rel`` (not ignored) cannot be moved by its name, or None when it can. ``check_path`` False
        leaves the path's shape (``..``, absolute) to a caller that refuses it with its own typed error."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return Refusal(display_path(rel), NOT_UTF8)
        if not check_path:
            return None
        try:
            normalize_relpath(rel, tier=self.tier)
        except PathEscapeError as err:
            return Refusal(rel, str(err))
        return None

    def clean_folder(self, folder: str) -> bool:
        """Whether the names listed in the tier-relative ``folder`` can each be checked alone (``refusal_in``):
        true when ``folder`` is not the root and itself passes ``refusal``. Computed once per folder."""
        return bool(folder) and self.refusal(folder) is None

    def refusal_in(self, folder: str, clean: bool, rel: str) -> Refusal | None:
        """``refusal(rel)`` for ``rel`` = ``folder/name`` with ``name`` as a folder listing gives it (never empty,
        ``.`` or ``..``, never holding ``/`` or NUL), where ``clean`` is ``clean_folder(folder)``. In a clean
        folder only the name's encoding can fail (the whitespace-only, absolute and drive-letter shapes depend on
        the first component alone), so a scan pays an ``isascii`` per file instead of parsing every path whole."""
        if not clean:
            return self.refusal(rel)
        if rel.isascii():
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return Refusal(display_path(rel), NOT_UTF8)
        return None


@dataclass
class SourceListing:
    """The files to move under a prefix of the source tier, what was refused, and what could not be read."""

    files: list[FileStat] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    unreadable: list[Refusal] = field(default_factory=list)   # folders not listable, entries not stat-able

    @property
    def complete(self) -> bool:
        """False when part of the tree could not be read (the command must say so and exit non-zero)."""
        return not self.unreadable


@dataclass(slots=True)
class RuledFolder:
    """One folder of ``scan_tree``: its listing, and of its files those to move and those the rule refuses."""

    listing: FolderListing
    files: list[tuple[str, os.stat_result]]
    refused: list[Refusal]

    @property
    def leaf(self) -> bool:
        """Files to move and no folder below it on disk: its files can be looked up in the ledger as one range
        of the path index (``ledger.outbox.verified_in_folders``)."""
        return bool(self.files) and not self.listing.subfolders

    @property
    def settleable(self) -> bool:
        """A leaf folder below the root, listed without trouble, holding only files to move: what one record
        of the watcher's settled folders (``ledger.scan_state``) can stand for."""
        listing = self.listing
        return bool(listing.folder) and listing.error is None and not (
            listing.subfolders or listing.problems or listing.specials or listing.symlinks or self.refused)


def scan_tree(root: Path, start: Path, rule: MoveRule, *, skip: SkipFolders | None = None) -> Iterator[RuledFolder]:
    """The walk every scan of a local source tier makes -- the watcher's backfill and rescans, ``reconcile``
    -- folder by folder (``tiers.local.list_tree``: names and ``d_type`` from the listing, one ``lstat`` per
    file, ``rule``'s ignores), each name checked once: ``MoveRule.clean_folder`` per folder, then
    ``MoveRule.refusal_in`` per file. ``skip``: see ``list_tree`` (the watcher's light rescans)."""
    for listing in list_tree(root, start, rule.ignored_name, skip=skip):
        files: list[tuple[str, os.stat_result]] = []
        refused: list[Refusal] = []
        if listing.error is None:
            folder = listing.folder
            clean = rule.clean_folder(folder)
            for rel, st in listing.files:
                why = rule.refusal_in(folder, clean, rel)
                if why is None:
                    files.append((rel, st))
                else:
                    refused.append(why)
        yield RuledFolder(listing, files, refused)


class SourceChunk(list[FileStat]):
    """One chunk of ``stream_source``: its files, and ``leaves``, the ``(start, end)`` slices of it that each
    hold every file of one leaf folder (none below it on disk), which the ledger can look up as one range
    (``ledger.outbox.verified_in_folders``). Empty when the walk cannot tell (a tier other than local)."""

    def __init__(self, files: Iterable[FileStat] = (), leaves: list[tuple[int, int]] | None = None) -> None:
        super().__init__(files)
        self.leaves: list[tuple[int, int]] = leaves if leaves is not None else []


def stream_source(tier: Tier, rule: MoveRule, out: SourceListing, prefix: str = "", *,
                  chunk: int = 2000) -> Iterator[SourceChunk]:
    """The files to move under ``prefix`` of the source tier, in lists of about ``chunk`` (memory stays flat
    however large the tree); what the rule refuses, and what could not be read, is added to ``out`` (the
    unreadable places once the walk is done). Each name is checked once (``MoveRule.refusal_in``). A local
    tier is walked by ``scan_tree``, the watcher's own walk; any other through its ``walk``."""
    if isinstance(tier, LocalTier):
        yield from _stream_local(tier, rule, out, prefix, chunk)
        return
    problems: list[WalkProblem] = []
    pending = SourceChunk()
    folder, clean = None, False
    for st in tier.walk(prefix, ignore=rule.ignored_name, problems=problems):
        here = st.path.rpartition("/")[0]
        if here != folder:
            folder, clean = here, rule.clean_folder(here)
        refused = rule.refusal_in(here, clean, st.path)
        if refused is None:
            pending.append(st)
            if len(pending) >= chunk:
                yield pending
                pending = SourceChunk()
        else:
            out.refused.append(refused)
    if pending:
        yield pending
    for p in problems:
        (out.unreadable if p.fatal else out.refused).append(Refusal(display_path(p.path), p.reason))


def _stream_local(tier: LocalTier, rule: MoveRule, out: SourceListing, prefix: str,
                  chunk: int) -> Iterator[SourceChunk]:
    """``stream_source`` of a local tier, with ``LocalTier.walk``'s answers: a folder that cannot be listed and
    a file that cannot be stat'ed are unreadable (the command is incomplete), a FIFO, socket or device is
    refused, a symlink is left out."""
    start = tier.walk_start(prefix)
    problems: list[WalkProblem] = []
    pending = SourceChunk()
    for ruled in scan_tree(tier.root, start, rule):
        listing = ruled.listing
        if listing.error is not None:
            problems.append(WalkProblem(listing.folder or ".", f"cannot list folder: {listing.error}", fatal=True))
            continue
        problems += [WalkProblem(rel, why, fatal=True) for rel, why in listing.problems]
        problems += [WalkProblem(rel, f"{what}, not a regular file", fatal=False) for rel, what in listing.specials]
        out.refused += ruled.refused
        if ruled.leaf:
            pending.leaves.append((len(pending), len(pending) + len(ruled.files)))
        pending += [FileStat(rel, st.st_size, st.st_mtime) for rel, st in ruled.files]
        if len(pending) >= chunk:
            yield pending
            pending = SourceChunk()
    if pending:
        yield pending
    for p in problems:
        (out.unreadable if p.fatal else out.refused).append(Refusal(display_path(p.path), p.reason))


def record_refusals(ledger: Ledger, tier: str, refusals: Iterable[Refusal]) -> int:
    """One WARNING line and one ``refused`` ledger event per refusal. Returns how many were recorded."""
    n = 0
    for r in refusals:
        log.warning("refused %s:%s: %s", tier, r.path, r.reason)
        try:
            ledger.record_failed(r.path, tier, r.reason, kind=EventKind.REFUSED)
            n += 1
        except LedgerError as err:
            log.error("cannot record the refusal of %s in the ledger: %s", r.path, err)
    return n
