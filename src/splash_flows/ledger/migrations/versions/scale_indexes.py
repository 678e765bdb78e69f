"""Indexes for a ledger of millions of rows (measured with 1M files and 10M copies: docs/PERFORMANCE.md).

* ``copies (tier, state, prune_due_at)`` replaces ``copies (tier, state)`` and ``copies (tier, prune_due_at)``:
  the same prefix serves the per-tier state totals of ``status``, and the prune queries (``unscheduled_counts``,
  ``count_due``, the due-file pages) read due dates from the index alone, per state, instead of visiting every
  copy of a tier in the table to check its state. One index instead of two also makes every copy write cheaper.
* ``catalogue_scans (state, updated_at, id)`` replaces ``catalogue_scans (state)``: the pending scans come out
  of the index already least-recently-tried first, so the catalogue step reads its page and stops.
* PostgreSQL whose database collation is not ``C``: ``files (source_tier, path varchar_pattern_ops)``, so a
  prefix match (``status --prefix``, the catalogue's files of one folder) is an index range scan; under ``C``
  the unique ``(source_tier, path)`` index already serves it, and SQLite's ``LIKE`` cannot use an index.

Revision ID: 0003_scale_indexes
Revises: 0002_prune
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_scale_indexes"
down_revision = "0003_monitoring"
branch_labels = None
depends_on = None

PATTERN_INDEX = "ix_files_tier_path_pattern"


def _collation_is_c() -> bool:
    bind = op.get_bind()
    collate = bind.execute(sa.text("SELECT datcollate FROM pg_database WHERE datname = current_database()")).scalar()
    return str(collate) in ("C", "POSIX")


def upgrade() -> None:
    op.create_index("ix_copies_tier_state_due", "copies", ["tier", "state", "prune_due_at"])
    op.drop_index("ix_copies_tier_state", table_name="copies")
    op.drop_index("ix_copies_tier_prune_due", table_name="copies")
    op.create_index("ix_catalogue_scans_state_updated", "catalogue_scans", ["state", "updated_at", "id"])
    op.drop_index("ix_catalogue_scans_state", table_name="catalogue_scans")
    if op.get_bind().dialect.name == "postgresql" and not _collation_is_c():
        op.create_index(PATTERN_INDEX, "files", ["source_tier", "path"],
                        postgresql_ops={"path": "varchar_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {PATTERN_INDEX}")
    op.create_index("ix_catalogue_scans_state", "catalogue_scans", ["state"])
    op.drop_index("ix_catalogue_scans_state_updated", table_name="catalogue_scans")
    op.create_index("ix_copies_tier_prune_due", "copies", ["tier", "prune_due_at"])
    op.create_index("ix_copies_tier_state", "copies", ["tier", "state"])
    op.drop_index("ix_copies_tier_state_due", table_name="copies")
