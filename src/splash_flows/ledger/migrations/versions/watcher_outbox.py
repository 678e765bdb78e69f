"""Watcher outbox: batches written before the dispatcher deployment is triggered, replayed until Prefect accepts.

Revision ID: 0002_outbox
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0002_outbox"
down_revision = "0002_catalogue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("deployment", sa.String(512), nullable=False),
        sa.Column("paths", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("sent_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    )
    op.create_index("ix_outbox_state_id", "outbox", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_state_id", table_name="outbox")
    op.drop_table("outbox")
