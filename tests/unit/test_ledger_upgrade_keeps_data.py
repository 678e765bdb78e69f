"""Upgrades keep data (issue 13 item 7): a ledger created by the OLDEST migration, filled with rows of every state,
is upgraded one revision at a time to head -- every later table filled with rows of every state as soon as it
exists -- and at head every row reads back exactly as written, on SQLite and on PostgreSQL. Downgrading to the
oldest revision keeps the oldest tables' rows, and upgrading again works.

The rows are made from the reflected schema of each revision (a value per column type, every nullable column
filled), so a migration another change adds later is covered without editing this file; ``STATES`` lists the
state columns whose every value must be present (add a row there for a new state column).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from splash_flows.ledger import Ledger
from splash_flows.ledger.catalogue import scan_counts
from splash_flows.ledger.models import BatchStatus, CatalogueState, CopyState, EventKind, OutboxState

#: (table, column) -> every value that column may hold; each gets a row.
STATES: dict[tuple[str, str], type[StrEnum]] = {
    ("copies", "state"): CopyState,
    ("events", "kind"): EventKind,
    ("transfer_batches", "status"): BatchStatus,
    ("catalogue_scans", "state"): CatalogueState,
    ("outbox", "state"): OutboxState,
}
ODD = "ünï/çødé ⟨scan⟩"  # every string also carries non-ASCII text, which must survive too
Snapshot = dict[str, dict[tuple[Any, ...], dict[str, Any]]]  # table -> primary key -> column -> value


def revisions_oldest_first(ledger: Ledger) -> list[str]:
    script = ScriptDirectory.from_config(ledger._alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


def _value(column: sa.Column[Any], i: int, parents: dict[str, list[Any]]) -> Any:
    """A value for ``column`` in row ``i``: distinct per row (unique constraints hold), of the column's type."""
    for fk in column.foreign_keys:
        ids = parents.get(fk.column.table.name) or []
        assert ids, f"{column.table.name}.{column.name} refers to {fk.column.table.name}, which has no rows"
        return ids[i % len(ids)]
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return i % 2 == 0
    if isinstance(kind, sa.Integer):
        return 1000 + i
    if isinstance(kind, sa.Float | sa.Numeric):
        return i + 0.5
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC) + timedelta(minutes=i, microseconds=i)
    if isinstance(kind, sa.JSON):
        return {"row": i, "text": ODD, "list": [i, ODD]}
    if isinstance(kind, sa.String | sa.Text):
        text = f"{column.name}-{i}-{ODD}"
        length = getattr(kind, "length", None)
        return text[:length] if length else text
    raise AssertionError(f"no sample value for {column.table.name}.{column.name} of type {kind!r}")


def fill(conn: sa.Connection, table: sa.Table, parents: dict[str, list[Any]]) -> None:
    """Insert rows of every state into ``table`` (at least three)."""
    states = {col: list(enum) for (name, col), enum in STATES.items() if name == table.name and col in table.c}
    count = max([3, *(len(v) for v in states.values())])
    rows = []
    for i in range(count):
        row = {c.name: _value(c, i, parents) for c in table.columns}
        for col, values in states.items():
            row[col] = str(values[i % len(values)])
        rows.append(row)
    conn.execute(table.insert(), rows)
    pk = list(table.primary_key.columns)
    if len(pk) == 1:
        parents[table.name] = [r[pk[0].name] for r in rows]


def snapshot(conn: sa.Connection, tables: list[str] | None = None) -> Snapshot:
    meta = sa.MetaData()
    meta.reflect(conn)
    out: Snapshot = {}
    for name, table in meta.tables.items():
        if name == "alembic_version" or (tables is not None and name not in tables):
            continue
        pk = [c.name for c in table.primary_key.columns]
        out[name] = {tuple(r[k] for k in pk): dict(r) for r in conn.execute(sa.select(table)).mappings()}
    return out


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, datetime) and isinstance(after, datetime):  # SQLite hands back naive UTC
        return before.replace(tzinfo=before.tzinfo or UTC) == after.replace(tzinfo=after.tzinfo or UTC)
    return bool(before == after)


def assert_kept(before: Snapshot, after: Snapshot) -> None:
    """Every row of ``before`` is in ``after`` with every column it had unchanged (new columns may be added)."""
    for table, rows in before.items():
        assert table in after, f"table {table} is gone"
        assert set(rows) <= set(after[table]), f"{table}: rows lost: {sorted(set(rows) - set(after[table]))}"
        for key, row in rows.items():
            now = after[table][key]
            changed = {c: (v, now.get(c)) for c, v in row.items() if not _same(v, now.get(c))}
            assert not changed, f"{table} row {key}: changed {changed}"


def _alembic(ledger: Ledger, action: str, revision: str) -> None:
    cfg = ledger._alembic_config()
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def _filled_at_every_revision(ledger: Ledger) -> Iterator[tuple[str, Snapshot]]:
    """Walk the chain from the oldest revision; at each, fill the tables that revision created. Yields
    (revision, snapshot after filling)."""
    parents: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for revision in revisions_oldest_first(ledger):
        _alembic(ledger, "upgrade", revision)
        assert ledger.current_revision() == revision
        with ledger.engine.begin() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            for table in meta.sorted_tables:  # parents before children
                if table.name not in seen and table.name != "alembic_version":
                    fill(conn, table, parents)
                    seen.add(table.name)
            yield revision, snapshot(conn)


def test_a_ledger_from_the_oldest_migration_upgrades_to_head_with_every_row_intact(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, upgrade=False)
    revisions = revisions_oldest_first(ledger)
    assert revisions[0] == "0001" and revisions[-1] == ledger.head_revision()
    snapshots = dict(_filled_at_every_revision(ledger))
    oldest = snapshots[revisions[0]]
    assert {(t, c) for (t, c) in STATES if t in oldest} == {("copies", "state"), ("events", "kind")}
    with ledger.engine.connect() as conn:
        at_head = snapshot(conn)
    for taken in snapshots.values():
        assert_kept(taken, at_head)
    # the head's own code reads what the oldest schema held: every copy state, every catalogue state
    reopened = Ledger.open(ledger_url)  # upgrade is a no-op at head
    assert reopened.current_revision() == ledger.head_revision()
    rows = reopened.status()
    assert {c.state for r in rows for c in r.copies.values()} == {str(s) for s in CopyState}
    if "catalogue_scans" in at_head:
        assert set(scan_counts(reopened)) == {str(s) for s in CatalogueState}
    reopened.close()

    # downgrade is tested, not merely refused: back to the oldest revision the oldest tables keep their rows
    _alembic(ledger, "downgrade", revisions[0])
    assert ledger.current_revision() == revisions[0]
    with ledger.engine.connect() as conn:
        assert_kept(oldest, snapshot(conn, list(oldest)))
    assert ledger.upgrade() == ledger.head_revision()
    with ledger.engine.connect() as conn:
        assert_kept(oldest, snapshot(conn, list(oldest)))
    ledger.close()
