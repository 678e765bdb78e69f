"""Reconciliation: find every source file that is not (or no longer) verified on every target tier.

The recovery step after anything that may have dropped work on the floor: a worker or runner killed mid-batch
(its Prefect run stays Running forever -- the server cannot know the process died), a trigger lost before the
watcher's outbox existed, a copy that failed for good. The ledger and the tiers are the truth, not run states:
a file needs sending when the ledger does not know it, when it changed since it was registered, or when any
target lacks a verified copy. Sending it again is safe -- copies already verified are skipped, not redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from splash_flows.context import Context
from splash_flows.ledger.progress import source_progress
from splash_flows.services.dispatch import export_control_match


@dataclass
class ReconcilePlan:
    """Files to send again (with why), and files left alone because they are too fresh or export-controlled."""

    to_send: dict[str, str] = field(default_factory=dict)
    too_fresh: list[str] = field(default_factory=list)
    export_controlled: list[str] = field(default_factory=list)
    in_order: int = 0

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
    stats = list(ctx.tier(source_name).walk(prefix))
    known = source_progress(ctx.ledger, source_name, [s.path for s in stats])
    for st in stats:
        if export_control_match(st.path, patterns) is not None:
            plan.export_controlled.append(st.path)
            continue
        if now - st.mtime < min_age:
            plan.too_fresh.append(st.path)
            continue
        rec = known.get(st.path)
        if rec is None:
            plan.to_send[st.path] = "not in the ledger"
        elif (rec.size, rec.mtime) != (st.size, st.mtime):
            plan.to_send[st.path] = "changed since it was registered"
        elif not targets <= rec.verified_on:
            missing = ", ".join(sorted(targets - rec.verified_on))
            plan.to_send[st.path] = f"not verified on {missing}"
        else:
            plan.in_order += 1
    return plan
