"""Ledger queries for reconciliation: which source files are verified on every target tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from splash_flows.ledger.models import Copy, CopyState, SourceFile
from splash_flows.ledger.store import Ledger, in_chunks


@dataclass(frozen=True)
class SourceProgress:
    """A known source file: the size and mtime the ledger registered, and the targets it is verified on."""

    path: str
    size: int
    mtime: float
    verified_on: frozenset[str]


def source_progress(ledger: Ledger, source_tier: str, paths: Sequence[str]) -> dict[str, SourceProgress]:
    """For each of ``paths`` the ledger knows on ``source_tier``: registered size/mtime and verified tiers."""
    out: dict[str, SourceProgress] = {}
    with ledger.session() as sess:
        for chunk in in_chunks(paths):
            files = list(sess.scalars(select(SourceFile).where(SourceFile.source_tier == source_tier,
                                                               SourceFile.path.in_(chunk))))
            ids = [f.id for f in files]
            verified: dict[int, set[str]] = {}
            if ids:
                rows = sess.execute(select(Copy.file_id, Copy.tier).where(Copy.file_id.in_(ids),
                                                                         Copy.state == CopyState.VERIFIED))
                for file_id, tier in rows:
                    verified.setdefault(file_id, set()).add(tier)
            for f in files:
                out[f.path] = SourceProgress(f.path, f.size, f.mtime, frozenset(verified.get(f.id, set())))
    return out
