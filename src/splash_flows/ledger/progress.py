"""Ledger queries for reconciliation: which source files are verified on every target tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from splash_flows.ledger.models import Copy, CopyState, SourceFile
from splash_flows.ledger.store import Ledger, in_chunks


@dataclass(frozen=True)
class SourceProgress:
    """A known source file: the size and mtime the ledger registered, and the targets it is verified on."""

    path: str
    size: int
    mtime: float
    verified_on: frozenset[str]


_FILES = (select(SourceFile.id, SourceFile.path, SourceFile.size, SourceFile.mtime)
          .where(SourceFile.source_tier == bindparam("tier"), SourceFile.path.in_(bindparam("paths", expanding=True))))
_VERIFIED_TIERS = (select(Copy.file_id, Copy.tier)
                   .where(Copy.file_id.in_(bindparam("ids", expanding=True)), Copy.state == CopyState.VERIFIED))


def source_progress(ledger: Ledger, source_tier: str, paths: Sequence[str]) -> dict[str, SourceProgress]:
    """For each of ``paths`` the ledger knows on ``source_tier``: registered size/mtime and verified tiers."""
    out: dict[str, SourceProgress] = {}
    with ledger.reading() as conn:  # plain rows, statements compiled once (expanding IN lists)
        for chunk in in_chunks(paths):
            files = conn.execute(_FILES, {"tier": source_tier, "paths": chunk}).all()
            verified: dict[int, set[str]] = {}
            if files:
                for file_id, tier in conn.execute(_VERIFIED_TIERS, {"ids": [f[0] for f in files]}):
                    verified.setdefault(file_id, set()).add(tier)
            for file_id, path, size, mtime in files:
                out[path] = SourceProgress(path, size, mtime, frozenset(verified.get(file_id, ())))
    return out
