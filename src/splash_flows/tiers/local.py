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
import os
import secrets
import socket
import stat as stat_mod
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
    ProgressCallback,
    Tier,
    WalkProblem,
)

PART_MARK = ".splash-part-"


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
    (nothing else is filled in); ``problems``: entries that could not be stat'ed, with why."""

    folder: str
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    specials: list[tuple[str, str]] = field(default_factory=list)   # (path, what it is: "a FIFO", ...)
    problems: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def list_tree(root: Path, start: Path | None = None,
              ignore: Callable[[str], bool] | None = None) -> Iterator[FolderListing]:
    """Walk ``start`` (default ``root``) depth-first, one ``FolderListing`` per folder, folders and files in
    name order, never following symlinks. ``ignore(name)`` True leaves an entry out (a folder with all beneath
    it). Our own ``.part`` files are always left out. A folder or file that vanished is skipped quietly; any
    other error is reported in the listing."""
    base = os.path.abspath(root)
    stack = [os.path.abspath(start if start is not None else root)]
    while stack:
        folder = stack.pop()
        rel_folder = os.path.relpath(folder, base).replace(os.sep, "/")
        listing = FolderListing("" if rel_folder == "." else rel_folder)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # vanished during the walk
        except OSError as err:
            listing.error = _reason(err)
            yield listing
            continue
        subfolders: list[str] = []
        prefix = f"{listing.folder}/" if listing.folder else ""
        for entry in entries:
            if _is_part(entry.name) or (ignore is not None and ignore(entry.name)):
                continue
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between listing and stat
            except OSError as err:
                listing.problems.append((rel, f"cannot stat: {_reason(err)}"))
                continue
            if stat_mod.S_ISREG(st.st_mode):
                listing.files.append((rel, st))
            elif stat_mod.S_ISDIR(st.st_mode):
                subfolders.append(entry.path)
            elif stat_mod.S_ISLNK(st.st_mode):
                listing.symlinks.append(rel)
            else:
                listing.specials.append((rel, file_kind(st.st_mode)))
        stack.extend(reversed(subfolders))
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

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        """See ``Tier.walk``. Symlinks are not files of the tier and are left out silently."""
        if prefix:
            start = self.path(prefix)
        else:
            self.check_root()  # an unmounted root is not an empty tier
            start = self.root
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

    def copy_from(self, source: Tier, items: Sequence[CopyItem],
                  progress: ProgressCallback | None = None) -> list[CopyOutcome]:
        if not isinstance(source, LocalTier):
            raise TierError(f"a local tier cannot copy from a {source.kind} tier ({source.name})", tier=self.name)
        source.check_root()
        self.check_root()

        def one(item: CopyItem) -> CopyOutcome:
            return self.copy_one(source, item, progress, sync_folder=False)

        if len(items) <= 1 or self.concurrency == 1:
            outcomes = [one(item) for item in items]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)),
                                    thread_name_prefix=f"copy-{self.name}") as pool:
                outcomes = list(pool.map(one, items))
        return self._sync_folders(outcomes)

    def _sync_folders(self, outcomes: list[CopyOutcome]) -> list[CopyOutcome]:
        """fsync each folder that received a renamed copy, once per batch rather than once per file, before any
        result is returned (and so before the ledger calls a copy verified). A folder that cannot be synced
        turns its files' results into errors."""
        folders: dict[Path, OSError | None] = {}
        for out in outcomes:
            if isinstance(out, CopyResult) and not out.skipped:
                folders.setdefault(self.path(out.path).parent, None)
        for folder in folders:
            try:
                self._fsync_dir(folder)
            except OSError as err:
                folders[folder] = err
        failed = {f: e for f, e in folders.items() if e is not None}
        if not failed:
            return outcomes
        result: list[CopyOutcome] = []
        for out in outcomes:
            cause = failed.get(self.path(out.path).parent) if isinstance(out, CopyResult) and not out.skipped else None
            result.append(out if cause is None or not isinstance(out, CopyResult) else TransferError(
                f"folder fsync failed after rename: {_reason(cause)}", tier=self.name, path=out.path))
        return result

    def copy_one(self, source: LocalTier, item: CopyItem, progress: ProgressCallback | None = None, *,
                 sync_folder: bool = True) -> CopyOutcome:
        """Copy and verify one file; return its result or the typed error (never raises TierError).
        ``sync_folder=False`` leaves the folder fsync to the caller (``copy_from`` does it once per folder)."""
        try:
            return self._copy_one(source, item, progress, sync_folder)
        except TierError as err:
            return err
        except OSError as err:
            return TransferError(f"{_reason(err)} (copying from {source.name})", tier=self.name, path=item.path)

    def _copy_one(self, source: LocalTier, item: CopyItem, progress: ProgressCallback | None,
                  sync_folder: bool) -> CopyResult:
        src_path = source.path(item.path)
        dst_path = self.path(item.path)
        try:
            src_fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=source.name, path=item.path) from None
        except OSError as err:
            raise TransferError(f"cannot open source: {_reason(err)}", tier=source.name, path=item.path) from None
        try:
            st = os.fstat(src_fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise TransferError("not a regular file", tier=source.name, path=item.path)
            existing = self._matching_destination(dst_path, st.st_size, item, source, src_fd)
            if existing is not None:
                if progress:
                    progress(item.path, st.st_size)
                return existing
            self._remove_stale_parts(dst_path)
            return self._write_verified(src_fd, st, dst_path, item, source, progress, sync_folder)
        finally:
            os.close(src_fd)

    def _matching_destination(self, dst_path: Path, size: int, item: CopyItem, source: LocalTier,
                              src_fd: int) -> CopyResult | None:
        """If the destination already holds these bytes, the verified result without writing anything."""
        try:
            dst_st = os.stat(dst_path)
        except FileNotFoundError:
            return None
        if not stat_mod.S_ISREG(dst_st.st_mode) or dst_st.st_size != size:
            return None
        src_sum = item.checksum or self._hash_fd(src_fd)
        try:
            with open(dst_path, "rb", buffering=0) as fh:
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

    def _write_verified(self, src_fd: int, st: os.stat_result, dst_path: Path, item: CopyItem,
                        source: LocalTier, progress: ProgressCallback | None, sync_folder: bool) -> CopyResult:
        try:
            dst_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransferError(f"cannot create folder: {_reason(err)}", tier=self.name, path=item.path) from None
        tmp = dst_path.with_name(f".{dst_path.name}{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}.part")
        hasher = new_hasher(self.checksum_alg)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise TransferError(f"cannot create {tmp.name}: {_reason(err)}", tier=self.name, path=item.path) from None
        try:
            try:
                os.lseek(src_fd, 0, os.SEEK_SET)
                total = 0
                while True:
                    n = os.readv(src_fd, [buf])
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
                os.fsync(dst_fd)
                if self.verify_from_disk and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(dst_fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as err:
                raise TransferError(f"write failed: {_reason(err)}", tier=self.name, path=item.path) from None
            finally:
                os.close(dst_fd)
            src_sum = hasher.hexdigest()
            if item.checksum is not None and src_sum != item.checksum:
                raise SourceChangedError(
                    f"source checksum {src_sum} differs from the ledger's {item.checksum}: the source changed "
                    f"after it was registered", tier=source.name, path=item.path)
            try:
                with open(tmp, "rb", buffering=0) as fh:
                    dst_sum = self._hash_fd(fh.fileno())
            except OSError as err:
                raise TransferError(f"cannot re-read the copy: {_reason(err)}", tier=self.name,
                                    path=item.path) from None
            if dst_sum != src_sum:
                raise VerificationError(f"copy checksum {dst_sum} != source {src_sum}; copy discarded",
                                        tier=self.name, path=item.path)
            try:
                if self.preserve_mode:
                    os.chmod(tmp, stat_mod.S_IMODE(st.st_mode))
                os.rename(tmp, dst_path)
                if sync_folder:
                    self._fsync_dir(dst_path.parent)
            except OSError as err:
                raise TransferError(f"rename failed: {_reason(err)}", tier=self.name, path=item.path) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return CopyResult(item.path, st.st_size, st.st_mtime, dst_sum, skipped=False, source_checksum=src_sum)

    def _hash_fd(self, fd: int) -> str:
        hasher = new_hasher(self.checksum_alg)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        os.lseek(fd, 0, os.SEEK_SET)
        while n := os.readv(fd, [buf]):
            hasher.update(view[:n])
        return hasher.hexdigest()

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _remove_stale_parts(dst_path: Path) -> None:
        """Remove ``.part`` files of this name left by a dead process on this host (after a kill -9)."""
        prefix = f".{dst_path.name}{PART_MARK}{_hostname()}-"
        try:
            names = os.listdir(dst_path.parent)
        except FileNotFoundError:
            return
        for name in names:
            if not (name.startswith(prefix) and name.endswith(".part")):
                continue
            pid_text = name[len(prefix):].split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue  # that process is alive: its copy may still be running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst_path.parent / name)

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
