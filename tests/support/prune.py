"""Helpers for pruning tests: acquisitions at a given time, a context whose tiers are observed, corruption."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from splash_flows.config import Config
from splash_flows.context import Context, build_tier
from splash_flows.ledger import Ledger
from splash_flows.services.move import move_files
from splash_flows.services.prune import schedule_prune
from splash_flows.tiers.base import Tier
from tests.fakes.clock import FakeClock
from tests.fakes.tiers import ObservedTier

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def observed_context(config: Config, *, before_delete: Callable[[str, Sequence[str]], None] | None = None,
                     deleted: list[tuple[str, str]] | None = None, ledger: Ledger | None = None) -> Context:
    """A context whose tiers are the configured ones wrapped in ``ObservedTier`` (shared ``deleted`` list)."""
    shared = deleted if deleted is not None else []
    ledger = ledger or Ledger.open(config.ledger.url_value())
    tiers = {name: ObservedTier(build_tier(name, config, ledger=ledger), before_delete=before_delete, deleted=shared)
             for name in config.tiers}
    return Context(config=config, ledger=ledger, _tiers=dict(tiers.items()))


def observed(ctx: Context, tier: str) -> ObservedTier:
    t = ctx.tier(tier)
    assert isinstance(t, ObservedTier)
    return t


def tier_path(ctx: Context, tier: str, rel: str) -> Path:
    return Path(ctx.config.tiers[tier].root) / rel


def acquire(ctx: Context, rel: str, data: bytes, at: datetime) -> Path:
    """Write an acquisition into the source tier with its mtime set to ``at``."""
    path = tier_path(ctx, ctx.config.move.source, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (at.timestamp(), at.timestamp()))
    return path


def move_and_schedule(ctx: Context, paths: Sequence[str], clock: FakeClock) -> None:
    """What ``new_file_733`` does, without Prefect: move, verify, schedule pruning."""
    report = move_files(ctx, list(paths))
    report.raise_for_failures()
    schedule_prune(ctx, report.register.sources, clock=clock)


def _inner(tier: Tier) -> Tier:
    return tier.inner if isinstance(tier, ObservedTier) else tier


def archive(ctx: Context, rel: str) -> bool:
    """Archive one file cfs -> hpss in a bundle of its own, as the archive flow does (plan, record, write,
    verify, record the hpss copy); True when the bundle is verified. Again for an archived file: its bundle is
    re-verified (and re-written from cfs if it fails), as the next archive run would."""
    from splash_flows.ledger import archive as la
    from splash_flows.services.archive import service as svc
    from splash_flows.services.archive.plan import ArchivableFile, plan_bundles
    from splash_flows.tiers.archive import ArchiveTier

    source = ctx.ledger.get_source(ctx.config.move.source, rel)
    assert source is not None
    tier = _inner(ctx.tier(ctx.config.archive.tier))
    assert isinstance(tier, ArchiveTier)
    found = la.bundle_of(ctx.ledger, tier.name, source.id)
    if found is None:
        f = ArchivableFile(source.id, source.path, source.size, source.checksum,
                           datetime.fromtimestamp(source.mtime, UTC))
        plan = plan_bundles([f], svc.limits(ctx), zone=ctx.config.timezone,
                            next_part=la.next_parts(ctx.ledger, tier.name))
        ids = la.record_plan(ctx.ledger, tier.name, plan, ctx.config.checksum)
        assert ids
        (bundle,) = la.bundles(ctx.ledger, tier.name, ids=ids)
    else:
        bundle = found[0]
    report = svc.ArchiveReport()
    svc.write_one(ctx, tier, _inner(ctx.tier(ctx.config.archive.source)), bundle, report)
    return bool(report.verified)


def copy_path(ctx: Context, tier: str, rel: str) -> Path:
    """Where the copy of ``rel`` on ``tier`` is on disk: the file itself, or on the archive tier its bundle
    (a path that does not exist when it is in none)."""
    if tier != ctx.config.archive.tier:
        return tier_path(ctx, tier, rel)
    from splash_flows.ledger import archive as la

    source = ctx.ledger.get_source(ctx.config.move.source, rel)
    found = None if source is None else la.bundle_of(ctx.ledger, tier, source.id)
    return tier_path(ctx, tier, found[0].name if found else f"{rel}.not-archived")


def copy_bytes(ctx: Context, tier: str, rel: str) -> bytes | None:
    """The bytes of ``rel`` as its copy on ``tier`` holds them (read from the bundle on the archive tier)."""
    path = copy_path(ctx, tier, rel)
    if not path.is_file():
        return None
    if tier != ctx.config.archive.tier:
        return path.read_bytes()
    import tarfile

    try:
        with tarfile.open(path) as tar:
            fh = tar.extractfile(rel)
            return None if fh is None else fh.read()
    except (tarfile.TarError, KeyError, OSError):
        return None


def flip_byte(path: Path, offset: int = 0) -> None:
    """Silent corruption: one byte changes, size and mtime stay (what a re-hash must catch)."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
