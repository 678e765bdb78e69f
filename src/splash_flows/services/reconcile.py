"""Reconciliation: find every source file that is not (or no longer) verified on every target tier.

The recovery step after anything that may have dropped work on the floor: a worker or runner killed mid-batch
(its Prefect run stays Running forever -- the server cannot know the process died), a trigger lost before the
watcher's outbox existed, a copy that failed for good. The ledger and the tiers are the truth, not run states:
a file needs sending when the ledger does not know it, when it changed since it was registered, or when any
target lacks a verified copy. Sending it again is safe -- copies already verified are skipped, not redone.

What is a file to move is ``selection.MoveRule``'s call (the watcher's rule): ignored names are never listed,
odd ones (not UTF-8, FIFOs, sockets, devices) are refused with one line each and the rest goes on; a folder
that cannot be listed is reported and makes the plan incomplete (the command exits non-zero).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from splash_flows.context import Context
from splash_flows.ledger.outbox import verified_in_folders
from splash_flows.ledger.progress import source_progress
from splash_flows.selection import MoveRule, Refusal, SourceListing, stream_source
from splash_flows.services.catalogue import CatalogueReport, retry_pending, uncatalogued_scans
from splash_flows.services.dispatch import export_control_match
from splash_flows.services.prune import ScheduleReport, schedule_unscheduled
from splash_flows.tiers.base import FileStat


@dataclass
class ReconcilePlan:
    """Files to send again (with why), and files left alone because they are too fresh or export-controlled."""

    to_send: dict[str, str] = field(default_factory=dict)
    too_fresh: list[str] = field(default_factory=list)
    export_controlled: list[str] = field(default_factory=list)
    in_order: int = 0
    refused: list[Refusal] = field(default_factory=list)
    unreadable: list[Refusal] = field(default_factory=list)
    changed_stats: dict[str, FileStat] = field(default_factory=dict)   # rewritten since registered

    def batches(self, size: int) -> list[list[str]]:
        paths = list(self.to_send)
        return [paths[i:i + size] for i in range(0, len(paths), max(1, size))]


def plan_reconcile(ctx: Context, *, prefix: str = "", min_age: float = 60.0, now: float | None = None) -> ReconcilePlan:
    """Walk the source tier and compare with the ledger.

    Files modified less than ``min_age`` seconds ago are left to the watcher (they may still be written);
    export-controlled files are never sent (the dispatcher would refuse them).
    """
    source_name = ctx.config.move.source
    targets = set(ctx.config.move.targets)
    patterns = ctx.config.move.export_control_patterns
    now = time.time() if now is None else now
    plan = ReconcilePlan()
    rule = MoveRule.from_config(ctx.config)
    listing = SourceListing()
    # streamed: one chunk of files and its ledger rows at a time, so memory grows only with what is to send.
    # The watcher's lookup first (verified on every target, at which version: a leaf folder's files as one range
    # of the path index, other files by name); only the files it does not vouch for are looked up in detail, to
    # say why they are to be sent.
    for stats in stream_source(ctx.tier(source_name), rule, listing, prefix):
        safe = (verified_in_folders(ctx.ledger, source_name, sorted(targets), [s.path for s in stats], stats.leaves)
                if targets else {})
        rest = [s.path for s in stats if safe.get(s.path) != (s.size, s.mtime)]
        known = source_progress(ctx.ledger, source_name, rest) if rest else {}
        for st in stats:
            if export_control_match(st.path, patterns) is not None:
                plan.export_controlled.append(st.path)
                continue
            if now - st.mtime < min_age:
                plan.too_fresh.append(st.path)
                continue
            if safe.get(st.path) == (st.size, st.mtime):
                plan.in_order += 1
                continue
            rec = known.get(st.path)
            if rec is None:
                plan.to_send[st.path] = "not in the ledger"
            elif (rec.size, rec.mtime) != (st.size, st.mtime):
                plan.to_send[st.path] = "changed since it was registered"
                plan.changed_stats[st.path] = st
            elif not targets <= rec.verified_on:
                missing = ", ".join(sorted(targets - rec.verified_on))
                plan.to_send[st.path] = f"not verified on {missing}"
            else:
                plan.in_order += 1
    plan.refused, plan.unreadable = listing.refused, listing.unreadable
    return plan


@dataclass
class HealReport:
    """What ``heal`` did: the catalogue retry (pending scans and scans never catalogued) and due dates set."""

    catalogue: CatalogueReport | None
    scheduled: ScheduleReport

    def describe(self) -> str:
        """One line for logs and the CLI."""
        cat = self.catalogue.describe() if self.catalogue is not None else "catalogue: nothing to do"
        return f"{cat}; {self.scheduled.summary()}"

    def summary(self) -> dict[str, Any]:
        """Counts for a flow's result and ``--json``."""
        return {"catalogue": self.catalogue.summary() if self.catalogue is not None else None,
                "pending_scans": self.catalogue.pending if self.catalogue is not None else {},
                "prune_dates_set": len(self.scheduled.changed)}


def heal(ctx: Context) -> HealReport:
    """Enforce the ledger's invariant now: every file verified on every target is catalogued, pending,
    excluded or failed, and has its due dates. Retries the pending scans (those whose sidecar wait ended are
    catalogued with what exists), catalogues the scans a killed run never got to, and schedules the files it
    left without dates. Run by every move (its catalogue and scheduling steps), by ``reconcile`` and on a clock
    (the ``catalogue_retry_733`` deployment). Never raises for one scan's trouble: see the report."""
    cat = retry_pending(ctx) if ctx.catalogue_enabled else None
    return HealReport(cat, schedule_unscheduled(ctx))


def unfinished(ctx: Context) -> tuple[list[str], int]:
    """For a dry run: the scans a heal would catalogue for the first time, and how many files it would give
    due dates to."""
    from datetime import UTC, datetime, timedelta

    from splash_flows.ledger import prune as lp

    cutoff = datetime.now(UTC) - timedelta(seconds=ctx.config.move.recover_after_s)
    keys = uncatalogued_scans(ctx) if ctx.catalogue_enabled else []
    ids = lp.unscheduled_file_ids(ctx.ledger, ctx.config.move.source, ctx.config.move.targets,
                                  list(ctx.config.retention.rules), verified_before=cutoff, limit=100_000)
    return keys, len(ids)
