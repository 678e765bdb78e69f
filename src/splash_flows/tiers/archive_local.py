"""The archive tier of kind ``local`` (the embedded default's ``hpss``): real tar bundles in a folder.

Same planner, manifest and verification as at NERSC, so the whole archive path runs here for real:

- a ``tar`` bundle is written as ``.<name>.splash-part-<host>-<pid>-<rand>.part`` beside its final name, each
  member read once from the source tier while it is hashed (a member whose bytes differ from the ledger's
  checksum stops the bundle: the source changed); then fsync, the pages dropped from the cache, and the
  verification: the tar's listing compared with the manifest (``compare_listing``, as ``htar -tvf`` is at
  NERSC) and every member re-read from the tar and checksummed. Only then is the manifest written beside it
  (``<name>.manifest.json``) and both renamed to their final names and the folder fsynced;
- a ``file`` bundle (``hsi cput`` at NERSC) is the verified copy of ``LocalTier``, under the bundle's name;
- a final name that exists already (a run killed after the rename, before the ledger recorded it) is verified
  again and adopted if it matches; a final name that fails verification is moved aside as
  ``<name>.corrupt-<time>`` (never deleted) and the bundle written again.

So a crash at any point leaves either no bundle or a verified one, and the next run resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from splash_flows.checksum import CHUNK, new_hasher
from splash_flows.errors import (
    SourceChangedError,
    SourceMissingError,
    TierError,
    TransferError,
    VerificationError,
)
from splash_flows.ledger.archive import BundleRecord, MemberRecord
from splash_flows.ledger.store import Ledger
from splash_flows.paths import safe_join
from splash_flows.tiers.archive import ArchiveTierBase, BundleProgress, BundleWritten, ListedMember, compare_listing
from splash_flows.tiers.base import FileStat, Tier
from splash_flows.tiers.local import PART_MARK, LocalTier, _hostname

MANIFEST_SUFFIX = ".manifest.json"


class _HashingReader:
    """A read-only file object that hashes what passes through it (tarfile copies members from it)."""

    def __init__(self, fh: IO[bytes], alg: str, progress: BundleProgress | None, path: str) -> None:
        self.fh, self.hasher, self.progress, self.path, self.count = fh, new_hasher(alg), progress, path, 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.hasher.update(data)
        self.count += len(data)
        if self.progress is not None and data:
            self.progress(self.path, len(data))
        return data


class LocalArchiveTier(ArchiveTierBase):
    """An archive tier rooted at a local folder (module doc)."""

    kind = "local"

    def __init__(self, name: str, root: Path, checksum_alg: str, *, ledger: Ledger | None,
                 verify_from_disk: bool = True) -> None:
        self.name = name
        self.root = root
        self.checksum_alg = checksum_alg
        self.ledger = ledger
        self.verify_from_disk = verify_from_disk
        self._files = LocalTier(name, root, checksum_alg, concurrency=1, verify_from_disk=verify_from_disk)

    def __repr__(self) -> str:
        return f"LocalArchiveTier({self.name!r}, {str(self.root)!r})"

    # ------------------------------------------------------------------------------------------ Tier

    def bundle_path(self, name: str) -> Path:
        return safe_join(self.root, name, tier=self.name)

    def bundle_url(self, name: str) -> str:
        return str(self.bundle_path(name))

    def url(self, path: str) -> str:
        found = self._member(path)
        if found is None:
            return f"{self.root}: (not archived) {path}"
        bundle, member = found
        return f"{self.bundle_url(bundle.name)}:{member.member}" if bundle.kind == "tar" else \
            self.bundle_url(bundle.name)

    def stat(self, path: str) -> FileStat | None:
        """The member's size from the bundle's own listing (None: not in a verified bundle, or missing from it)."""
        found = self._member(path)
        if found is None:
            return None
        bundle, member = found
        if bundle.kind == "file":
            st = self._files.stat(bundle.name)
            return None if st is None else FileStat(path, st.size, st.mtime)
        try:
            listing = {m.name: m.size for m in self.listing(bundle)}
        except SourceMissingError:
            return None
        if member.member not in listing:
            return None
        return FileStat(path, listing[member.member], 0.0)

    def checksum(self, path: str) -> str:
        """Re-read the member from its bundle and hash it."""
        found = self._member(path)
        if found is None:
            raise SourceMissingError("not in any verified bundle", tier=self.name, path=path)
        bundle, member = found
        if bundle.kind == "file":
            return self._files.checksum(bundle.name)
        sums = self._scan(bundle, names={member.member})[1]
        if member.member not in sums:
            raise SourceMissingError(f"not in bundle {bundle.name}", tier=self.name, path=path)
        return sums[member.member]

    # ------------------------------------------------------------------------------------------ bundles

    def listing(self, bundle: BundleRecord, where: Path | None = None) -> list[ListedMember]:
        """The tar's member list (names and sizes), read from its headers."""
        path = where or self.bundle_path(bundle.name)
        try:
            with tarfile.open(path, mode="r:") as tar:
                return [ListedMember(m.name, m.size) for m in tar.getmembers() if m.isfile()]
        except FileNotFoundError:
            raise SourceMissingError(f"bundle {bundle.name} not found", tier=self.name) from None
        except (OSError, tarfile.TarError) as err:
            raise VerificationError(f"bundle {bundle.name} cannot be listed: {err}", tier=self.name) from None

    def _scan(self, bundle: BundleRecord, where: Path | None = None,
              names: set[str] | None = None) -> tuple[list[ListedMember], dict[str, str]]:
        """The tar's listing and the checksum of every regular member (or of ``names`` only), in one read."""
        path = where or self.bundle_path(bundle.name)
        listing: list[ListedMember] = []
        sums: dict[str, str] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    listing.append(ListedMember(info.name, info.size))
                    if names is not None and info.name not in names:
                        continue
                    fh = tar.extractfile(info)
                    assert fh is not None
                    hasher = new_hasher(self.checksum_alg)
                    while chunk := fh.read(CHUNK):
                        hasher.update(chunk)
                    sums[info.name] = hasher.hexdigest()
        except FileNotFoundError:
            raise SourceMissingError(f"bundle {bundle.name} not found", tier=self.name) from None
        except (OSError, tarfile.TarError) as err:
            raise VerificationError(f"bundle {bundle.name} cannot be read: {err}", tier=self.name) from None
        return listing, sums

    def verify_tar(self, bundle: BundleRecord, where: Path | None = None) -> dict[str, Any]:
        """Listing compared with the manifest, then every member re-read and checksummed (VerificationError
        naming the bundle and the members otherwise). Returns the evidence."""
        listing, sums = self._scan(bundle, where)  # one pass: headers and members
        compare_listing(bundle, listing, tier=self.name)
        bad = [m.member for m in bundle.members if sums.get(m.member) != m.checksum]
        if bad:
            raise VerificationError(f"bundle {bundle.name}: {len(bad)} member(s) differ from the manifest's "
                                    f"{bundle.checksum_alg}: {', '.join(bad[:10])}", tier=self.name)
        return {"verified": "listing == manifest; every member re-read from the tar and checksummed",
                "members": len(bundle.members)}

    def write_bundle(self, source: Tier, bundle: BundleRecord,
                     progress: BundleProgress | None = None) -> BundleWritten:
        if not isinstance(source, LocalTier):
            raise TierError(f"a local archive tier reads bundles from a local tier, not {source.kind} "
                            f"({source.name})", tier=self.name)
        source.check_root()
        self._files.check_root()
        if bundle.kind == "file":
            return self._write_single(source, bundle, progress)
        final = self.bundle_path(bundle.name)
        if final.exists():
            try:
                evidence = self.verify_tar(bundle)
                self._write_manifest(bundle, final)
                return BundleWritten(final.stat().st_size, str(final), {**evidence, "adopted": True})
            except VerificationError:
                os.rename(final, final.with_name(f"{final.name}.corrupt-{int(time.time())}"))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransferError(f"bundle {bundle.name}: cannot create folder: {err.strerror}", tier=self.name) from None
        LocalTier._remove_stale_parts(final.parent, {final.name})
        tmp = final.with_name(f".{final.name}{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            self._write_tar(source, bundle, tmp, progress)
            evidence = self.verify_tar(bundle, tmp)
            self._write_manifest(bundle, final)
            os.rename(tmp, final)
            LocalTier._fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return BundleWritten(final.stat().st_size, str(final), evidence)

    def _write_tar(self, source: LocalTier, bundle: BundleRecord, tmp: Path,
                   progress: BundleProgress | None) -> None:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise TransferError(f"bundle {bundle.name}: cannot create {tmp.name}: {err.strerror}",
                                tier=self.name) from None
        with os.fdopen(fd, "wb", buffering=CHUNK) as out:
            try:
                with tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                    for m in bundle.members:
                        self._add_member(tar, source, bundle, m, progress)
                out.flush()
                os.fsync(out.fileno())
                if self.verify_from_disk and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as err:
                raise TransferError(f"bundle {bundle.name}: write failed: {err.strerror or err}",
                                    tier=self.name) from None

    def _add_member(self, tar: tarfile.TarFile, source: LocalTier, bundle: BundleRecord, m: MemberRecord,
                    progress: BundleProgress | None) -> None:
        try:
            fh = open(source.path(m.source_path), "rb", buffering=0)
        except FileNotFoundError:
            raise SourceMissingError(f"member of bundle {bundle.name}: file not found", tier=source.name,
                                     path=m.source_path) from None
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_size != m.size:
                raise SourceChangedError(f"member of bundle {bundle.name}: size {st.st_size} != the ledger's "
                                         f"{m.size}", tier=source.name, path=m.source_path)
            info = tarfile.TarInfo(m.member)
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
            reader = _HashingReader(fh, self.checksum_alg, progress, m.source_path)
            tar.addfile(info, reader)
            if reader.count != m.size or reader.hasher.hexdigest() != m.checksum:
                raise SourceChangedError(f"member of bundle {bundle.name}: {self.checksum_alg} "
                                         f"{reader.hasher.hexdigest()} != the ledger's {m.checksum} (the source "
                                         f"changed)", tier=source.name, path=m.source_path)

    def _write_manifest(self, bundle: BundleRecord, final: Path) -> None:
        path = final.with_name(final.name + MANIFEST_SUFFIX)
        tmp = path.with_name(f".{path.name}{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}.part")
        data = json.dumps(bundle.manifest(), indent=1, ensure_ascii=False).encode("utf-8", "surrogateescape")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)

    def _write_single(self, source: LocalTier, bundle: BundleRecord,
                      progress: BundleProgress | None) -> BundleWritten:
        (m,) = bundle.members
        final = self.bundle_path(bundle.name)
        if final.exists() and final.stat().st_size == m.size and self._files.checksum(bundle.name) == m.checksum:
            return BundleWritten(m.size, str(final), {"verified": "re-read and checksummed", "adopted": True})
        src = source.path(m.source_path)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceMissingError("file not found", tier=source.name, path=m.source_path) from None
        try:
            LocalTier._remove_stale_parts(final.parent, {final.name})
            size = self._copy_alone(src_fd, final, m.source_path, m.checksum, source, progress)
        finally:
            os.close(src_fd)
        return BundleWritten(size, str(final), {"verified": "copied alone (hsi cput), re-read and "
                                                                   "checksummed"})

    def _copy_alone(self, src_fd: int, final: Path, path: str, checksum: str, source: Tier,
                    progress: BundleProgress | None) -> int:
        """A file archived alone: written under a temporary name while hashed, mtime kept, fsynced, dropped from
        the page cache and re-read from the device, compared with the ledger's checksum, then renamed and its
        folder fsynced. Returns its size; a changed source or a copy that does not verify raises (no file left)."""
        st = os.fstat(src_fd)
        tmp = final.with_name(f".{final.name}{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}.part")
        hasher = new_hasher(self._files.checksum_alg)
        try:
            with open(tmp, "xb") as out:
                while chunk := os.read(src_fd, CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(path, len(chunk))
                out.flush()
                os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(out.fileno())
            if hasher.hexdigest() != checksum:
                raise SourceChangedError(f"source checksum {hasher.hexdigest()} differs from the ledger's {checksum}",
                                         tier=source.name, path=path)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                again = new_hasher(self._files.checksum_alg)
                while chunk := os.read(fd, CHUNK):
                    again.update(chunk)
            finally:
                os.close(fd)
            if again.hexdigest() != checksum:
                raise VerificationError(f"copy checksum {again.hexdigest()} != {checksum}; copy discarded",
                                        tier=self.name, path=path)
            os.rename(tmp, final)
            LocalTier._fsync_dir(final.parent)
        except OSError as err:
            raise TransferError(f"cannot archive {path} alone: {err.strerror or err}", tier=self.name,
                                path=path) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return st.st_size

    def restore(self, bundle: BundleRecord, members: Sequence[MemberRecord], dest: Path) -> list[Path]:
        out: list[Path] = []
        if bundle.kind == "file":
            (m,) = bundle.members
            sources = {m.member: self.bundle_path(bundle.name)}
        else:
            sources = {}
        wanted = {m.member: m for m in members}
        try:
            if bundle.kind == "file":
                for name, path in sources.items():
                    with open(path, "rb") as single:
                        out.append(self._restore_one(single, bundle, wanted[name], dest))
            else:
                with tarfile.open(self.bundle_path(bundle.name), mode="r:") as tar:
                    found = set()
                    for info in tar:
                        if info.name in wanted and info.isfile():
                            fh = tar.extractfile(info)
                            assert fh is not None
                            out.append(self._restore_one(fh, bundle, wanted[info.name], dest))
                            found.add(info.name)
                    missing = sorted(set(wanted) - found)
                    if missing:
                        raise VerificationError(f"bundle {bundle.name}: member(s) not in the tar: "
                                                f"{', '.join(missing)}", tier=self.name)
        except FileNotFoundError:
            raise SourceMissingError(f"bundle {bundle.name} not found", tier=self.name) from None
        except tarfile.TarError as err:
            raise VerificationError(f"bundle {bundle.name} cannot be read: {err}", tier=self.name) from None
        return out

    def _restore_one(self, fh: IO[bytes], bundle: BundleRecord, m: MemberRecord, dest: Path) -> Path:
        target = safe_join(dest, m.source_path, tier="restore")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}{PART_MARK}{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}.part")
        hasher = new_hasher(self.checksum_alg)
        try:
            with open(tmp, "wb") as out:
                while chunk := fh.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != m.checksum:
                raise VerificationError(f"restored from bundle {bundle.name}: {self.checksum_alg} "
                                        f"{hasher.hexdigest()} != the ledger's {m.checksum}; not restored",
                                        tier=self.name, path=m.source_path)
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return target
