"""A tier that is a folder on a file system this process can reach.

The verified copy: read the source in large chunks while hashing it, write under a temporary name in the
destination folder, set the source's mtime, fsync, drop the written pages from the page cache, re-read and
hash the temporary file, and only if both hashes agree rename it to its final name (then fsync the folder).
So a final name only ever holds a complete, verified file, and a ``kill -9`` at any point leaves at most a
``.part`` file that the next copy of the same file removes. The copy keeps the source's permission bits (as
``cp -p`` does; ``preserve_mode``), set on the temporary file before the rename.

Listing (``list_tree``, used by ``walk`` and by the watcher's scans): one folder at a time, never following
symlinks. A folder that cannot be listed and an entry that cannot be stat'ed are reported, never taken for
"vanished"; only ``FileNotFoundError`` (the file or folder went away during the walk) is skipped quietly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import socket
import stat as stat_mod
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar, cast

from splash_flows.checksum import CHUNK, new_hasher
from splash_flows.errors import (
    DeleteError,
    SourceChangedError,
    SourceMissingError,
    TierError,
    TransferError,
    VerificationError,
    WalkIncomplete,
)
from splash_flows.paths import normalize_relpath, safe_join
from splash_flows.tiers.base import (
    CopyItem,
    CopyOutcome,
    CopyResult,
    FileStat,
    Fingerprint,
    ProgressCallback,
    Tier,
    WalkProblem,
)

PART_MARK = ".splash-part-"
# fsyncs in flight at once in the durability phase: threads wait on the disk, not the CPU, and the file system
# commits concurrent fsyncs together (measured: docs/PERFORMANCE.md)
SYNC_THREADS = 32
SMALL_BUFFER = 256 * 1024
_T = TypeVar("_T")
_buffers = threading.local()


def _buffer(size: int) -> bytearray:
    """A read buffer for a file of ``size`` bytes, reused by the calling thread: small files do not pay for
    allocating (and zeroing) a 4 MiB buffer each time they are read."""
    attr = "small" if size < SMALL_BUFFER else "large"
    buf: bytearray | None = getattr(_buffers, attr, None)
    if buf is None:
        buf = bytearray(SMALL_BUFFER if attr == "small" else CHUNK)
        setattr(_buffers, attr, buf)
    return buf


def _folder_of(tier: LocalTier, folder: str, cache: dict[str, Path | TierError]) -> Path:
    """``tier``'s absolute path of the tier-relative ``folder`` ("" = the root), checked once per batch to
    resolve inside the root (``safe_join``: a symlinked folder pointing outside is refused)."""
    if folder not in cache:
        try:
            cache[folder] = safe_join(tier.root, folder, tier=tier.name) if folder else tier.root
        except TierError as err:
            cache[folder] = err
    found = cache[folder]
    if isinstance(found, TierError):
        raise type(found)(found.bare_message, tier=found.tier)
    return found


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass
class _Staged:
    """A file written under its temporary name, not yet durable nor verified, and the result it will have."""

    tmp: str
    dst: str
    result: CopyResult


class _Where(NamedTuple):
    """Where one item of a batch is read from and written to (absolute paths; ``folder`` checked once)."""

    src: str
    dst: str
    folder: Path
    name: str


class _Folder(NamedTuple):
    """A destination folder of a batch: why it cannot receive files, or the names it held when listed (None:
    not known, so every name is checked)."""

    error: TierError | None
    names: frozenset[str] | None = None


# a source is opened without following a symlink as its last component (checked apart), and without blocking
# (a FIFO would wait for a writer: it is opened, found not a regular file by fstat, and refused)
_OPEN_SOURCE = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@functools.cache
def _syncfs_call() -> Callable[[int], int] | None:
    """The C library's ``syncfs`` (Linux, glibc >= 2.14 or musl), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return cast(Callable[[int], int], ctypes.CDLL(None, use_errno=True).syncfs)
    except (OSError, AttributeError):
        return None


def _syncfs(folders: Collection[str]) -> None:
    """``syncfs(2)`` once per file system holding one of ``folders`` (where there is no syncfs, nothing). Only a
    way to flush a batch at once: its result is ignored, as each file's own ``fsync`` follows and reports its
    errors."""
    call = _syncfs_call()
    if call is None:
        return
    seen: set[int] = set()
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # the files' own fsyncs say what is wrong
        try:
            dev = os.fstat(fd).st_dev
            if dev not in seen:
                seen.add(dev)
                call(fd)
        finally:
            os.close(fd)


def _hostname() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")


def _is_part(name: str) -> bool:
    return PART_MARK in name and name.endswith(".part")


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def file_kind(mode: int) -> str:
    """What a non-regular directory entry is, in words (for one-line refusals)."""
    if stat_mod.S_ISFIFO(mode):
        return "a FIFO"
    if stat_mod.S_ISSOCK(mode):
        return "a socket"
    if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
        return "a device"
    if stat_mod.S_ISLNK(mode):
        return "a symlink"
    if stat_mod.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


@dataclass
class FolderListing:
    """One folder of a ``list_tree`` walk. Paths are relative to the walk's root, ``/``-separated; names that
    are not valid UTF-8 hold surrogate escapes (``os.fsdecode``). ``error``: the folder could not be listed
    (nothing else is filled in); ``problems``: entries that could not be stat'ed, with why. ``mtime_ns``: the
    folder's own mtime, taken before it was listed (None when unknown); ``subfolders``: how many folders it holds
    that the walk goes into (ignored ones not counted)."""

    folder: str
    mtime_ns: int | None = None
    subfolders: int = 0
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    specials: list[tuple[str, str]] = field(default_factory=list)   # (path, what it is: "a FIFO", ...)
    problems: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


SkipFolders = Callable[[list[tuple[str, int]]], Collection[str]]
# called before a batch's first rename: the checksum each tier-relative path may be renamed with
RenameGate = Callable[[], Mapping[str, str]]


def list_tree(root: Path, start: Path | None = None, ignore: Callable[[str], bool] | None = None, *,
              skip: SkipFolders | None = None) -> Iterator[FolderListing]:
    """Walk ``start`` (default ``root``) depth-first, one ``FolderListing`` per folder, folders and files in
    name order, never following symlinks. ``ignore(name)`` True leaves an entry out (a folder with all beneath
    it). Our own ``.part`` files are always left out. A folder or file that vanished is skipped quietly; any
    other error is reported in the listing. ``skip``, given the (relative path, mtime in ns) of the folders
    just found in a folder, names those among them not to list (the watcher's light rescan: folders unchanged
    since a full scan found them settled); each folder's mtime costs one ``lstat``, taken before it is listed."""
    base = os.path.abspath(root)
    first = os.path.abspath(start if start is not None else root)
    try:
        first_mtime: int | None = os.lstat(first).st_mtime_ns
    except OSError:
        first_mtime = None  # scandir below says why
    stack: list[tuple[str, int | None]] = [(first, first_mtime)]
    while stack:
        folder, mtime_ns = stack.pop()
        rel_folder = os.path.relpath(folder, base).replace(os.sep, "/")
        listing = FolderListing("" if rel_folder == "." else rel_folder, mtime_ns)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # vanished during the walk
        except OSError as err:
            listing.error = _reason(err)
            yield listing
            continue
        subfolders: list[tuple[str, str, int | None]] = []  # (path, relative path, mtime_ns)
        prefix = f"{listing.folder}/" if listing.folder else ""
        files, problems = listing.files, listing.problems
        for entry in entries:
            name = entry.name
            if (ignore is not None and ignore(name)) or _is_part(name):
                continue
            try:
                # the entry's type comes from the listing (d_type): no stat for a folder, one lstat per file
                if entry.is_dir(follow_symlinks=False):
                    try:
                        sub_mtime: int | None = entry.stat(follow_symlinks=False).st_mtime_ns
                    except OSError:
                        sub_mtime = None  # listing it says why
                    subfolders.append((entry.path, prefix + name, sub_mtime))
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between listing and stat
            except OSError as err:
                problems.append((prefix + name, f"cannot stat: {_reason(err)}"))
                continue
            mode = st.st_mode
            if stat_mod.S_ISREG(mode):
                files.append((prefix + name, st))
            elif stat_mod.S_ISDIR(mode):  # the listing's type was unknown (DT_UNKNOWN) and stat says folder
                subfolders.append((entry.path, prefix + name, st.st_mtime_ns))
            elif stat_mod.S_ISLNK(mode):
                listing.symlinks.append(prefix + name)
            else:
                listing.specials.append((prefix + name, file_kind(mode)))
        listing.subfolders = len(subfolders)
        if skip is not None and subfolders:
            known = [(rel, m) for _, rel, m in subfolders if m is not None]
            skipped = skip(known) if known else ()
            if skipped:
                subfolders = [s for s in subfolders if s[1] not in skipped]
        stack.extend((path, m) for path, _, m in reversed(subfolders))
        yield listing


class LocalTier:
    """A tier rooted at a local (or mounted) folder."""

    kind = "local"

    def __init__(self, name: str, root: Path, checksum_alg: str, *, concurrency: int = 4,
                 verify_from_disk: bool = True, preserve_mode: bool = True) -> None:
        self.name = name
        self.root = root
        self.checksum_alg = checksum_alg
        self.concurrency = concurrency
        self.verify_from_disk = verify_from_disk
        self.preserve_mode = preserve_mode

    def __repr__(self) -> str:
        return f"LocalTier({self.name!r}, {str(self.root)!r})"

    # ------------------------------------------------------------------------------------------ basics

    def path(self, relpath: str) -> Path:
        """The absolute path of ``relpath`` on this tier (refusing any escape from the root)."""
        return safe_join(self.root, relpath, tier=self.name)

    def check_root(self, *, writable: bool = False) -> None:
        """Raise TierError if the root folder is missing or not a folder. Nothing ever creates a tier root: a
        missing root is usually an unmounted file system, and writing into the bare mount point would put data
        on the wrong disk.

        ``writable``: also prove that this process can create (and remove) a file there -- a hidden probe file,
        which the watcher ignores -- as copies, prunes and restores need (``splash-flows config check``).
        """
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise TierError(f"tier root {self.root} {what} (not mounted?)", tier=self.name)
        if not writable:
            return
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TierError(f"tier root {self.root} is not writable by this user (uid {os.geteuid()})",
                            tier=self.name)
        try:
            fd, probe = tempfile.mkstemp(prefix=".splash-flows-check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise TierError(f"tier root {self.root} is not writable: {_reason(err)}", tier=self.name) from None

    def stat(self, path: str) -> FileStat | None:
        full = self.path(path)
        try:
            st = os.stat(full)
        except FileNotFoundError:
            self.check_root()  # a missing root is not a missing file: say so
            return None
        except OSError as err:
            raise TierError(f"cannot stat: {_reason(err)}", tier=self.name, path=path) from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise TierError("not a regular file", tier=self.name, path=path)
        return FileStat(normalize_relpath(path), st.st_size, st.st_mtime)

    def checksum(self, path: str) -> str:
        full = self.path(path)
        try:
            with open(full, "rb", buffering=0) as fh:
                return self._hash_fd(fh.fileno())
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=self.name, path=path) from None
        except OSError as err:
            raise TierError(f"cannot read: {_reason(err)}", tier=self.name, path=path) from None

    def identify(self, paths: Sequence[str], known: Mapping[str, tuple[int, float]] | None = None,
                 ) -> list[Fingerprint | TierError]:
        """Size, mtime and checksum of each file in ``paths`` (tier-relative), in order, for registration: what
        ``stat`` then ``checksum`` then ``stat`` say, paid once per file and not three times. Each folder is
        checked once to resolve inside the root; each file is opened once without following a symlink (a
        symlinked file is checked to resolve inside the root first, as ``path`` does), ``fstat``-ed, hashed and
        ``fstat``-ed again. A file whose (size, mtime) equals ``known[path]`` is not read (``checksum`` None).
        Per file a typed error instead: ``PathEscapeError`` (refused), ``SourceMissingError``, ``TierError``
        (not a regular file, unreadable), ``SourceChangedError`` (it changed while it was read). Files are
        read in ``concurrency`` threads."""
        self.check_root()  # an unmounted root is not a batch of missing files
        folders: dict[str, Path | TierError] = {}
        known = known or {}

        def one(i: int) -> Fingerprint | TierError:
            raw = paths[i]
            try:
                path = normalize_relpath(raw, tier=self.name)
                parent, _, name = path.rpartition("/")
                return self._fingerprint(path, f"{_folder_of(self, parent, folders)}/{name}", known.get(path))
            except TierError as err:
                return err

        return self._map(one, list(range(len(paths))), self.concurrency, "identify")

    def _fingerprint(self, path: str, full: str, known: tuple[int, float] | None) -> Fingerprint:
        try:
            fd = os.open(full, _OPEN_SOURCE)
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=self.name, path=path) from None
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise TierError(f"cannot open: {_reason(err)}", tier=self.name, path=path) from None
            fd = self._open_followed(path)
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise TierError("not a regular file", tier=self.name, path=path)
            found = FileStat(path, st.st_size, st.st_mtime)
            if known is not None and known == (found.size, found.mtime):
                return Fingerprint(found, None)
            checksum = self._hash_fd(fd)
            after = os.fstat(fd)
        except OSError as err:
            raise TierError(f"cannot read: {_reason(err)}", tier=self.name, path=path) from None
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise SourceChangedError("file changed while it was being checksummed (still being written?)",
                                     tier=self.name, path=path)
        return Fingerprint(found, checksum)

    def _open_followed(self, path: str) -> int:
        """Open ``path``, a symlink, after checking that it resolves inside the root."""
        target = self.path(path)  # PathEscapeError when it points outside
        try:
            return os.open(target, _OPEN_SOURCE & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SourceMissingError("file not found (dangling symlink)", tier=self.name, path=path) from None
        except OSError as err:
            raise TierError(f"cannot open: {_reason(err)}", tier=self.name, path=path) from None

    def url(self, path: str) -> str:
        return str(self.root / normalize_relpath(path, tier=self.name))

    def rehash(self, path: str, on_chunk: Callable[[int], None] | None = None) -> str:
        """The checksum of the copy as stored on the device: its cached pages are dropped first (when
        ``verify_from_disk``), so a flipped bit on the disk is not hidden by a clean page cache. ``on_chunk`` is
        called with each chunk's size (progress, rate limit). Raises ``SourceMissingError`` / ``TierError``."""
        full = self.path(path)
        try:
            with open(full, "rb", buffering=0) as fh:
                fd = fh.fileno()
                if self.verify_from_disk and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                hasher = new_hasher(self.checksum_alg)
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := os.readv(fd, [buf]):
                    hasher.update(view[:n])
                    if on_chunk is not None:
                        on_chunk(n)
                return hasher.hexdigest()
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=self.name, path=path) from None
        except OSError as err:
            raise TierError(f"cannot read: {_reason(err)}", tier=self.name, path=path) from None

    def walk_start(self, prefix: str = "") -> Path:
        """The folder a walk of ``prefix`` starts at: the root itself (checked: an unmounted root is not an empty
        tier) or the folder ``prefix`` names under it (``path``: no escape)."""
        if prefix:
            return self.path(prefix)
        self.check_root()
        return self.root

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        """See ``Tier.walk``. Symlinks are not files of the tier and are left out silently."""
        start = self.walk_start(prefix)
        unlistable: list[str] = []
        for listing in list_tree(self.root, start, ignore):
            if listing.error is not None:
                where = listing.folder or "."
                if problems is not None:
                    problems.append(WalkProblem(where, f"cannot list folder: {listing.error}", fatal=True))
                else:
                    unlistable.append(f"{where} ({listing.error})")
                continue
            if problems is not None:
                problems += [WalkProblem(rel, why, fatal=True) for rel, why in listing.problems]
                problems += [WalkProblem(rel, f"{what}, not a regular file", fatal=False)
                             for rel, what in listing.specials]
            elif listing.problems:
                unlistable += [f"{rel} ({why})" for rel, why in listing.problems]
            for rel, st in listing.files:
                yield FileStat(rel, st.st_size, st.st_mtime)
        if unlistable:
            raise WalkIncomplete(f"walk incomplete, could not read: {'; '.join(unlistable)}", tier=self.name)

    # ------------------------------------------------------------------------------------------ copy

    def copy_from(self, source: Tier, items: Sequence[CopyItem], progress: ProgressCallback | None = None, *,
                  before_rename: RenameGate | None = None) -> list[CopyOutcome]:
        """See ``Tier.copy_from``. ``before_rename``, when given, is called once the batch's files are durable
        and verified under their temporary names, before the first of them gets its final name; it returns
        the checksum each path may be renamed with (the ledger's, once the caller's registration committed),
        and a staged file whose path is missing there or whose checksum differs is discarded instead of
        renamed. So the copies can be written while the sources' ledger transaction still runs, and still no
        final name exists for a file the ledger does not hold. If it raises, every staged file is removed
        and the error propagates."""
        if not isinstance(source, LocalTier):
            raise TierError(f"a local tier cannot copy from a {source.kind} tier ({source.name})", tier=self.name)
        source.check_root()
        self.check_root()
        return self._copy_batch(source, items, progress, before_rename)

    def copy_one(self, source: LocalTier, item: CopyItem, progress: ProgressCallback | None = None) -> CopyOutcome:
        """Copy and verify one file (a batch of one); return its result or the typed error (never raises
        TierError)."""
        return self._copy_batch(source, [item], progress)[0]

    def _copy_batch(self, source: LocalTier, items: Sequence[CopyItem], progress: ProgressCallback | None,
                    before_rename: RenameGate | None = None) -> list[CopyOutcome]:
        """The verified copy of a batch, in phases, so that what is paid per batch is paid once per batch:

        1. stage (``concurrency`` threads): copy each source to a temporary ``.part`` name while hashing it,
           check the source did not change; folders are resolved, created and listed (stale parts removed,
           names already there noted) once per folder;
        2. durable: fsync every staged file, in many threads at once (the file system commits concurrent
           fsyncs together, so a batch costs a few journal commits instead of one per file);
        3. verify (``concurrency`` threads): drop each file's now-clean pages and re-read it from the device;
        4. rename the verified files to their final names, then fsync each folder once (and the parent of
           every folder this batch created); with ``before_rename``, only the files it releases (see
           ``copy_from``).

        No final name is written before its bytes are durable and verified; a failure at any phase turns that
        item into its typed error and removes its temporary file; ``kill -9`` leaves only ``.part`` files
        (removed by the next copy of the same name). Outcomes are returned only after phase 4, so the ledger
        never records a copy whose name is not durable.
        """
        outcomes: list[CopyOutcome | None] = [None] * len(items)
        resolved: dict[int, _Where] = {}
        staged: dict[int, _Staged] = {}
        created: set[Path] = set()
        # temporary names: host and pid (a later copy removes the parts of a dead process), a random token per
        # batch and the item's index (unique within the batch; O_EXCL refuses any clash)
        part = f"{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folders = self._prepare_folders(source, items, outcomes, resolved, created)

            def stage(i: int) -> tuple[int, CopyOutcome | _Staged]:
                return i, self._stage_one(source, items[i], resolved[i], f"{part}{i}.part", folders, progress)

            todo = [i for i, out in enumerate(outcomes) if out is None]
            for i, res in self._stage_all(stage, todo, items, resolved):
                if isinstance(res, _Staged):
                    staged[i] = res
                else:
                    outcomes[i] = res
            self._sync_staged(staged, outcomes)
            self._verify_staged(staged, outcomes)
            if before_rename is not None and staged:
                self._release_staged(before_rename(), staged, outcomes)
            renamed: list[int] = []
            for i in sorted(staged):
                st_item = staged.pop(i)
                try:
                    os.rename(st_item.tmp, st_item.dst)
                except OSError as err:
                    _unlink_quietly(st_item.tmp)
                    outcomes[i] = TransferError(f"rename failed: {_reason(err)}", tier=self.name,
                                                path=st_item.result.path)
                    continue
                outcomes[i] = st_item.result
                renamed.append(i)
            self._sync_folders(outcomes, {i: resolved[i].folder for i in renamed}, created)
        finally:
            for left in staged.values():  # an unexpected error or interrupt: no temporary file outlives us
                _unlink_quietly(left.tmp)
        return [out if out is not None else TransferError("not attempted", tier=self.name, path=item.path)
                for out, item in zip(outcomes, items, strict=True)]

    def _stage_all(self, stage: Callable[[int], tuple[int, CopyOutcome | _Staged]], todo: list[int],
                   items: Sequence[CopyItem], resolved: dict[int, _Where]) -> list[tuple[int, CopyOutcome | _Staged]]:
        """Phase 1 over the batch. Large files: ``concurrency`` threads (bandwidth). Small files (sizes known
        and under ``SMALL_BUFFER``): one thread per destination folder, up to ``concurrency``: creating names in
        one folder is serialised by the file system's lock on that folder, and more threads there only spin on
        it (measured: docs/PERFORMANCE.md section 1)."""
        sizes = [items[i].size for i in todo]
        if not all(size is not None and size < SMALL_BUFFER for size in sizes):
            return self._map(stage, todo, self.concurrency, "copy")
        groups: dict[Path, list[int]] = {}
        for i in todo:
            groups.setdefault(resolved[i].folder, []).append(i)
        lists = list(groups.values())
        done = self._map(lambda g: [stage(i) for i in lists[g]], list(range(len(lists))), self.concurrency, "copy")
        return [res for group in done for res in group]

    @staticmethod
    def _map(fn: Callable[[int], _T], todo: list[int], threads: int, prefix: str) -> list[_T]:
        """``[fn(i) for i in todo]`` in up to ``threads`` threads, in order. Each thread takes the next item
        when it is free (no future per item: for small files that bookkeeping cost as much as the copy). The
        first exception is raised once every thread has stopped, so nothing runs on after the caller's
        cleanup."""
        if len(todo) <= 1 or threads <= 1:
            return [fn(i) for i in todo]
        out: list[_T | None] = [None] * len(todo)
        pending = iter(enumerate(todo))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work() -> None:
            while not errors:
                with lock:
                    nxt = next(pending, None)
                if nxt is None:
                    return
                try:
                    out[nxt[0]] = fn(nxt[1])
                except BaseException as err:  # noqa: BLE001 -- raised by the caller, as ThreadPoolExecutor.map
                    errors.append(err)
                    return

        workers = [threading.Thread(target=work, name=f"{prefix}_{n}", daemon=True)
                   for n in range(min(threads, len(todo)))]
        for w in workers:
            w.start()
        try:
            for w in workers:
                w.join()
        except BaseException as err:  # interrupted while waiting: stop handing out items, wait for the rest
            errors.append(err)
            for w in workers:
                w.join()
            raise
        if errors:
            raise errors[0]
        return out  # type: ignore[return-value]  # every slot was filled: no thread stopped early

    def _prepare_folders(self, source: LocalTier, items: Sequence[CopyItem], outcomes: list[CopyOutcome | None],
                         resolved: dict[int, _Where], created: set[Path]) -> dict[Path, _Folder]:
        """Resolve every source and destination path once (into ``resolved``; each folder checked once), then
        once per destination folder: create it (remembering which folders this batch created, for their
        parents' fsync), list it, remove ``.part`` files of this batch's names left by dead processes on this
        host and note which names are already there. Items that cannot be resolved get their error in
        ``outcomes``."""
        by_folder: dict[Path, set[str]] = {}
        src_folders: dict[str, Path | TierError] = {}
        dst_folders: dict[str, Path | TierError] = {}
        for i, item in enumerate(items):
            try:
                clean = normalize_relpath(item.path, tier=source.name)
                parent, _, name = clean.rpartition("/")
                src_folder = _folder_of(source, parent, src_folders)
                folder = _folder_of(self, parent, dst_folders)
            except TierError as err:
                outcomes[i] = err
                continue
            resolved[i] = _Where(f"{src_folder}/{name}", f"{folder}/{name}", folder, name)
            by_folder.setdefault(folder, set()).add(name)
        folders: dict[Path, _Folder] = {}
        for folder, names in by_folder.items():
            try:
                self._make_folder(folder, created)
            except OSError as err:
                folders[folder] = _Folder(TransferError(f"cannot create folder: {_reason(err)}", tier=self.name))
                continue
            try:
                names_there = self._remove_stale_parts(folder, names)
            except OSError as err:  # e.g. a file where the folder should be: that folder's files fail, not the batch
                folders[folder] = _Folder(TransferError(f"cannot list folder {folder.name}: {_reason(err)}",
                                                        tier=self.name))
                continue
            folders[folder] = _Folder(None, names_there)
        return folders

    def _make_folder(self, folder: Path, created: set[Path]) -> None:
        missing: list[Path] = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue  # a concurrent copy made it: not ours to sync (its own batch does)
            created.add(path)

    def _stage_one(self, source: LocalTier, item: CopyItem, where: _Where, part: str, folders: dict[Path, _Folder],
                   progress: ProgressCallback | None) -> CopyOutcome | _Staged:
        try:
            return self._stage(source, item, where, part, folders, progress)
        except TierError as err:
            return err
        except OSError as err:
            return TransferError(f"{_reason(err)} (copying from {source.name})", tier=self.name, path=item.path)

    def _stage(self, source: LocalTier, item: CopyItem, where: _Where, part: str, folders: dict[Path, _Folder],
               progress: ProgressCallback | None) -> CopyOutcome | _Staged:
        try:
            # the folder was checked to lie inside the root; a symlink as the last component is checked here
            src_fd = os.open(where.src, _OPEN_SOURCE)
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=source.name, path=item.path) from None
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise TransferError(f"cannot open source: {_reason(err)}", tier=source.name,
                                    path=item.path) from None
            src_fd = self._open_symlinked_source(source, item)
        try:
            st = os.fstat(src_fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise TransferError("not a regular file", tier=source.name, path=item.path)
            folder = folders[where.folder]
            if folder.error is not None:
                raise TransferError(folder.error.bare_message, tier=self.name, path=item.path)
            # a name the folder's listing did not hold cannot match (one racing in now is replaced by a copy
            # verified against the same checksum)
            if folder.names is None or where.name in folder.names:
                existing = self._matching_destination(where.dst, st.st_size, item, source, src_fd)
                if existing is not None:
                    if progress:
                        progress(item.path, st.st_size)
                    return existing
            return self._write_part(src_fd, st, where, part, item, source, progress)
        finally:
            os.close(src_fd)

    @staticmethod
    def _open_symlinked_source(source: LocalTier, item: CopyItem) -> int:
        """Open a source that is a symlink, after checking it resolves inside the source root."""
        target = source.path(item.path)  # PathEscapeError when it points outside
        try:
            return os.open(target, _OPEN_SOURCE & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SourceMissingError("file not found (dangling symlink)", tier=source.name, path=item.path) from None
        except OSError as err:
            raise TransferError(f"cannot open source: {_reason(err)}", tier=source.name, path=item.path) from None

    def _matching_destination(self, dst_path: str, size: int, item: CopyItem, source: LocalTier,
                              src_fd: int) -> CopyResult | None:
        """If the destination already holds these bytes, the verified result without writing anything."""
        try:
            dst_st = os.lstat(dst_path)  # a symlink is never taken for a copy: it is replaced by the real file
        except FileNotFoundError:
            return None
        if not stat_mod.S_ISREG(dst_st.st_mode) or dst_st.st_size != size:
            return None
        src_sum = item.checksum or self._hash_fd(src_fd)
        try:
            with open(dst_path, "rb", buffering=0, opener=_nofollow) as fh:
                dst_sum = self._hash_fd(fh.fileno())
        except OSError as err:
            raise TransferError(f"cannot read existing copy: {_reason(err)}", tier=self.name, path=item.path) from None
        if dst_sum != src_sum:
            return None
        if self.preserve_mode:
            mode = stat_mod.S_IMODE(os.fstat(src_fd).st_mode)
            if stat_mod.S_IMODE(dst_st.st_mode) != mode:
                try:
                    os.chmod(dst_path, mode)
                except OSError as err:
                    raise TransferError(f"cannot set permissions {mode:o}: {_reason(err)}", tier=self.name,
                                        path=item.path) from None
        return CopyResult(item.path, size, dst_st.st_mtime, dst_sum, skipped=True, source_checksum=src_sum)

    def _write_part(self, src_fd: int, st: os.stat_result, where: _Where, part: str, item: CopyItem,
                    source: LocalTier, progress: ProgressCallback | None) -> _Staged:
        """Phase 1 for one file: the source's bytes under a temporary name, hashed as read, mtime kept. Not yet
        durable nor verified; the caller owns the temporary file from here (and removes it on any failure)."""
        tmp = f"{where.folder}/.{where.name}{part}"
        hasher = new_hasher(self.checksum_alg)
        buf = _buffer(st.st_size)
        view = memoryview(buf)
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise TransferError(f"cannot create {os.path.basename(tmp)}: {_reason(err)}", tier=self.name,
                                path=item.path) from None
        try:
            try:
                total = 0
                while True:
                    n = os.preadv(src_fd, [buf], total)
                    if n == 0:
                        break
                    chunk = view[:n]
                    hasher.update(chunk)
                    written = 0
                    while written < n:
                        written += os.write(dst_fd, chunk[written:])
                    total += n
                    if progress:
                        progress(item.path, n)
                after = os.fstat(src_fd)
                if total != st.st_size or after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
                    raise SourceChangedError(
                        f"source changed while copying (size {st.st_size} -> {after.st_size}, read {total})",
                        tier=source.name, path=item.path)
                os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                if self.preserve_mode:  # the source's permission bits, as `cp -p` (made durable with the data)
                    os.fchmod(dst_fd, stat_mod.S_IMODE(st.st_mode))
            except OSError as err:
                raise TransferError(f"write failed: {_reason(err)}", tier=self.name, path=item.path) from None
            finally:
                os.close(dst_fd)
            src_sum = hasher.hexdigest()
            if item.checksum is not None and src_sum != item.checksum:
                raise SourceChangedError(
                    f"source checksum {src_sum} differs from the ledger's {item.checksum}: the source changed "
                    f"after it was registered", tier=source.name, path=item.path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return _Staged(tmp, where.dst, CopyResult(item.path, st.st_size, st.st_mtime, src_sum, skipped=False,
                                                  source_checksum=src_sum))

    def _sync_staged(self, staged: dict[int, _Staged], outcomes: list[CopyOutcome | None]) -> None:
        """Phase 2: make every staged file durable. A batch of more than one file first asks each file system
        holding them to write back everything at once (``syncfs``: one flush and one journal commit for the
        batch instead of one per file); then every file is ``fsync``-ed, many at once, as before. That fsync
        finds nothing left to write, and it is what reports a write-back error of that file (``syncfs`` names
        no file, so its own result is not relied on): the guarantee rests on the per-file fsync alone. A file
        that cannot be made durable is dropped."""
        if len(staged) > 1:
            _syncfs({os.path.dirname(st_item.tmp) for st_item in staged.values()})

        def sync(i: int) -> tuple[int, OSError | None]:
            try:
                fd = os.open(staged[i].tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                return i, err
            return i, None

        for i, err in self._map(sync, sorted(staged), SYNC_THREADS, "fsync"):
            if err is not None:
                bad = staged.pop(i)
                _unlink_quietly(bad.tmp)
                outcomes[i] = TransferError(f"fsync failed: {_reason(err)}", tier=self.name, path=bad.result.path)

    def _verify_staged(self, staged: dict[int, _Staged], outcomes: list[CopyOutcome | None]) -> None:
        """Phase 3: re-read every durable staged file (from the device when ``verify_from_disk``: its pages are
        clean now, so dropping them works) and compare with the hash taken while reading the source."""

        def verify(i: int) -> tuple[int, TierError | None]:
            st_item = staged[i]
            path = st_item.result.path
            try:
                fd = os.open(st_item.tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if self.verify_from_disk and hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    dst_sum = self._hash_fd(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                return i, TransferError(f"cannot re-read the copy: {_reason(err)}", tier=self.name, path=path)
            if dst_sum != st_item.result.source_checksum:
                return i, VerificationError(f"copy checksum {dst_sum} != source {st_item.result.source_checksum};"
                                            f" copy discarded", tier=self.name, path=path)
            return i, None

        for i, err in self._map(verify, sorted(staged), self.concurrency, "verify"):
            if err is not None:
                bad = staged.pop(i)
                _unlink_quietly(bad.tmp)
                outcomes[i] = err

    def _release_staged(self, registered: Mapping[str, str], staged: dict[int, _Staged],
                        outcomes: list[CopyOutcome | None]) -> None:
        """Phase 3b (``before_rename``): keep the staged files whose path ``registered`` holds with the checksum
        they were verified against; discard the others."""
        for i in sorted(staged):
            result = staged[i].result
            if registered.get(result.path) != result.source_checksum:
                _unlink_quietly(staged.pop(i).tmp)
                outcomes[i] = TransferError(
                    f"the ledger does not hold this source with checksum {result.source_checksum} (registration "
                    f"changed or failed); copy discarded", tier=self.name, path=result.path)

    def _sync_folders(self, outcomes: list[CopyOutcome | None], renamed: dict[int, Path], created: set[Path]) -> None:
        """Phase 4b: fsync each folder that received a renamed copy, once per batch, and the parent of every
        folder this batch created (so the new folder's own name is durable), before any result is returned
        (and so before the ledger calls a copy verified). A folder that cannot be synced turns the results
        of the files under it into errors."""
        folders: dict[Path, OSError | None] = dict.fromkeys(renamed.values())
        parents = {p.parent for p in created}
        for folder in sorted(set(folders) | parents, key=lambda p: len(p.parts), reverse=True):
            try:
                self._fsync_dir(folder)
            except OSError as err:
                folders[folder] = err
        failed = {f: e for f, e in folders.items() if e is not None}
        if not failed:
            return
        for i, folder in renamed.items():
            out = outcomes[i]
            assert isinstance(out, CopyResult)
            cause = failed.get(folder) or next(
                (failed[p.parent] for p in created if p.parent in failed and (p == folder or p in folder.parents)),
                None)
            if cause is not None:
                outcomes[i] = TransferError(f"folder fsync failed after rename: {_reason(cause)}", tier=self.name,
                                            path=out.path)

    def _hash_fd(self, fd: int) -> str:
        hasher = new_hasher(self.checksum_alg)
        size = os.fstat(fd).st_size
        buf = _buffer(size)
        view = memoryview(buf)
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            hasher.update(view[:n])
            offset += n
        return hasher.hexdigest()

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _remove_stale_parts(folder: Path, names: set[str]) -> frozenset[str] | None:
        """Remove ``.part`` files of ``names`` in ``folder`` left by a dead process on this host (after a
        kill -9). One listing per folder and batch; returns the names it held (None: the folder is gone)."""
        mark = f"{PART_MARK}{_hostname()}-"
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return None
        for entry in entries:
            if not (entry.startswith(".") and mark in entry and entry.endswith(".part")):
                continue
            name, _, rest = entry[1:].partition(mark)
            if name not in names:
                continue
            pid_text = rest.split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue  # that process is alive: its copy may still be running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            _unlink_quietly(folder / entry)
        return frozenset(entries)

    # ------------------------------------------------------------------------------------------ delete

    def delete(self, paths: Sequence[str]) -> list[TierError | None]:
        return [self._delete_one(p) for p in paths]

    def _delete_one(self, path: str) -> TierError | None:
        try:
            full = self.path(path)
            os.unlink(full)
        except TierError as err:
            return err
        except FileNotFoundError:
            return DeleteError("file not found (already deleted?)", tier=self.name, path=path)
        except OSError as err:
            return DeleteError(f"cannot delete: {_reason(err)}", tier=self.name, path=path)
        self._prune_empty_dirs(full.parent)
        return None

    def _prune_empty_dirs(self, folder: Path) -> None:
        root = Path(os.path.abspath(self.root))
        current = Path(os.path.abspath(folder))
        while current != root and root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return  # not empty (or gone, or busy): stop climbing
            current = current.parent
