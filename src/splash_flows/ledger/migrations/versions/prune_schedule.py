"""Pruning: each copy's due date and its claim by a prune run.

New columns on ``copies``: ``prune_due_at`` (when the retention policy lets this copy go; NULL = never
scheduled), ``claimed_by`` and ``claimed_at`` (the prune run holding the copy in state ``pruning``).
The new copy states (``pruning``, ``deleting``, ``pruned``, ``at_risk``) and event kinds need no schema change:
both columns are plain strings, so older code reading a newer ledger sees unknown values, not errors.

Revision ID: 0002_prune
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0002_prune"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("copies") as batch:
        batch.add_column(sa.Column("prune_due_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("claimed_at", UTCDateTime, nullable=True))
    op.create_index("ix_copies_tier_prune_due", "copies", ["tier", "prune_due_at"])


def downgrade() -> None:
    op.drop_index("ix_copies_tier_prune_due", table_name="copies")
    with op.batch_alter_table("copies") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
        batch.drop_column("prune_due_at")
