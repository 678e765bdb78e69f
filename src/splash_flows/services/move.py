"""The move step (seed ``move.py``): register new files from the source tier, copy them to every target tier,
verify every copy, and record each step in the ledger.

Plain functions over the ``Tier`` interface and the ledger: the Prefect flows call these and add nothing but
orchestration. A bad file never stops its batch: its error is recorded and reported, the rest go on, and the
report's ``raise_for_failures`` makes the caller (and so the Prefect run) fail with every reason listed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from splash_flows.context import Context
from splash_flows.errors import (
    BatchError,
    NotAFileToMove,
    PathEscapeError,
    SourceChangedError,
    SourceMissingError,
    SplashFlowsError,
    TierError,
    TransferError,
    VerificationError,
)
from splash_flows.ledger import EventKind, NewSource, SourceRecord, VerifiedCopy
from splash_flows.paths import normalize_relpath
from splash_flows.selection import MoveRule
from splash_flows.tiers.base import CopyItem, CopyResult, Fingerprint, ProgressCallback, Tier
from splash_flows.tiers.local import LocalTier

log = logging.getLogger(__name__)


def is_transient(err: BaseException) -> bool:
    """Whether trying again may help: I/O and service errors yes; refusals, missing sources and a source that
    no longer matches its ledger checksum no."""
    if isinstance(err, BatchError):
        return any(is_transient(e) for e in err.failures.values())
    if isinstance(err, PathEscapeError | SourceMissingError | SourceChangedError):
        return False
    return isinstance(err, TransferError | VerificationError)


@dataclass
class TierReport:
    """What happened on one target tier for one batch."""

    tier: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)
    bytes_copied: int = 0

    @property
    def verified(self) -> list[str]:
        return self.copied + self.skipped


@dataclass
class RegisterReport:
    """Source files known to the ledger (with their checksum) and those that could not be registered."""

    sources: list[SourceRecord] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)


@dataclass
class MoveReport:
    """The outcome of moving one batch: registration plus one report per target tier."""

    requested: int
    register: RegisterReport
    tiers: dict[str, TierReport] = field(default_factory=dict)

    def failures(self) -> dict[str, SplashFlowsError]:
        out: dict[str, SplashFlowsError] = {f"{p} (register)": e for p, e in self.register.failed.items()}
        for rep in self.tiers.values():
            out.update({f"{p} -> {rep.tier}": e for p, e in rep.failed.items()})
        return out

    def verified_everywhere(self) -> list[str]:
        """Paths verified on every target tier of this batch."""
        if not self.tiers:
            return []
        sets = [set(r.verified) for r in self.tiers.values()]
        return sorted(set.intersection(*sets))

    def raise_for_failures(self) -> None:
        failures = self.failures()
        if failures:
            raise BatchError("file copies", failures, total=self.requested * max(1, len(self.tiers)))

    def summary(self) -> str:
        parts = [f"{len(self.verified_everywhere())}/{self.requested} files verified on {', '.join(self.tiers)}"]
        for rep in self.tiers.values():
            parts.append(f"{rep.tier}: {len(rep.copied)} copied, {len(rep.skipped)} already there, "
                         f"{len(rep.failed)} failed")
        return "; ".join(parts)


class MoveFailed(BatchError):
    """Some copies of a batch did not verify; ``report`` is the whole ``MoveReport`` (what registered, what
    verified where), so the steps after the copies (catalogue, prune dates) still run for what did."""

    def __init__(self, what: str, failures: dict[str, SplashFlowsError], report: MoveReport, total: int) -> None:
        super().__init__(what, failures, total)
        self.report = report


def register_sources(ctx: Context, paths: Sequence[str]) -> RegisterReport:
    """Make every path known to the ledger with its size, mtime and checksum.

    A path the ledger already knows with the same size and mtime is not re-read (the copy still verifies the
    bytes against the recorded checksum). Refused paths (escaping the root) and missing or unreadable files are
    recorded with their reason and left out; the rest go on. The new and changed files are recorded in one
    transaction.
    """
    report, new = _identify_sources(ctx, paths)
    report.sources.extend(ctx.ledger.register_sources(ctx.config.move.source, new))  # one transaction
    return report


class PendingSources:
    """Sources whose ledger transaction may still be running: what a copy needs at once (``items``: path,
    checksum, size, as identified) and, from ``records()``, the ledger's records in the same order once that
    transaction committed (it raises what the transaction raised). ``move_files`` copies while it commits."""

    def __init__(self, items: Sequence[CopyItem], records: Callable[[], list[SourceRecord]]) -> None:
        self.items = list(items)
        self._records = records

    def records(self) -> list[SourceRecord]:
        """The committed records, one per item, in order (waits for the transaction)."""
        return self._records()

    def checksums(self) -> dict[str, str]:
        """The checksum the ledger holds for each path, once committed: what a copy may be renamed with."""
        return {r.path: r.checksum for r in self.records()}


def _identify_sources(ctx: Context, paths: Sequence[str]) -> tuple[RegisterReport, list[NewSource]]:
    """Registration up to its ledger transaction: refusals and unreadable files recorded in the report, known
    unchanged sources in ``report.sources``, and the new or changed files to register."""
    source_name = ctx.config.move.source
    source = ctx.tier(source_name)
    report = RegisterReport()
    clean: list[str] = []
    rule = MoveRule.from_config(ctx.config)
    for raw in dict.fromkeys(paths):
        refusal = rule.refusal(raw, check_path=False)
        if refusal is not None:  # a name the ledger cannot even store (not UTF-8)
            report.failed[refusal.path] = NotAFileToMove(refusal.reason, tier=source_name, path=refusal.path)
            ctx.ledger.record_failed(refusal.path, source_name, refusal.reason, kind=EventKind.REFUSED)
            continue
        try:
            clean.append(normalize_relpath(raw, tier=source_name))
        except PathEscapeError as err:
            report.failed[raw] = err
            ctx.ledger.record_failed(raw, source_name, str(err), kind=EventKind.REFUSED)
    clean = list(dict.fromkeys(clean))
    known = ctx.ledger.sources(source_name, clean)
    versions = {p: (r.size, r.mtime) for p, r in known.items() if r.checksum_alg == source.checksum_alg}
    new: list[NewSource] = []
    for path, found in zip(clean, identify(source, clean, versions, ctx.config.move.concurrency), strict=True):
        if isinstance(found, Fingerprint):
            if found.checksum is None:
                report.sources.append(known[path])  # unchanged since it was registered
            else:
                new.append(NewSource(path, found.stat.size, found.stat.mtime, source.checksum_alg, found.checksum))
            continue
        report.failed[path] = found
        if isinstance(found, PathEscapeError):
            ctx.ledger.record_failed(path, source_name, str(found), kind=EventKind.REFUSED)
        else:
            ctx.ledger.record_failed(path, source_name, str(found), source=known.get(path))
    return report, new


def identify(source: Tier, paths: Sequence[str], known: Mapping[str, tuple[int, float]],
             concurrency: int) -> list[Fingerprint | TierError]:
    """What registration needs of each file on ``source``: its stat and checksum (None when ``known`` holds
    its current (size, mtime)), or why not. A local tier does it in one pass per file (``LocalTier.identify``);
    any other tier by ``stat``, ``checksum`` and ``stat`` again, in ``concurrency`` threads."""
    if isinstance(source, LocalTier):
        try:
            return source.identify(paths, known)
        except TierError as err:  # the whole tier cannot be asked (its root is missing): each file says so
            return [err for _ in paths]

    def one(path: str) -> Fingerprint | TierError:
        try:
            st = source.stat(path)
            if st is None:
                raise SourceMissingError("file not found", tier=source.name, path=path)
            if known.get(path) == (st.size, st.mtime):
                return Fingerprint(st, None)
            checksum = source.checksum(path)
            after = source.stat(path)
            if after is None or (after.size, after.mtime) != (st.size, st.mtime):
                raise SourceChangedError("file changed while it was being checksummed (still being written?)",
                                         tier=source.name, path=path)
            return Fingerprint(st, checksum)
        except TierError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(paths))), thread_name_prefix="register") as pool:
        return list(pool.map(one, paths))


def copy_to_tier(ctx: Context, sources: Sequence[SourceRecord] | PendingSources, target: str,
                 progress: ProgressCallback | None = None) -> TierReport:
    """Copy registered sources to ``target`` and verify each copy against the ledger's checksum.

    ``PendingSources``: a local target writes, syncs and verifies the batch while their ledger transaction
    commits, and renames only what it committed (``LocalTier.copy_from``'s ``before_rename``); any other
    target waits for the commit first."""
    src_tier = ctx.tier(ctx.config.move.source)
    dst_tier = ctx.tier(target)
    report = TierReport(tier=target)
    pending = sources if isinstance(sources, PendingSources) else None
    fixed = [] if isinstance(sources, PendingSources) else list(sources)
    items = pending.items if pending is not None else [CopyItem(s.path, s.checksum, s.size) for s in fixed]
    if not items:
        return report
    try:
        if pending is not None and isinstance(dst_tier, LocalTier):
            outcomes = dst_tier.copy_from(src_tier, items, progress, before_rename=pending.checksums)
        else:
            if pending is not None:
                pending.records()  # committed before anything is copied
            outcomes = dst_tier.copy_from(src_tier, items, progress)
    except TierError as err:  # the whole batch could not be attempted: each file says so, with the cause
        kind = TransferError if isinstance(err, TransferError) else TierError
        where = f"{err.tier}: " if err.tier and err.tier != target else ""
        outcomes = [kind(f"not copied: {where}{err.bare_message}", tier=target, path=i.path) for i in items]
    records = pending.records() if pending is not None else fixed
    verified: list[VerifiedCopy] = []
    for source, outcome in zip(records, outcomes, strict=True):
        if isinstance(outcome, CopyResult) and outcome.checksum != source.checksum:
            outcome = VerificationError(f"copy checksum {outcome.checksum} != ledger {source.checksum}",
                                        tier=target, path=source.path)
        if isinstance(outcome, CopyResult):
            verified.append(VerifiedCopy(source, outcome.checksum, outcome.size, outcome.skipped,
                                         dict(outcome.detail) if outcome.detail else {}))
            (report.skipped if outcome.skipped else report.copied).append(source.path)
            if not outcome.skipped:
                report.bytes_copied += outcome.size
        else:
            report.failed[source.path] = outcome
            ctx.ledger.record_failed(source.path, target, str(outcome), source=source)
            log.error("%s", outcome)
    ctx.ledger.record_verified_many(target, verified)  # one transaction for the batch
    return report


def copy_to_tiers(ctx: Context, sources: Sequence[SourceRecord] | PendingSources, targets: Sequence[str],
                  progress: Callable[[str, str, int], None] | None = None) -> dict[str, TierReport]:
    """``copy_to_tier`` for every target at once, a thread per tier; the reports by tier, in ``targets`` order.
    ``progress(tier, path, nbytes)`` is called as bytes are copied."""

    def run(target: str) -> TierReport:
        cb: ProgressCallback | None = None
        if progress is not None:
            def cb(path: str, n: int, _t: str = target) -> None:
                progress(_t, path, n)
        return copy_to_tier(ctx, sources, target, cb)

    with ThreadPoolExecutor(max_workers=max(1, len(targets)), thread_name_prefix="move") as pool:
        return {rep.tier: rep for rep in pool.map(run, targets)}


def move_files(ctx: Context, paths: Sequence[str], targets: Sequence[str] | None = None,
               progress: Callable[[str, str, int], None] | None = None) -> MoveReport:
    """Register ``paths`` (tier-relative on the source tier) and copy them to every target tier concurrently.

    The sources' ledger transaction commits while the copies are written, synced and verified under their
    temporary names; a copy gets its final name only once its source is committed with the checksum it was
    verified against (``copy_to_tier`` with ``PendingSources``). ``progress(tier, path, nbytes)`` is called as
    bytes are copied. Returns the report; it does not raise for per-file failures -- call
    ``raise_for_failures``. A failed ledger transaction leaves no copy under a final name and is raised.
    """
    targets = list(targets if targets is not None else ctx.config.move.targets)
    reg, new = _identify_sources(ctx, paths)
    report = MoveReport(requested=len(dict.fromkeys(paths)), register=reg)
    known = list(reg.sources)
    items = [CopyItem(s.path, s.checksum, s.size) for s in known]
    items += [CopyItem(n.path, n.checksum, n.size) for n in new]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="register") as pool:
        commit = pool.submit(ctx.ledger.register_sources, ctx.config.move.source, new)
        records = functools.cache(lambda: [*known, *commit.result()])
        try:
            tiers = copy_to_tiers(ctx, PendingSources(items, records), targets, progress)
        finally:
            commit.result()  # the transaction has ended before we return or raise (its own error first)
    reg.sources = records()
    report.tiers.update(tiers)
    return report
