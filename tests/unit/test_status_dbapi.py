"""``status``'s light read path (``ledger.dbapi``: ``sqlite3`` / ``psycopg``, no SQLAlchemy) on both backends.

The queries are written once (``ledger.reads``); these tests check that the DB-API connection and the ledger's
SQLAlchemy engine give the same answers with them, that the light path is taken only when it can promise what
``Ledger.open`` would do (file present, schema at head, a URL it reads the same way), that it never writes a
SQLite ledger, and that it folds PostgreSQL's counter shards as the other readers of the totals do.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from splash_flows.ledger import EventKind, Ledger, reads
from splash_flows.ledger.archive import record_drill
from splash_flows.ledger.dbapi import open_reader, psycopg_conninfo, sqlite_path, status_reader
from tests.unit.test_status_overview import TARGETS, _fill

NOW = datetime.now(UTC)


def _answers(reader: reads.Reader) -> dict[str, object]:
    """Everything ``status`` reads, with each filter it offers."""
    later, earlier = NOW + timedelta(minutes=5), NOW - timedelta(days=1)
    whole = reads.totals(reader)
    filters = [reads.StatusFilter(), reads.StatusFilter(prefix="a/"), reads.StatusFilter(prefix="A/"),
               reads.StatusFilter(states=((None, "failed"),)), reads.StatusFilter(states=(("cfs", "verified"),
                                                                                          (None, "pruned"))),
               reads.StatusFilter(late_before=later, targets=TARGETS), reads.StatusFilter(source_tier="data733")]
    return {
        "whole": whole,
        "filtered": [reads.totals(reader, f) for f in filters],
        "pages": [reads.status_page(reader, f) for f in filters],
        "page 2 after a/2": reads.status_page(reader, limit=2, after=("data733", "a/2.edf")),
        "chunks": [p.rows for p in reads.iter_status(reader, chunk=2)],
        "late": [reads.count_late(reader, t, TARGETS, whole=w) for t in (later, earlier) for w in (whole, None)],
        "refused": (reads.count_refused(reader), reads.refusals(reader), reads.refusals(reader, limit=1)),
        "scans": (reads.scan_counts(reader), reads.analysis_counts(reader)),
        "drill": reads.last_drill(reader),
    }


def test_dbapi_and_sqlalchemy_give_the_same_answers(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        _fill(ledger)
        record_drill(ledger, ok=True, path="a/1.edf", bundle="b-0001.tar", detail={"bytes": 10})
        with ledger.reader() as through_sqlalchemy:
            expected = _answers(through_sqlalchemy)
    finally:
        ledger.close()
    with open_reader(ledger_url) as light:
        assert light is not None, "the light path must serve a ledger at head"
        got = _answers(light)
    assert got == expected
    if ledger_url.startswith("postgresql+psycopg://"):  # the plain scheme: psycopg 3 too (SQLAlchemy 2.1)
        with open_reader(ledger_url.replace("postgresql+psycopg://", "postgresql://")) as plain:
            assert plain is not None and _answers(plain) == expected
    # and the answers are the ledger's (not just the same mistakes twice)
    assert expected["whole"] == reads.StatusTotals(5, 150, {
        "data733": {"verified": 4, "pruned": 1}, "lamarr": {"verified": 5}, "cfs": {"verified": 3, "failed": 1}})
    pages = expected["pages"]
    assert isinstance(pages, list)
    assert [r.path for r in pages[1].rows] == ["a/1.edf", "a/2.edf", "a/3.edf", "a/4.edf"]
    assert pages[2].rows == []  # a prefix is exact, even on SQLite
    assert [r.path for r in pages[3].rows] == ["a/3.edf"]
    assert [r.path for r in pages[5].rows] == ["a/3.edf", "a/4.edf"]
    assert pages[0].rows[0].detected_at.tzinfo is not None and pages[0].rows[0].copies["lamarr"].verified_at
    assert expected["late"] == [2, 2, 0, 0]
    refused = expected["refused"]
    assert isinstance(refused, tuple) and refused[0] == 1
    assert [(r.path, r.times, r.reason) for r in refused[1]] == [("x/secret.edf", 2, "export-controlled (again)")]
    drill = expected["drill"]
    assert isinstance(drill, reads.Drill) and drill.detail["ok"] and drill.path == "a/1.edf"


def test_the_light_path_takes_only_what_it_can_serve(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'new' / 'ledger.db'}"
    with open_reader(missing) as light:
        assert light is None  # Ledger.open creates it
    with status_reader(missing) as (reader, where):  # ... which status does, as before
        assert reads.totals(reader).files == 0 and where == missing
    with open_reader(missing) as light:
        assert light is not None  # now at head
    for url in ("sqlite://", "sqlite:///:memory:", f"sqlite:///{tmp_path / 'new' / 'ledger.db'}?timeout=5",
                "postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db", "mysql://u@h/db"):
        with open_reader(url) as light:
            assert light is None, url
    assert sqlite_path("sqlite:////abs/l.db") == Path("/abs/l.db")
    assert sqlite_path("sqlite:////abs/a%20b.db") is None  # SQLAlchemy decodes %20: left to it
    assert psycopg_conninfo("postgresql://u@h/db") == ("postgresql://u@h/db", reads.PG_NO_JIT)
    assert psycopg_conninfo("postgresql+psycopg://u:p%40ss@h:5433/db?options=-c%20search_path%3Dx&sslmode=disable") \
        == ("postgresql://u:p%40ss@h:5433/db?sslmode=disable", f"-c search_path=x {reads.PG_NO_JIT}")


def test_a_ledger_behind_the_newest_migration_is_upgraded_by_the_usual_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger.open(url).close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0005_not_the_head'")
    with open_reader(url) as light:
        assert light is None
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("DROP TABLE alembic_version")
    with open_reader(url) as light:
        assert light is None


def test_the_sqlite_reader_never_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger.open(url).close()
    with open_reader(url) as light:
        assert light is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            light.execute("DELETE FROM files", {})


def test_parameters_bind_as_the_ledgers_column_types() -> None:
    assert reads.driver_sql("SELECT a FROM t WHERE b = :b AND c::text = :c_1", "postgresql") == \
        "SELECT a FROM t WHERE b = %(b)s AND c::text = %(c_1)s"
    assert reads.driver_sql("SELECT :b", "sqlite") == "SELECT :b"
    at = datetime(2026, 11, 30, 9, 12, 3, 45, tzinfo=UTC)
    assert reads.bind(at, "sqlite") == "2026-11-30 09:12:03.000045"  # what SQLAlchemy stores on SQLite
    assert reads.bind(at, "postgresql") is not None and reads.bind(at, "postgresql") == at
    with pytest.raises(ValueError, match="naive"):
        reads.bind(datetime(2026, 11, 30), "sqlite")
    assert reads.as_utc("2026-11-30 09:12:03.000045") == at
    assert reads.as_json('{"ok": true}') == {"ok": True} and reads.as_json(None) == {}


def test_event_kinds_named_by_the_light_path_are_the_ledgers() -> None:
    assert reads.REFUSED == EventKind.REFUSED


def test_status_folds_the_counter_shards_of_gone_backends(ledger_url: str) -> None:
    if not ledger_url.startswith("postgresql"):
        pytest.skip("counter shards exist on PostgreSQL only")
    ledger = Ledger.open(ledger_url)
    try:
        _fill(ledger)
        with ledger.reader() as r:
            before = reads.totals(r)
        with ledger.session() as sess:  # rows of backends long gone (no such pids), as many as a reader folds at
            sess.execute(text("INSERT INTO copy_counts (tier, state, shard, n, bytes) "
                              "SELECT 'lamarr', 'verified', 2000000000 + g, 0, 0 FROM generate_series(1, :n) g"),
                         {"n": reads.FOLD_AT + 1})
    finally:
        ledger.close()
    with open_reader(ledger_url) as light:
        assert light is not None
        assert reads.fold_if_many(light) >= reads.FOLD_AT + 1
        assert reads.totals(light) == before
    with open_reader(ledger_url) as light:
        assert light is not None
        assert int(reads.run(light, "SELECT count(*) FROM copy_counts")[0][0]) < reads.FOLD_AT
