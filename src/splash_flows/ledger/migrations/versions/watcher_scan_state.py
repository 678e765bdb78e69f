"""The watcher's scan state in the ledger: outbox paths (one indexed row per file of an outbox entry, with the
version the watcher batched) and settled folders (per leaf folder, what a full scan found all verified).

The watcher used to remember every file it handed to the outbox (a claim per file, about 300 bytes, kept for
``resend_after_s``), so a backfill of a million new files held a million claims in memory, and a restart read
every in-flight entry and ``stat``-ed every path in it. With this table the scan asks the ledger which of a
chunk's files are in flight, as it already asks which are verified (``ledger.outbox.in_flight_versions``).

``scan_folders``: a row per leaf folder of the watched tier whose files a full scan found all verified on every
target (``ledger.scan_state``): the folder's mtime (ns) when it was listed, and its file count. A light periodic
rescan does not list a folder whose mtime is unchanged (no file added, removed or renamed since); in-place
rewrites, which leave a folder's mtime alone, are caught by their inotify events and by the full scans.

The upgrade copies the paths of the pending entries, and of those sent in the last 7 days, with no version
(NULL: "any version", what the watcher assumed for them at a start before this migration). Failed entries and
older sent ones are never in flight, so they get no rows.

Revision ID: 0005_watcher_scan_state
Revises: 0004_ledger_counters
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0005_watcher_scan_state"
down_revision = "0004_ledger_counters"
branch_labels = None
depends_on = None

KEEP_SENT = timedelta(days=7)  # sent entries older than this are past any sane resend_after_s


def upgrade() -> None:
    op.create_table(
        "outbox_paths",
        sa.Column("entry_id", sa.Integer, sa.ForeignKey("outbox.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("mtime", sa.Float, nullable=True),
    )
    op.create_index("ix_outbox_paths_path", "outbox_paths", ["path"])
    op.create_table(
        "scan_folders",
        sa.Column("tier", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
    )
    bind = op.get_bind()
    outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("paths", sa.JSON),
                      sa.column("state", sa.String), sa.column("sent_at", sa.DateTime(timezone=True)))
    since = datetime.now(UTC) - KEEP_SENT
    if bind.dialect.name == "sqlite":
        since = since.replace(tzinfo=None)  # stored naive (UTC) on SQLite
    rows = bind.execute(sa.select(outbox.c.id, outbox.c.paths).where(
        sa.or_(outbox.c.state == "pending", (outbox.c.state == "sent") & (outbox.c.sent_at >= since)))).all()
    target = sa.table("outbox_paths", sa.column("entry_id", sa.Integer), sa.column("path", sa.String))
    batch: list[dict[str, object]] = []
    for entry_id, stored in rows:
        paths = json.loads(stored) if isinstance(stored, str) else stored
        if not isinstance(paths, list):
            continue  # not written by the watcher (it always stores a list of path strings)
        for path in dict.fromkeys(p for p in paths if isinstance(p, str)):
            batch.append({"entry_id": entry_id, "path": path})
        if len(batch) >= 5000:
            bind.execute(target.insert(), batch)
            batch = []
    if batch:
        bind.execute(target.insert(), batch)


def downgrade() -> None:
    op.drop_table("scan_folders")
    op.drop_index("ix_outbox_paths_path", table_name="outbox_paths")
    op.drop_table("outbox_paths")
