"""The archive run, its catalogue step, restore and the restore drill: plain functions over a ``Context``.

``execute_archive`` (behind ``splash-flows archive --execute`` and the ``archive_733`` flow):

1. plan: the archivable files (verified on ``archive.source``, in no bundle yet) are grouped by the planner
   and the new bundles recorded with their manifests in one transaction (a concurrent planner that got some
   of the same files first makes this one plan again from what is left);
2. write: every bundle not yet verified (``planned``, ``failed``, or ``submitted`` by an earlier run that
   died) is written and verified by the archive tier, then marked verified together with a verified copy of
   each member on the archive tier -- the copies the retention rules read (cfs is due once hpss holds a
   verified copy). A failure marks the bundle failed with its reason, the others go on, and the run fails at
   the end listing every failed bundle;
3. catalogue: each verified bundle becomes a datablock on every dataset it holds, and the dataset's location
   history gains the archive tier. An outage leaves the archive done and the bundle's datablocks
   ``pending``; the next run (or ``catalog retry``) adds them.
"""

from __future__ import annotations

import logging
import posixpath
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from splash_flows.catalogue.base import DatablockDoc, DataFileDoc, LocationDoc
from splash_flows.context import Context
from splash_flows.errors import (
    ArchiveJobPending,
    BatchError,
    CatalogueError,
    CatalogueUnavailable,
    ConfigError,
    SplashFlowsError,
    TierError,
    VerificationError,
)
from splash_flows.ledger import archive as la
from splash_flows.ledger.models import BundleState
from splash_flows.services.archive.plan import Plan, PlanLimits, plan_bundles
from splash_flows.tiers.archive import ArchiveTier, BundleProgress

log = logging.getLogger(__name__)
OPEN_STATES = (BundleState.PLANNED, BundleState.FAILED, BundleState.SUBMITTED)
# progress(event, bundle name, bytes): "start" (bytes = bundle size), "bytes" (done), "done", "failed"
ArchiveProgress = Callable[[str, str, int], None]


def archive_tier(ctx: Context) -> ArchiveTier:
    """The configured archive tier (ConfigError when the archive is not configured)."""
    cfg = ctx.config
    if not cfg.archive_enabled():
        raise ConfigError(f"the archive is not configured: archive.tier {cfg.archive.tier!r} and archive.source "
                          f"{cfg.archive.source!r} must both be tiers ({', '.join(cfg.tiers)})")
    tier = ctx.tier(cfg.archive.tier)
    if not isinstance(tier, ArchiveTier):
        raise ConfigError(f"tier {cfg.archive.tier} cannot hold bundles (kind {tier.kind})")
    return tier


def limits(ctx: Context) -> PlanLimits:
    a = ctx.config.archive
    return PlanLimits(a.bundle_target_bytes, a.bundle_max_bytes, a.single_file_bytes)


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class ArchivePlan:
    """What ``--execute`` would do now: bundles already recorded but not verified, and new ones."""

    open: list[la.BundleRecord] = field(default_factory=list)
    new: Plan = field(default_factory=Plan)
    verified: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"open": [_bundle_dict(b) for b in self.open],
                "new": [{"name": b.name, "kind": b.kind, "proposal": b.proposal, "cycle": b.cycle,
                         "files": len(b.members), "size": b.size, "packed_size": b.packed_size,
                         "why_alone": b.why_alone} for b in self.new.bundles],
                "verified_bundles": self.verified}


def _bundle_dict(b: la.BundleRecord) -> dict[str, Any]:
    return {"name": b.name, "kind": b.kind, "state": b.state, "proposal": b.proposal, "cycle": b.cycle,
            "files": len(b.members), "size": b.size, "packed_size": b.packed_size, "url": b.url,
            "attempts": b.attempts, "error": b.error, "job_id": b.job_id, "job_log": b.job_log,
            "catalogue": b.catalogue_state, "verified_at": b.verified_at}


def plan_archive(ctx: Context) -> ArchivePlan:
    """The plan without recording anything (``archive --plan``)."""
    tier = archive_tier(ctx)
    a = ctx.config.archive
    files = la.archivable_files(ctx.ledger, source_tier=a.source, archive_tier=tier.name)
    new = plan_bundles(files, limits(ctx), zone=ctx.config.timezone, next_part=la.next_parts(ctx.ledger, tier.name))
    return ArchivePlan(open=la.bundles(ctx.ledger, tier.name, states=OPEN_STATES), new=new,
                       verified=la.counts(ctx.ledger, tier.name).get(BundleState.VERIFIED, 0))


def record_new_bundles(ctx: Context) -> list[int]:
    """Plan the archivable files and record the new bundles (idempotent: files in a bundle are not archivable)."""
    tier = archive_tier(ctx)
    a = ctx.config.archive
    for _ in range(5):
        files = la.archivable_files(ctx.ledger, source_tier=a.source, archive_tier=tier.name)
        plan = plan_bundles(files, limits(ctx), zone=ctx.config.timezone,
                            next_part=la.next_parts(ctx.ledger, tier.name))
        ids = la.record_plan(ctx.ledger, tier.name, plan, ctx.config.checksum)
        if ids is not None:
            return ids
    raise SplashFlowsError("archive planning kept conflicting with another planner; run it again")


# ---------------------------------------------------------------------------------------------- execute


@dataclass
class ArchiveReport:
    """What one archive run did."""

    planned: int = 0
    verified: list[str] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)
    bytes: int = 0
    files: int = 0
    catalogued: list[str] = field(default_factory=list)
    catalogue_pending: dict[str, str] = field(default_factory=dict)
    catalogue_failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.verified)} bundle(s) verified ({self.files} file(s), {self.bytes} bytes)"]
        if self.planned:
            parts.append(f"{self.planned} newly planned")
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED")
        if self.catalogue_pending:
            parts.append(f"{len(self.catalogue_pending)} datablock(s) pending (catalogue unavailable)")
        if self.catalogue_failed:
            parts.append(f"{len(self.catalogue_failed)} datablock(s) refused by the catalogue")
        return "archive: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"planned": self.planned, "verified": self.verified, "files": self.files, "bytes": self.bytes,
                "failed": {k: str(v) for k, v in self.failed.items()}, "catalogued": self.catalogued,
                "catalogue_pending": self.catalogue_pending, "catalogue_failed": self.catalogue_failed}

    def raise_for_failures(self) -> None:
        errors: dict[str, SplashFlowsError] = dict(self.failed)
        errors.update({k: CatalogueError(f"{k}: {v}") for k, v in self.catalogue_failed.items()})
        if errors:
            raise BatchError("archive bundles", errors, len(self.verified) + len(errors))


def execute_archive(ctx: Context, *, progress: ArchiveProgress | None = None,
                    limit: int | None = None) -> ArchiveReport:
    """Plan, write and verify, catalogue (module doc). Never raises for a failed bundle: call
    ``raise_for_failures`` on the report."""
    tier = archive_tier(ctx)
    source = ctx.tier(ctx.config.archive.source)
    report = ArchiveReport(planned=len(record_new_bundles(ctx)))
    todo = la.bundles(ctx.ledger, tier.name, states=OPEN_STATES)[: limit or ctx.config.archive.max_bundles_per_run]
    for bundle in todo:
        write_one(ctx, tier, source, bundle, report, progress)
    catalogue_pending(ctx, report)
    log.info("%s", report.summary())
    return report


def write_one(ctx: Context, tier: ArchiveTier, source: Any, bundle: la.BundleRecord, report: ArchiveReport,
              progress: ArchiveProgress | None = None) -> None:
    """Write and verify one bundle and record the outcome (verified with every member's copy, or failed)."""
    if progress:
        progress("start", bundle.name, bundle.size)
    cb: BundleProgress | None = (lambda _p, n: progress("bytes", bundle.name, n)) if progress else None
    if bundle.state != BundleState.SUBMITTED:
        la.bump_attempts(ctx.ledger, bundle.id)
    try:
        written = tier.write_bundle(source, bundle, cb)
    except ArchiveJobPending as err:  # the job still runs: the bundle stays submitted, polled by the next run
        report.failed[bundle.name] = err
        return
    except TierError as err:
        la.mark_failed(ctx.ledger, bundle, str(err))
        report.failed[bundle.name] = err
        log.error("archive bundle %s failed: %s", bundle.name, err)
        if progress:
            progress("failed", bundle.name, 0)
        return
    la.mark_verified(ctx.ledger, bundle, packed_size=written.packed_size, url=written.url,
                     evidence={"bundle_url": written.url, **written.evidence},
                     catalogue=ctx.catalogue_enabled)
    report.verified.append(bundle.name)
    report.files += len(bundle.members)
    report.bytes += bundle.size
    if progress:
        progress("done", bundle.name, 0)


# ---------------------------------------------------------------------------------------------- catalogue


def archive_id(bundle_url: str, pid: str) -> str:
    """A datablock's archiveId: the bundle's location and the dataset (unique per bundle and dataset)."""
    return f"{bundle_url}#{pid}"


def datablocks_of(ctx: Context, bundle: la.BundleRecord) -> tuple[dict[str, DatablockDoc], list[str]]:
    """The datablock per dataset pid of a verified bundle, and the members whose scan is not catalogued yet
    (the bundle's datablocks then stay pending). Members never catalogued (excluded) are left out."""
    scans = la.scans_of_files(ctx.ledger, [m.file_id for m in bundle.members])
    mtimes = la.mtimes(ctx.ledger, [m.file_id for m in bundle.members])
    per_pid: dict[str, list[tuple[str, la.MemberRecord]]] = {}
    waiting: list[str] = []
    for m in bundle.members:
        scan = scans.get(m.file_id)
        if scan is None or scan[1] == "excluded":
            continue
        key, _state, pid = scan
        if pid is None:
            waiting.append(m.source_path)
            continue
        per_pid.setdefault(pid, []).append((key, m))
    url = bundle.url or tier_url(ctx, bundle)
    out = {}
    for pid, members in per_pid.items():
        docs = []
        for key, m in members:
            folder = posixpath.dirname(key)
            rel = posixpath.relpath(m.source_path, folder) if folder else m.source_path
            mtime = mtimes.get(m.file_id, 0.0)
            docs.append(DataFileDoc(path=rel, size=m.size, time=datetime.fromtimestamp(mtime, UTC), chk=m.checksum))
        out[pid] = DatablockDoc(archive_id=archive_id(url, pid), size=sum(d.size for d in docs),
                                packed_size=bundle.packed_size or bundle.size, chk_alg=bundle.checksum_alg,
                                files=docs)
    return out, waiting


def tier_url(ctx: Context, bundle: la.BundleRecord) -> str:
    return archive_tier(ctx).bundle_url(bundle.name)


def catalogue_pending(ctx: Context, report: ArchiveReport) -> None:
    """Add the datablocks (and the archive location) of every verified bundle still ``pending``."""
    if not ctx.catalogue_enabled:
        return
    tier_name = ctx.config.archive.tier
    pending = [b for b in la.bundles(ctx.ledger, tier_name, states=[BundleState.VERIFIED])
               if b.catalogue_state in ("pending", "failed", None)]  # a refusal is retried (and fails) loudly
    if not pending:
        return
    catalogue = ctx.catalogue()
    for bundle in pending:
        try:
            blocks, waiting = datablocks_of(ctx, bundle)
            for pid, block in blocks.items():
                catalogue.add_datablock(pid, block)
                _add_location(ctx, catalogue, pid, bundle)
        except CatalogueUnavailable as err:
            report.catalogue_pending[bundle.name] = str(err)
            la.set_catalogue_state(ctx.ledger, bundle.id, "pending", str(err))
            log.warning("catalogue unavailable: datablocks of %s stay pending: %s", bundle.name, err)
            continue
        except CatalogueError as err:
            report.catalogue_failed[bundle.name] = str(err)
            la.set_catalogue_state(ctx.ledger, bundle.id, "failed", str(err))
            continue
        if waiting:
            why = f"{len(waiting)} member(s) not catalogued yet (e.g. {waiting[0]})"
            report.catalogue_pending[bundle.name] = why
            la.set_catalogue_state(ctx.ledger, bundle.id, "pending", why)
        else:
            report.catalogued.append(bundle.name)
            la.set_catalogue_state(ctx.ledger, bundle.id, "catalogued")


def _add_location(ctx: Context, catalogue: Any, pid: str, bundle: la.BundleRecord) -> None:
    """The archive tier in the dataset's location history: every verified bundle holding its files."""
    tier_name = ctx.config.archive.tier
    urls = sorted({b.url or b.name for b in la.bundles(ctx.ledger, tier_name, states=[BundleState.VERIFIED])
                   for m in b.members if m.file_id in {f for f, _ in la.files_of_scan_pid(ctx.ledger, pid)}})
    since = bundle.verified_at or datetime.now(UTC)
    catalogue.add_location(pid, LocationDoc(tier=tier_name, url=" ".join(urls) or (bundle.url or bundle.name),
                                            state="archived", since=since))


# ---------------------------------------------------------------------------------------------- restore


@dataclass
class RestoreReport:
    """Files restored (verified against the ledger) and those that could not be."""

    restored: list[tuple[str, Path]] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        if self.failed:
            raise BatchError("restores", self.failed, len(self.restored) + len(self.failed))


def resolve_targets(ctx: Context, targets: Sequence[str]) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Files named by dataset pids or source paths: [(file id, path)], and targets that name nothing."""
    out: list[tuple[int, str]] = []
    unknown: dict[str, str] = {}
    source = ctx.config.move.source
    for t in targets:
        files = la.files_of_scan_pid(ctx.ledger, t)
        if files:
            out += files
            continue
        rec = ctx.ledger.get_source(source, t.strip("/"))
        if rec is not None:
            out.append((rec.id, rec.path))
            continue
        prefixed = la.files_under(ctx.ledger, source, t.strip("/") + "/")
        if prefixed:
            out += prefixed
        else:
            unknown[t] = "neither a dataset pid nor a path the ledger knows"
    return list(dict.fromkeys(out)), unknown


def restore(ctx: Context, targets: Sequence[str], dest: Path) -> RestoreReport:
    """Extract the files named by ``targets`` from their bundles into ``dest/<path>``, each verified against the
    ledger's checksum. Files not archived, or whose bundle is damaged, are errors naming the file."""
    tier = archive_tier(ctx)
    files, unknown = resolve_targets(ctx, targets)
    report = RestoreReport(failed={t: SplashFlowsError(f"{t}: {why}") for t, why in unknown.items()})
    by_bundle: dict[int, tuple[la.BundleRecord, list[la.MemberRecord]]] = {}
    for fid, path in files:
        found = la.bundle_of(ctx.ledger, tier.name, fid)
        if found is None or found[0].state != BundleState.VERIFIED:
            report.failed[path] = TierError("not in a verified bundle (not archived yet)", tier=tier.name, path=path)
            continue
        bundle, member = found
        by_bundle.setdefault(bundle.id, (bundle, []))[1].append(member)
    dest.mkdir(parents=True, exist_ok=True)
    for bundle, members in by_bundle.values():
        try:
            written = tier.restore(bundle, members, dest)
            report.restored += [(m.source_path, p) for m, p in zip(members, written, strict=False)]
        except TierError as err:
            for m in members:
                report.failed[m.source_path] = err if err.path == m.source_path or len(members) == 1 else \
                    VerificationError(f"not restored: {err}", tier=tier.name, path=m.source_path)
    return report


@dataclass
class DrillResult:
    """One restore drill: which file, from which bundle, and whether it came back identical."""

    ok: bool
    path: str | None
    bundle: str | None
    reason: str | None
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": self.path, "bundle": self.bundle, "reason": self.reason, "at": self.at}


def restore_drill(ctx: Context, *, rng: random.Random | None = None, scratch: Path | None = None) -> DrillResult:
    """Pick a random archived file, restore it to scratch, verify it against the ledger and record the result.
    Nothing archived yet is recorded as a drill that could not run (not ok)."""
    tier = archive_tier(ctx)
    ids = la.archived_file_ids(ctx.ledger, tier.name)
    now = datetime.now(UTC)
    if not ids:
        result = DrillResult(False, None, None, "nothing is archived yet", now)
    else:
        fid = (rng or random.SystemRandom()).choice(ids)
        found = la.bundle_of(ctx.ledger, tier.name, fid)
        assert found is not None
        bundle, member = found
        base = scratch or ctx.config.archive.drill_scratch
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="restore-drill-", dir=base))
        try:
            tier.restore(bundle, [member], work)
            result = DrillResult(True, member.source_path, bundle.name, None, now)
        except TierError as err:
            result = DrillResult(False, member.source_path, bundle.name, str(err), now)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    la.record_drill(ctx.ledger, ok=result.ok, path=result.path, bundle=result.bundle,
                    detail={"reason": result.reason})
    return result
