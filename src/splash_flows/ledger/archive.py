"""Ledger reads and writes for the tape archive: planned bundles and their manifests, verification, jobs,
catalogue datablock state and restore drills.

Why the ledger, not the archive tier, is the record of a bundle: a bundle is planned (recorded with its
members) before a byte is written, in one transaction, and a file can be a member of one bundle per archive
tier only (``uq_archive_members_file``). So a run killed at any point finds its bundle planned and writes it
again under the same name; two planners racing cannot put one file in two bundles (the loser's transaction
fails and it plans again from what is left). Marking a bundle verified records a verified copy of every member
on the archive tier in the same transaction, which is what the retention rules read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError

from splash_flows.errors import LedgerError
from splash_flows.ledger import reads
from splash_flows.ledger.models import (
    ArchiveBundle,
    ArchiveMember,
    BundleState,
    Copy,
    CopyState,
    Event,
    SourceFile,
    utcnow,
)
from splash_flows.ledger.reads import Drill
from splash_flows.ledger.store import Ledger, in_chunks

if TYPE_CHECKING:  # the plan brings the 7.3.3 metadata parsers (numpy): `status` reads drills without them
    from splash_flows.services.archive.plan import ArchivableFile, Plan

ARCHIVED = "archived"            # event kind: a file's bundle was verified on the archive tier
ARCHIVE_FAILED = "archive_failed"
RESTORE_DRILL = reads.RESTORE_DRILL  # event kind: the result of one restore drill


@dataclass(frozen=True)
class MemberRecord:
    """One manifest line: the file, its member name in the bundle, size and checksum."""

    file_id: int
    member: str
    size: int
    checksum: str
    source_path: str


@dataclass(frozen=True)
class BundleRecord:
    """A bundle as the ledger holds it, with its manifest."""

    id: int
    tier: str
    name: str
    kind: str
    proposal: str
    cycle: str
    part: int
    state: str
    size: int
    packed_size: int | None
    checksum_alg: str
    manifest_digest: str
    attempts: int
    url: str | None
    job_id: str | None
    job_script: str | None
    job_log: str | None
    error: str | None
    catalogue_state: str | None
    catalogue_error: str | None
    verified_at: datetime | None
    members: tuple[MemberRecord, ...]

    def manifest(self) -> dict[str, Any]:
        """The manifest as written beside the bundle: member, size, checksum."""
        return {"bundle": self.name, "checksum_alg": self.checksum_alg,
                "members": [{"member": m.member, "size": m.size, "checksum": m.checksum} for m in self.members]}


def manifest_digest(members: Sequence[tuple[str, int, str]]) -> str:
    """SHA-256 of the (member, size, checksum) lines: fixes a bundle's contents."""
    text = json.dumps(sorted(members), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _record(b: ArchiveBundle, members: Sequence[tuple[ArchiveMember, str]]) -> BundleRecord:
    return BundleRecord(b.id, b.tier, b.name, b.kind, b.proposal, b.cycle, b.part, b.state, b.size, b.packed_size,
                        b.checksum_alg, b.manifest_digest, b.attempts, b.url, b.job_id, b.job_script, b.job_log,
                        b.error, b.catalogue_state, b.catalogue_error, b.verified_at,
                        tuple(MemberRecord(m.file_id, m.member, m.size, m.checksum, path) for m, path in members))


def archivable_files(ledger: Ledger, *, source_tier: str, archive_tier: str, limit: int = 100_000
                     ) -> list[ArchivableFile]:
    """Files verified on ``source_tier`` (with the file's current checksum) that are in no bundle of
    ``archive_tier`` yet, oldest id first."""
    member = select(ArchiveMember.id).where(ArchiveMember.tier == archive_tier,
                                            ArchiveMember.file_id == SourceFile.id).exists()
    q = (select(SourceFile).join(Copy, and_(Copy.file_id == SourceFile.id, Copy.tier == source_tier))
         .where(Copy.state == CopyState.VERIFIED, Copy.checksum == SourceFile.checksum, ~member)
         .order_by(SourceFile.id).limit(limit))
    from splash_flows.services.archive.plan import ArchivableFile

    with ledger.session() as sess:
        return [ArchivableFile(f.id, f.path, f.size, f.checksum, datetime.fromtimestamp(f.mtime, UTC))
                for f in sess.scalars(q)]


def next_parts(ledger: Ledger, tier: str) -> dict[tuple[str, str], int]:
    """The first free part number of each (proposal, cycle) group on ``tier``."""
    q = (select(ArchiveBundle.proposal, ArchiveBundle.cycle, func.max(ArchiveBundle.part))
         .where(ArchiveBundle.tier == tier).group_by(ArchiveBundle.proposal, ArchiveBundle.cycle))
    with ledger.session() as sess:
        return {(p, c): int(n or 0) + 1 for p, c, n in sess.execute(q)}


def record_plan(ledger: Ledger, tier: str, plan: Plan, checksum_alg: str) -> list[int] | None:
    """Record every planned bundle with its members in ONE transaction; their ids, or None when a concurrent
    planner recorded some of the same files or names first (plan again from what is left)."""
    if not plan.bundles:
        return []
    now = utcnow()
    try:
        with ledger.session() as sess:
            ids = []
            for b in plan.bundles:
                lines = [(m.path, m.size, m.checksum) for m in b.members]
                row = ArchiveBundle(tier=tier, name=b.name, kind=b.kind, proposal=b.proposal, cycle=b.cycle,
                                    part=b.part, state=BundleState.PLANNED, size=b.size,
                                    packed_size=b.packed_size if b.kind == "tar" else b.size,
                                    member_count=len(b.members), checksum_alg=checksum_alg,
                                    manifest_digest=manifest_digest(lines), attempts=0, created_at=now,
                                    updated_at=now)
                sess.add(row)
                sess.flush()
                for m in b.members:
                    sess.add(ArchiveMember(bundle_id=row.id, tier=tier, file_id=m.file_id, member=m.path,
                                           size=m.size, checksum=m.checksum))
                ids.append(row.id)
            return ids
    except IntegrityError:
        return None


def _load(sess: Any, rows: Sequence[ArchiveBundle]) -> list[BundleRecord]:
    out = []
    for b in rows:
        q = (select(ArchiveMember, SourceFile.path).join(SourceFile, SourceFile.id == ArchiveMember.file_id)
             .where(ArchiveMember.bundle_id == b.id).order_by(ArchiveMember.member))
        out.append(_record(b, [(m, p) for m, p in sess.execute(q)]))
    return out


def bundles(ledger: Ledger, tier: str, *, states: Sequence[str] | None = None,
            ids: Sequence[int] | None = None) -> list[BundleRecord]:
    """Bundles of ``tier`` (optionally in ``states`` / with ``ids``), by name, with their manifests."""
    q = select(ArchiveBundle).where(ArchiveBundle.tier == tier).order_by(ArchiveBundle.name)
    if states is not None:
        q = q.where(ArchiveBundle.state.in_(list(states)))
    if ids is not None:
        q = q.where(ArchiveBundle.id.in_(list(ids)))
    with ledger.session() as sess:
        return _load(sess, list(sess.scalars(q)))


def bundle_of(ledger: Ledger, tier: str, file_id: int) -> tuple[BundleRecord, MemberRecord] | None:
    """The bundle holding ``file_id`` on ``tier`` and the file's manifest line (None: not in a bundle)."""
    with ledger.session() as sess:
        m = sess.scalars(select(ArchiveMember).where(ArchiveMember.tier == tier,
                                                     ArchiveMember.file_id == file_id)).first()
        if m is None:
            return None
        b = sess.get(ArchiveBundle, m.bundle_id)
        assert b is not None
        record = _load(sess, [b])[0]
    return record, next(x for x in record.members if x.file_id == file_id)


def bundle_of_path(ledger: Ledger, tier: str, path: str) -> tuple[BundleRecord, MemberRecord] | None:
    """``bundle_of`` for a file known by its source-relative path (any source tier)."""
    with ledger.session() as sess:
        fid = sess.scalar(select(ArchiveMember.file_id).join(SourceFile, SourceFile.id == ArchiveMember.file_id)
                          .where(ArchiveMember.tier == tier, SourceFile.path == path))
    return None if fid is None else bundle_of(ledger, tier, int(fid))


def record_job(ledger: Ledger, bundle_id: int, *, job_id: str | None, script: str | None,
               log: str | None, state: str = BundleState.SUBMITTED) -> None:
    """Record the job writing a bundle (before polling it), so a restarted run polls it instead of resubmitting."""
    with ledger.session() as sess:
        b = sess.get(ArchiveBundle, bundle_id)
        if b is None:
            raise LedgerError(f"no archive bundle {bundle_id}")
        b.job_id, b.job_script, b.job_log, b.state, b.updated_at = job_id, script, log, state, utcnow()


def mark_verified(ledger: Ledger, bundle: BundleRecord, *, packed_size: int, url: str,
                  evidence: dict[str, Any], catalogue: bool) -> None:
    """The bundle passed verification: state ``verified`` and a verified copy of every member on the archive
    tier (with the bundle in each file's event), in one transaction. Idempotent."""
    now = utcnow()
    with ledger.session() as sess:
        b = sess.get(ArchiveBundle, bundle.id)
        if b is None:
            raise LedgerError(f"no archive bundle {bundle.id}")
        b.state, b.packed_size, b.url, b.error, b.verified_at, b.updated_at = (
            BundleState.VERIFIED, packed_size, url, None, now, now)
        if catalogue and b.catalogue_state is None:
            b.catalogue_state = "pending"
        ids = [m.file_id for m in bundle.members]
        existing: dict[int, Copy] = {}
        for chunk in in_chunks(ids):
            existing.update({c.file_id: c for c in sess.scalars(
                select(Copy).where(Copy.tier == bundle.tier, Copy.file_id.in_(chunk)))})
        for m in bundle.members:
            copy = existing.get(m.file_id)
            if copy is None:
                copy = Copy(file_id=m.file_id, tier=bundle.tier, updated_at=now)
                sess.add(copy)
            copy.state, copy.size, copy.checksum, copy.verified_at, copy.error, copy.updated_at = (
                CopyState.VERIFIED, m.size, m.checksum, now, None, now)
            sess.add(Event(at=now, file_id=m.file_id, path=m.source_path, tier=bundle.tier, kind=ARCHIVED,
                           detail={"bundle": bundle.name, "member": m.member, "size": m.size,
                                   "checksum_alg": bundle.checksum_alg, "checksum": m.checksum, **evidence}))


def mark_failed(ledger: Ledger, bundle: BundleRecord, error: str) -> None:
    """The attempt failed: state ``failed`` with the reason (the next run tries the same bundle again)."""
    now = utcnow()
    with ledger.session() as sess:
        sess.execute(update(ArchiveBundle).where(ArchiveBundle.id == bundle.id)
                     .values(state=BundleState.FAILED, error=error, updated_at=now))
        sess.add(Event(at=now, file_id=None, path=bundle.name, tier=bundle.tier, kind=ARCHIVE_FAILED,
                       detail={"bundle": bundle.name, "reason": error}))


def bump_attempts(ledger: Ledger, bundle_id: int) -> None:
    with ledger.session() as sess:
        sess.execute(update(ArchiveBundle).where(ArchiveBundle.id == bundle_id)
                     .values(attempts=ArchiveBundle.attempts + 1, updated_at=utcnow()))


def set_catalogue_state(ledger: Ledger, bundle_id: int, state: str, error: str | None = None) -> None:
    """``pending`` / ``catalogued`` / ``failed`` for the bundle's datablocks."""
    with ledger.session() as sess:
        sess.execute(update(ArchiveBundle).where(ArchiveBundle.id == bundle_id)
                     .values(catalogue_state=state, catalogue_error=error, updated_at=utcnow()))


def record_drill(ledger: Ledger, *, ok: bool, path: str | None, bundle: str | None, detail: dict[str, Any]) -> None:
    """Record one restore drill's result (an event; ``last_drill`` reads the newest)."""
    with ledger.session() as sess:
        sess.add(Event(at=utcnow(), file_id=None, path=path, tier=None, kind=RESTORE_DRILL,
                       detail={"ok": ok, "bundle": bundle, **detail}))


def last_drill(ledger: Ledger) -> Drill | None:
    """The newest restore drill (its time, file and detail), or None (``reads.last_drill``, which ``status``
    runs too)."""
    with ledger.reader() as reader:
        return reads.last_drill(reader)


def counts(ledger: Ledger, tier: str) -> dict[str, int]:
    """Bundles per state on ``tier``."""
    with ledger.session() as sess:
        rows = sess.execute(select(ArchiveBundle.state, func.count()).where(ArchiveBundle.tier == tier)
                            .group_by(ArchiveBundle.state))
        return {str(s): int(n) for s, n in rows}


def scans_of_files(ledger: Ledger, file_ids: Sequence[int]) -> dict[int, tuple[str, str, str | None]]:
    """For each file the catalogue step has seen: (scan key, scan state, pid)."""
    from splash_flows.ledger.models import CatalogueFile, CatalogueScan

    out: dict[int, tuple[str, str, str | None]] = {}
    with ledger.session() as sess:
        for chunk in in_chunks(list(file_ids)):
            q = (select(CatalogueFile.file_id, CatalogueScan.scan_key, CatalogueScan.state, CatalogueScan.pid)
                 .join(CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id)
                 .where(CatalogueFile.file_id.in_(chunk)))
            out.update({int(fid): (key, state, pid) for fid, key, state, pid in sess.execute(q)})
    return out


def archived_file_ids(ledger: Ledger, tier: str) -> list[int]:
    """Ids of every file in a verified bundle of ``tier`` (for the restore drill's random pick)."""
    q = (select(ArchiveMember.file_id).join(ArchiveBundle, ArchiveBundle.id == ArchiveMember.bundle_id)
         .where(ArchiveMember.tier == tier, ArchiveBundle.state == BundleState.VERIFIED)
         .order_by(ArchiveMember.file_id))
    with ledger.session() as sess:
        return [int(x) for x in sess.scalars(q)]


def files_of_scan_pid(ledger: Ledger, pid: str) -> list[tuple[int, str]]:
    """(file id, source path) of the files of the catalogued scan with this pid."""
    from splash_flows.ledger.models import CatalogueFile, CatalogueScan

    q = (select(SourceFile.id, SourceFile.path).join(CatalogueFile, CatalogueFile.file_id == SourceFile.id)
         .join(CatalogueScan, CatalogueScan.id == CatalogueFile.scan_id).where(CatalogueScan.pid == pid)
         .order_by(SourceFile.path))
    with ledger.session() as sess:
        return [(int(i), str(p)) for i, p in sess.execute(q)]


def mtimes(ledger: Ledger, file_ids: Sequence[int]) -> dict[int, float]:
    """Acquisition time (source mtime) of each file."""
    out: dict[int, float] = {}
    with ledger.session() as sess:
        for chunk in in_chunks(list(file_ids)):
            out.update({int(i): float(t) for i, t in sess.execute(
                select(SourceFile.id, SourceFile.mtime).where(SourceFile.id.in_(chunk)))})
    return out


def files_under(ledger: Ledger, source_tier: str, prefix: str) -> list[tuple[int, str]]:
    """(file id, path) of the files of ``source_tier`` whose path starts with ``prefix``."""
    q = (select(SourceFile.id, SourceFile.path)
         .where(SourceFile.source_tier == source_tier, SourceFile.path.startswith(prefix, autoescape=True))
         .order_by(SourceFile.path))
    with ledger.session() as sess:
        return [(int(i), str(p)) for i, p in sess.execute(q)]
