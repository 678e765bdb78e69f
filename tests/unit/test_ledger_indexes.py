"""The ledger's read paths use their indexes on PostgreSQL (checked on small data; the times at 10M copy rows are
in docs/PERFORMANCE.md, from ``bench/ledger_scale.py``).

Each query is run through the ledger function a command calls; every statement it sent is explained with
sequential scans disabled, and the plan must name the index the query is meant to use -- and no ``Seq Scan``.
With seqscan off the planner still falls back to a sequential scan when no index can serve a statement, so a
missing or unusable index fails here. No timing is asserted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from splash_flows.ledger import Ledger
from tests.support.explain import captured, explain
from tests.support.ledger_fill import fill, queries
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

FILES = 20_000  # enough rows that an index beats reading the table, as it does at 10M
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FILES_IX = {"uq_files_source_path", "ix_files_tier_path_pattern"}  # both lead with (source_tier, path)
COPIES_BY_FILE = {"uq_copies_file_tier"}
COPIES_BY_TIER = {"ix_copies_tier_state_due"}
# query name (tests.support.ledger_fill.queries) -> for each statement it runs, in order, the indexes it may use
# (on small data the planner may prefer another index than at 10M rows; docs/PERFORMANCE.md shows the big plans)
EXPECTED: dict[str, list[set[str]]] = {
    "status page": [FILES_IX, COPIES_BY_FILE],
    # the counters (migration 0004): the fold check, the files, the copies -- a few rows each, by primary key
    "status totals": [{"pk_copy_counts"}, {"pk_event_counts"}, {"pk_file_counts"}, {"pk_copy_counts"}],
    # a state on any tier: the tiers the counters hold such copies on, each by (tier, state); then their copies
    "status --state failed": [COPIES_BY_TIER | FILES_IX, COPIES_BY_FILE],
    "prune: unscheduled": [{"ix_copies_tier_state_due"}],
    "prune: count due now": [COPIES_BY_TIER],
    # due pages: an index-only probe (few or many due?), then the page itself, then the files and their copies
    "prune: due page now": [COPIES_BY_TIER, COPIES_BY_TIER | COPIES_BY_FILE],
    "prune: count due 7 d": [COPIES_BY_TIER],
    "prune: due page 7 d": [COPIES_BY_TIER, COPIES_BY_TIER | COPIES_BY_FILE, {"files_pkey"}, COPIES_BY_FILE],
    "reconcile chunk": [FILES_IX, COPIES_BY_FILE | COPIES_BY_TIER],
    # GROUP BY files.id: on 20k rows the planner walks files_pkey in order and filters; at 1M files it probes
    # the path index (docs/PERFORMANCE.md). Either way the copies are reached by file id.
    "rescan chunk": [FILES_IX | COPIES_BY_FILE],
    # the outbox paths by path, then only the entries they name, by primary key
    "rescan: in flight": [{"ix_outbox_paths_path"}, {"outbox_pkey"}],
    "rescan: settled": [{"scan_folders_pkey"}],
    "catalogue pending": [{"ix_catalogue_scans_state_updated"}, {"ix_catalogue_files_scan"}],
    "catalogue folder": [FILES_IX, COPIES_BY_FILE],
    # the page's totals: the counters (whether to fold them first), then the unsafe copies by (tier, state), then the
    # files they belong to
    "page: totals": [{"pk_copy_counts"}, {"pk_event_counts"}, {"pk_file_counts"}, {"pk_copy_counts"}, COPIES_BY_TIER],
    "page: per day": [{"ix_files_detected_at"}],
    "page: late files": [COPIES_BY_TIER, COPIES_BY_TIER],  # unsafe copies per (tier, state) first
}


# Sequential scans off, and joins that read a whole side (hash, merge) too: what remains must reach rows through
# an index. On a few thousand rows the planner may rightly prefer reading a table; at 10M it does not.
NO_SCANS = ["enable_seqscan = off", "enable_hashjoin = off", "enable_mergejoin = off"]


def _short(statement: str) -> str:
    one = " ".join(statement.split())
    return one if len(one) < 300 else one[:300] + " ..."


def _filled(server: PostgresServer, name: str, collation: str | None = None) -> Ledger:
    url = server.create_database(name) if collation is None else _create_with_collation(server, name, collation)
    ledger = Ledger.open(url)
    fill(ledger, FILES, NOW)
    return ledger


def _create_with_collation(server: PostgresServer, name: str, collation: str) -> str:
    engine = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LC_COLLATE '{collation}' "
                             f"LC_CTYPE '{collation}'"))
    engine.dispose()
    return server.url(name)


@pytest.fixture(scope="module")
def ledger(postgres_server: PostgresServer) -> Iterator[Ledger]:
    led = _filled(postgres_server, f"ledger_indexes_{os.getpid()}")
    yield led
    led.close()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_query_uses_its_indexes(ledger: Ledger, name: str) -> None:
    calls = {n: fn for n, _what, fn in queries(ledger, FILES, NOW)}
    with captured(ledger.engine) as statements:
        calls[name]()
    expected = EXPECTED[name]
    assert len(statements) >= len(expected), f"{name} ran {[_short(s) for s, _ in statements]}"
    for (statement, params), indexes in zip(statements, expected, strict=False):
        plan = explain(ledger.engine, statement, params, settings=NO_SCANS)
        assert "Seq Scan" not in plan, f"{name}: a sequential scan remains\n{_short(statement)}\n{plan}"
        assert any(ix in plan for ix in indexes), f"{name}: expected one of {indexes}\n{_short(statement)}\n{plan}"


def test_every_query_returns_rows_on_the_fill(ledger: Ledger) -> None:
    """The fill exercises each path (a plan over an empty result proves little)."""
    results = {n: fn() for n, _what, fn in queries(ledger, FILES, NOW)}
    empty = {n for n, r in results.items() if not r}
    # nothing verified is past due (the fill prunes every past-due data733 copy), as in steady operation
    assert empty <= {"prune: count due now", "prune: due page now"}, empty


def test_prefix_match_uses_the_pattern_index_under_a_linguistic_collation(postgres_server: PostgresServer) -> None:
    """Under a collation other than C, LIKE 'folder/%' cannot use the plain (source_tier, path) index; migration
    0003 adds one with varchar_pattern_ops there (and only there)."""
    led = _filled(postgres_server, f"ledger_collate_{os.getpid()}", "C.UTF-8")
    try:
        calls = {n: fn for n, _what, fn in queries(led, FILES, NOW)}
        with captured(led.engine) as statements:
            calls["catalogue folder"]()
        statement, params = statements[0]
        plan = explain(led.engine, statement, params, settings=["enable_seqscan = off"])
        assert "ix_files_tier_path_pattern" in plan, plan
    finally:
        led.close()
    led = Ledger.open(_create_with_collation(postgres_server, f"ledger_c_{os.getpid()}", "C"))
    try:
        with led.engine.connect() as conn:
            names = set(conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'files'")).scalars())
        assert "ix_files_tier_path_pattern" not in names  # C collation: the unique index serves prefixes already
    finally:
        led.close()


def test_due_pages_are_the_same_whichever_way_they_are_read(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """``due_files`` reads few due copies through the due-date index, many by walking file ids: same pages."""
    from datetime import timedelta

    from splash_flows.ledger import prune as ledger_prune

    far = datetime(9999, 1, 1, tzinfo=UTC)

    def pages() -> list[list[int]]:
        out, after = [], 0
        while files := ledger_prune.due_files(ledger, tiers=["data733", "lamarr"], until=NOW + timedelta(days=30),
                                              after_file_id=after, limit=100, claimed_before=far):
            out.append([f.id for f in files])
            after = files[-1].id
        return out

    few = pages()
    monkeypatch.setattr(ledger_prune, "FEW_DUE", 0)  # every probe now says "many"
    assert pages() == few and sum(len(p) for p in few) > 100


def test_a_state_on_any_tier_reaches_copies_by_tier_and_state(ledger: Ledger) -> None:
    """``status --state failed`` (no tier named): the copies are found through the ``(tier, state)`` index with
    both columns as its condition (the tiers the counters hold such copies on), not by reading every copy's
    state; at 10M copies the difference is seconds."""
    calls = {n: fn for n, _what, fn in queries(ledger, FILES, NOW)}
    with captured(ledger.engine) as statements:
        calls["status --state failed"]()
    statement, params = statements[0]
    plan = explain(ledger.engine, statement, params, settings=NO_SCANS)
    assert "ix_copies_tier_state_due" in plan and "Index Cond: (((tier)" in plan and "state)::text = " in plan, \
        f"{_short(statement)}\n{plan}"
