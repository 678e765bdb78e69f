"""Settled folders: what the watcher's full scans found all verified, so its light rescans need not list them.

A row of ``scan_folders`` (migration ``0005_watcher_scan_state``) says: when a full scan listed this leaf folder
of the watched tier, its mtime was ``mtime_ns``, it held ``files`` files, and every one of them was verified on
every move target at its current version (none refused, none in flight). While the folder's mtime is unchanged,
no file was added, removed or renamed in it since; a file rewritten in place leaves the folder's mtime alone,
which is why rows are also removed when a file of the folder is batched (``Outbox.add``, same transaction) and
why the watcher still runs a full scan regularly (``watcher.full_rescan_every``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam, delete, insert, select

from splash_flows.ledger.models import ScanFolder
from splash_flows.ledger.store import Ledger, in_chunks

Settled = tuple[int, int]  # (mtime_ns, files)

_SETTLED = (select(ScanFolder.path, ScanFolder.mtime_ns, ScanFolder.files)
            .where(ScanFolder.tier == bindparam("tier"), ScanFolder.path.in_(bindparam("paths", expanding=True))))


def settled_folders(ledger: Ledger, tier: str, folders: Sequence[str]) -> dict[str, Settled]:
    """The settled rows among ``folders`` (tier-relative) of ``tier``: path -> (mtime_ns, files). One read
    transaction, primary-key lookups in chunks of ``IN_CHUNK``."""
    out: dict[str, Settled] = {}
    with ledger.reading() as conn:
        for chunk in in_chunks(list(dict.fromkeys(folders))):
            out.update({path: (mtime_ns, files) for path, mtime_ns, files
                        in conn.execute(_SETTLED, {"tier": tier, "paths": chunk})})
    return out


def update_settled(ledger: Ledger, tier: str, settle: Mapping[str, Settled], unsettle: Sequence[str]) -> None:
    """Record ``settle`` (path -> (mtime_ns, files)) and forget ``unsettle``, in one transaction."""
    if not settle and not unsettle:
        return
    with ledger.session() as sess:
        gone = [*settle, *unsettle]
        for chunk in in_chunks(gone):
            sess.execute(delete(ScanFolder).where(ScanFolder.tier == tier, ScanFolder.path.in_(chunk)))
        if settle:
            sess.execute(insert(ScanFolder), [{"tier": tier, "path": p, "mtime_ns": m, "files": n}
                                              for p, (m, n) in settle.items()])

