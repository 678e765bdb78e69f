"""Monitoring: alert state and sent messages; indexes for the data-safety page (files by detection time) and
for reading the event log by kind (alerts, metrics).

Revision ID: 0003_monitoring
Revises: 0002_prune
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from splash_flows.ledger.models import UTCDateTime

revision = "0003_monitoring"
down_revision = "0003_analysis"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "alert_messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("title", sa.String(256), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("kinds", sa.JSON, nullable=False),
        sa.Column("delivered", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_alert_messages_at", "alert_messages", ["at"])
    op.create_index("ix_files_detected_at", "files", ["detected_at"])
    op.create_index("ix_events_kind_id", "events", ["kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_id", table_name="events")
    op.drop_index("ix_files_detected_at", table_name="files")
    op.drop_index("ix_alert_messages_at", table_name="alert_messages")
    op.drop_table("alert_messages")
    op.drop_table("alert_state")
