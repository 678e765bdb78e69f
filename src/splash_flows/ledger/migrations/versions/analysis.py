"""Analysis: calibrations valid per time range, and the reduction state of each scan (issue 11).

Revision ID: 0003_analysis
Revises: 0002_prune
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0003_analysis"
down_revision = "0003_archive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("valid_from", UTCDateTime, nullable=False),
        sa.Column("poni", sa.Text, nullable=False),
        sa.Column("poni_sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(4096), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("added_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("valid_from", name="uq_calibrations_valid_from"),
    )
    op.create_table(
        "analysis_scans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_tier", sa.String(64), nullable=False),
        sa.Column("scan_key", sa.String(4096), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=True),
        sa.Column("calibration_id", sa.Integer, sa.ForeignKey("calibrations.id"), nullable=True),
        sa.Column("backend", sa.String(32), nullable=True),
        sa.Column("merge", sa.String(16), nullable=True),
        sa.Column("results_folder", sa.String(4096), nullable=True),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("pid", sa.String(256), nullable=True),
        sa.Column("catalogue_error", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("source_tier", "scan_key", name="uq_analysis_scans_key"),
    )
    op.create_index("ix_analysis_scans_state", "analysis_scans", ["state"])


def downgrade() -> None:
    op.drop_index("ix_analysis_scans_state", table_name="analysis_scans")
    op.drop_table("analysis_scans")
    op.drop_table("calibrations")
