"""Globus task batches: submission ids recorded before submission, task ids, status and per-task metrics.

Revision ID: 0002_globus
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0002_globus"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transfer_batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_tier", sa.String(64), nullable=False),
        sa.Column("dest_tier", sa.String(64), nullable=False),
        sa.Column("source_collection", sa.String(64), nullable=True),
        sa.Column("dest_collection", sa.String(64), nullable=False),
        sa.Column("items_digest", sa.String(64), nullable=False),
        sa.Column("open_key", sa.String(64), nullable=True),
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("submission_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("globus_status", sa.String(32), nullable=True),
        sa.Column("deadline", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("submitted_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("bytes_transferred", sa.BigInteger, nullable=True),
        sa.Column("files_transferred", sa.Integer, nullable=True),
        sa.Column("files_skipped", sa.Integer, nullable=True),
        sa.Column("effective_bytes_per_second", sa.Float, nullable=True),
        sa.Column("faults", sa.Integer, nullable=True),
        sa.Column("items_ok", sa.Integer, nullable=True),
        sa.Column("items_failed", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("submission_id", name="uq_transfer_batches_submission"),
        sa.UniqueConstraint("kind", "source_tier", "dest_tier", "open_key", name="uq_transfer_batches_open"),
    )
    op.create_index("ix_transfer_batches_created", "transfer_batches", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_transfer_batches_created", table_name="transfer_batches")
    op.drop_table("transfer_batches")
