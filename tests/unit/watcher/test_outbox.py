"""The outbox table and the "already verified" query, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from splash_flows.context import Context
from splash_flows.errors import LedgerError
from splash_flows.ledger.models import utcnow
from splash_flows.ledger.outbox import Outbox, verified_versions


def test_upgraded_ledger_has_the_outbox_migration_and_table(ctx: Context) -> None:
    script = ScriptDirectory.from_config(ctx.ledger._alembic_config())
    assert "0002_outbox" in {rev.revision for rev in script.walk_revisions()}
    assert ctx.ledger.current_revision() == ctx.ledger.head_revision()
    columns = {c["name"] for c in inspect(ctx.ledger.engine).get_columns("outbox")}
    assert columns == {"id", "created_at", "idempotency_key", "deployment", "paths", "state", "attempts",
                       "last_error", "flow_run_id", "sent_at"}


def test_entries_are_pending_until_sent_and_come_back_oldest_first(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    first = outbox.add("dispatcher/run_733_dispatcher", ["s1/a.edf", "s1/b c.edf"])
    second = outbox.add("dispatcher/run_733_dispatcher", ["s2/ü.edf"])
    assert first.state == "pending" and first.attempts == 0 and first.paths == ("s1/a.edf", "s1/b c.edf")
    assert first.idempotency_key != second.idempotency_key
    assert outbox.next_pending() == first

    outbox.record_attempt(first.id, "connection refused")
    again = outbox.get(first.id)
    assert again is not None and again.state == "pending" and again.attempts == 1
    assert again.last_error == "connection refused" and again.idempotency_key == first.idempotency_key
    assert outbox.next_pending() == again  # still first in line

    outbox.mark_sent(first.id, "run-1")
    sent = outbox.get(first.id)
    assert sent is not None and sent.state == "sent" and sent.flow_run_id == "run-1" and sent.sent_at is not None
    assert sent.attempts == 2
    assert outbox.next_pending() == second

    outbox.mark_failed(second.id, "422 bad parameters")
    assert outbox.next_pending() is None
    assert outbox.counts() == {"pending": 0, "sent": 1, "failed": 1}
    assert [e.state for e in outbox.entries()] == ["sent", "failed"]
    assert [e.id for e in outbox.entries("failed")] == [second.id]


def test_in_flight_is_pending_plus_recently_sent(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    old = outbox.add("d/x", ["old.edf"])
    outbox.mark_sent(old.id, "run-old")
    pending = outbox.add("d/x", ["pending.edf"])
    failed = outbox.add("d/x", ["failed.edf"])
    outbox.mark_failed(failed.id, "refused")
    ids = [e.id for e in outbox.in_flight(utcnow() - timedelta(hours=1))]
    assert ids == [old.id, pending.id]
    assert [e.id for e in outbox.in_flight(utcnow() + timedelta(seconds=1))] == [pending.id]


def test_empty_batches_and_unknown_entries_are_errors(ctx: Context) -> None:
    outbox = Outbox(ctx.ledger)
    with pytest.raises(LedgerError, match="empty batch"):
        outbox.add("d/x", [])
    with pytest.raises(LedgerError, match="does not exist"):
        outbox.mark_sent(12345, "run")


def test_verified_versions_needs_every_target_and_the_current_version(ctx: Context) -> None:
    ledger = ctx.ledger
    rec = {p: ledger.register_source("data733", p, size=10, mtime=1.5, checksum_alg="xxh3_128", checksum="c" + p)
           for p in ("a.edf", "b.edf", "c.edf")}
    for tier in ("lamarr", "cfs"):
        ledger.record_verified(rec["a.edf"], tier, checksum="ca.edf", size=10, skipped=False)
    ledger.record_verified(rec["b.edf"], "lamarr", checksum="cb.edf", size=10, skipped=False)
    ledger.record_failed("b.edf", "cfs", "disk full", source=rec["b.edf"])
    ledger.record_verified(rec["c.edf"], "lamarr", checksum="cc.edf", size=10, skipped=False)
    ledger.record_verified(rec["c.edf"], "cfs", checksum="cc.edf", size=10, skipped=False)
    # c changes on the source: its copies become stale, so it is no longer safe
    ledger.register_source("data733", "c.edf", size=11, mtime=2.5, checksum_alg="xxh3_128", checksum="new")
    got = verified_versions(ledger, "data733", ["lamarr", "cfs"], ["a.edf", "b.edf", "c.edf", "missing.edf"])
    assert got == {"a.edf": (10, 1.5)}
    assert verified_versions(ledger, "data733", ["lamarr"], ["a.edf", "b.edf"]) == {"a.edf": (10, 1.5),
                                                                                    "b.edf": (10, 1.5)}
    assert verified_versions(ledger, "other", ["lamarr", "cfs"], ["a.edf"]) == {}
