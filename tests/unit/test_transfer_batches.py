"""The ``transfer_batches`` ledger table (migration 0002_globus) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from splash_flows.ledger import Ledger
from splash_flows.ledger.models import Base, BatchStatus
from splash_flows.ledger.transfers import BatchEnd, TransferBatches, items_digest

DEADLINE = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)


def open_batch(store: TransferBatches, digest: str, submission_id: str) -> object:
    return store.open(kind="transfer", source_tier="data733", dest_tier="cfs", source_collection="s",
                      dest_collection="d", digest=digest, items=[["a", "a", "sum", 1]], label="l",
                      submission_id=submission_id, deadline=DEADLINE)


def test_migration_matches_the_models(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        with ledger.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diff if "transfer_batches" in repr(d)] == []
    finally:
        ledger.close()


def test_one_unfinished_batch_per_items_and_any_number_of_finished(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        store = TransferBatches(ledger)
        digest = items_digest("transfer", "data733", "cfs", [("a", "a", "sum")])
        assert digest != items_digest("transfer", "data733", "cfs", [("a", "a", "other")])
        first = open_batch(store, digest, "sub-1")
        again = open_batch(store, digest, "sub-2")  # another process raced us: the first one is returned
        assert again == first and store.by_submission("sub-2") is None
        found = store.find_open("transfer", "data733", "cfs", digest)
        assert found is not None and found.submission_id == "sub-1" and found.unfinished
        store.mark_submitted(found.id, "task-1")
        store.finish(found.id, BatchEnd(BatchStatus.FAILED, bytes_transferred=5, items_ok=0, items_failed=1))
        assert store.find_open("transfer", "data733", "cfs", digest) is None
        second = open_batch(store, digest, "sub-3")  # a retry after the end is a new batch
        assert [b.submission_id for b in store.recent()] == ["sub-3", "sub-1"]
        assert store.get(found.id).status == "failed" and second != first
    finally:
        ledger.close()
