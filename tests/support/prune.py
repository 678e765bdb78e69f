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
from splash_flows.tiers.base import CopyItem, CopyResult
from tests.fakes.clock import FakeClock
from tests.fakes.tiers import ObservedTier

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def observed_context(config: Config, *, before_delete: Callable[[str, Sequence[str]], None] | None = None,
                     deleted: list[tuple[str, str]] | None = None, ledger: Ledger | None = None) -> Context:
    """A context whose tiers are the configured ones wrapped in ``ObservedTier`` (shared ``deleted`` list)."""
    shared = deleted if deleted is not None else []
    tiers = {name: ObservedTier(build_tier(name, config), before_delete=before_delete, deleted=shared)
             for name in config.tiers}
    return Context(config=config, ledger=ledger or Ledger.open(config.ledger.url_value()),
                   _tiers=dict(tiers.items()))


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


def archive(ctx: Context, rel: str) -> bool:
    """Copy cfs -> hpss verified against the ledger (what the archive flow will do); True when recorded."""
    source = ctx.ledger.get_source(ctx.config.move.source, rel)
    assert source is not None
    (outcome,) = ctx.tier("hpss").copy_from(ctx.tier("cfs"), [CopyItem(rel, source.checksum, source.size)])
    if isinstance(outcome, CopyResult) and outcome.checksum == source.checksum:
        ctx.ledger.record_verified(source, "hpss", checksum=outcome.checksum, size=outcome.size, skipped=False)
        return True
    return False


def flip_byte(path: Path, offset: int = 0) -> None:
    """Silent corruption: one byte changes, size and mtime stay (what a re-hash must catch)."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
