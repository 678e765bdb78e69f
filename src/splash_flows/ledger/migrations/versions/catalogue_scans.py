"""Catalogue state: one row per scan (catalogued with its pid, pending, excluded or failed) and the file->scan link.

Revision ID: 0002_catalogue
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0002_catalogue"
down_revision = "0002_globus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalogue_scans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_tier", sa.String(64), nullable=False),
        sa.Column("scan_key", sa.String(4096), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("pid", sa.String(256), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("locations", sa.JSON, nullable=False),
        sa.Column("files_digest", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("source_tier", "scan_key", name="uq_catalogue_scans_key"),
    )
    op.create_index("ix_catalogue_scans_state", "catalogue_scans", ["state"])
    op.create_table(
        "catalogue_files",
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("scan_id", sa.Integer, sa.ForeignKey("catalogue_scans.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_catalogue_files_scan", "catalogue_files", ["scan_id"])


def downgrade() -> None:
    op.drop_table("catalogue_files")
    op.drop_table("catalogue_scans")
