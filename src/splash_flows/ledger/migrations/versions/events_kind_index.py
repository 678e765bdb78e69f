"""An index on the event log by kind, for the questions asked of one kind across every file.

``splash-flows status`` counts (and with ``--all`` lists) the refused paths on every call; without this index
that is a scan of the whole event log (five or more events per file: 0.4 s at 100,000 files, seconds at a
million). With it the refused events are read directly.

Revision ID: 0003_events_kind
Revises: 0002_prune
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003_events_kind"
down_revision = "0002_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_kind_id", "events", ["kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_id", table_name="events")
