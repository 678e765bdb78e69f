"""Initial ledger: files, copies, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_tier", sa.String(64), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.Float, nullable=False),
        sa.Column("checksum_alg", sa.String(32), nullable=False),
        sa.Column("checksum", sa.String(128), nullable=False),
        sa.Column("detected_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("source_tier", "path", name="uq_files_source_path"),
    )
    op.create_table(
        "copies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("checksum", sa.String(128), nullable=True),
        sa.Column("verified_at", UTCDateTime, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("file_id", "tier", name="uq_copies_file_tier"),
    )
    op.create_index("ix_copies_tier_state", "copies", ["tier", "state"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="SET NULL"), nullable=True),
        sa.Column("path", sa.String(4096), nullable=True),
        sa.Column("tier", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_file", "events", ["file_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("copies")
    op.drop_table("files")
