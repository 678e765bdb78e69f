"""Migration 0002_prune on both backends: a ledger written at 0001 upgrades in place, and back."""

from __future__ import annotations

from alembic import command

from splash_flows.ledger import Ledger
from splash_flows.ledger import prune as lp


def test_upgrade_from_0001_keeps_rows_and_leaves_them_unscheduled(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, upgrade=False)
    cfg = ledger._alembic_config()
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO files (id, source_tier, path, size, mtime, checksum_alg, checksum, detected_at, updated_at)"
            " VALUES (1, 'data733', 'a.edf', 1, 0.0, 'xxh3_128', 'c', '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
        conn.exec_driver_sql(
            "INSERT INTO copies (file_id, tier, state, size, checksum, updated_at)"
            " VALUES (1, 'data733', 'verified', 1, 'c', '2026-01-01 00:00:00')")
    assert ledger.current_revision() == "0001"
    assert ledger.upgrade() == ledger.head_revision()  # 0002_prune, or whatever the lead chains after it
    (file,) = lp.load_files(ledger, [1]).values()
    assert file.copies["data733"].prune_due_at is None and file.copies["data733"].claimed_by is None
    assert lp.unscheduled_counts(ledger, ["data733"]) == {"data733": 1}
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert ledger.current_revision() == "0001"
    ledger.close()
