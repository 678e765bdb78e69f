"""Tape archive: bundles (tar or single file) on the archive tier and their members (the manifest).

Revision ID: 0003_archive
Revises: 0002_prune
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0003_archive"
down_revision = "0002_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archive_bundles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("name", sa.String(4096), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("proposal", sa.String(128), nullable=False),
        sa.Column("cycle", sa.String(16), nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("packed_size", sa.BigInteger, nullable=True),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("checksum_alg", sa.String(32), nullable=False),
        sa.Column("manifest_digest", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("job_script", sa.Text, nullable=True),
        sa.Column("job_log", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("catalogue_state", sa.String(32), nullable=True),
        sa.Column("catalogue_error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("verified_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("tier", "name", name="uq_archive_bundles_name"),
    )
    op.create_index("ix_archive_bundles_state", "archive_bundles", ["tier", "state"])
    op.create_table(
        "archive_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("bundle_id", sa.Integer, sa.ForeignKey("archive_bundles.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("member", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.String(128), nullable=False),
        sa.UniqueConstraint("tier", "file_id", name="uq_archive_members_file"),
    )
    op.create_index("ix_archive_members_bundle", "archive_members", ["bundle_id"])


def downgrade() -> None:
    op.drop_table("archive_members")
    op.drop_table("archive_bundles")
