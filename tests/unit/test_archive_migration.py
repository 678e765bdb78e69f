"""Migration 0003_archive on both backends: bundles and members appear, go on downgrade, and come back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from splash_flows.ledger import Ledger


def test_archive_tables_upgrade_and_downgrade(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    assert {"archive_bundles", "archive_members"} <= set(inspect(ledger.engine).get_table_names())
    cfg = ledger._alembic_config()
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002_prune")
    assert not {"archive_bundles", "archive_members"} & set(inspect(ledger.engine).get_table_names())
    assert ledger.upgrade() == ledger.head_revision()
    assert {"archive_bundles", "archive_members"} <= set(inspect(ledger.engine).get_table_names())
    ledger.close()
