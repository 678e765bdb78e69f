"""Counters kept by the database: files and bytes per source tier, copies and bytes per (tier, state).

``status`` and the data-safety page show these totals first; counting them meant reading every row (3.8 s for
10M copies on PostgreSQL, most of a minute for the page's totals on SQLite with 1M files). The counters are kept
by triggers on ``files`` and ``copies``, so they change in the same transaction as the rows -- whichever code
writes them, bulk statements and ``ON DELETE CASCADE`` included -- and only ever by ``n = n + delta``:

* PostgreSQL: statement-level triggers with transition tables add each statement's deltas, grouped, to the row
  of the writing backend (``shard = pg_backend_pid()``). A backend runs one transaction at a time, so two
  concurrent writers never update the same counter row: no lock waits between writers and no deadlocks. Rows
  of backends that have gone are folded into shard 0 (``ledger.counters.fold``).
* SQLite: row-level triggers update shard 0 (SQLite has one writer at a time).

The upgrade counts the existing rows once (the backfill), inside the migration's transaction: the triggers are
created first, and on PostgreSQL the ``LOCK`` below keeps writers out until the commit, so no write is counted
twice or missed.

Revision ID: 0004_ledger_counters
Revises: 0003_scale_indexes
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ledger_counters"
down_revision = "0003_scale_indexes"
branch_labels = None
depends_on = None

#: counters table -> (the table it counts, the columns it counts by); ``size`` is summed into ``bytes``
_COUNTED = {
    "copy_counts": ("copies", ("tier", "state")),
    "file_counts": ("files", ("source_tier",)),
}


def _pg_statements(counts: str, table: str, keys: tuple[str, ...]) -> list[str]:
    cols = ", ".join(keys)
    on = ", ".join(keys)
    upsert = (f"INSERT INTO {counts} AS c ({cols}, shard, n, bytes) {{select}} "
              f"ON CONFLICT ({on}, shard) DO UPDATE SET n = c.n + excluded.n, bytes = c.bytes + excluded.bytes")
    deltas = {
        "ins": f"SELECT {cols}, pg_backend_pid(), count(*), coalesce(sum(size), 0) FROM new_rows GROUP BY {cols} "
               f"ORDER BY {cols}",
        "del": f"SELECT {cols}, pg_backend_pid(), -count(*), -coalesce(sum(size), 0) FROM old_rows GROUP BY {cols} "
               f"ORDER BY {cols}",
        "upd": f"SELECT {cols}, pg_backend_pid(), sum(d), sum(b) FROM ("
               f"SELECT {cols}, 1 AS d, coalesce(size, 0) AS b FROM new_rows UNION ALL "
               f"SELECT {cols}, -1, -coalesce(size, 0) FROM old_rows) AS t GROUP BY {cols} "
               f"HAVING sum(d) <> 0 OR sum(b) <> 0 ORDER BY {cols}",
    }
    out = []
    for op_name, event, refs in (("ins", "INSERT", "NEW TABLE AS new_rows"),
                                 ("del", "DELETE", "OLD TABLE AS old_rows"),
                                 ("upd", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows")):
        fn = f"splash_{counts}_{op_name}"
        out.append(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   f"{upsert.format(select=deltas[op_name])}; RETURN NULL; END $$")
        out.append(f"CREATE TRIGGER {table}_{counts}_{op_name} AFTER {event} ON {table} REFERENCING {refs} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


def _sqlite_statements(counts: str, table: str, keys: tuple[str, ...]) -> list[str]:
    def add(row: str, sign: str) -> str:
        where = " AND ".join(f"{k} = {row}.{k}" for k in keys)
        values = ", ".join(f"{row}.{k}" for k in keys)
        return (f"INSERT OR IGNORE INTO {counts} ({', '.join(keys)}, shard, n, bytes) VALUES ({values}, 0, 0, 0); "
                f"UPDATE {counts} SET n = n {sign} 1, bytes = bytes {sign} coalesce({row}.size, 0) "
                f"WHERE {where} AND shard = 0;")

    watched = ", ".join((*keys, "size"))
    return [
        f"CREATE TRIGGER {table}_{counts}_ins AFTER INSERT ON {table} BEGIN {add('NEW', '+')} END",
        f"CREATE TRIGGER {table}_{counts}_del AFTER DELETE ON {table} BEGIN {add('OLD', '-')} END",
        f"CREATE TRIGGER {table}_{counts}_upd AFTER UPDATE OF {watched} ON {table} "
        f"BEGIN {add('OLD', '-')} {add('NEW', '+')} END",
    ]


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for counts, (table, keys) in _COUNTED.items():
        key_cols = [sa.Column(k, sa.String(64 if k != "state" else 32), nullable=False) for k in keys]
        op.create_table(counts, *key_cols,
                        sa.Column("shard", sa.Integer, nullable=False),
                        sa.Column("n", sa.BigInteger, nullable=False),
                        sa.Column("bytes", sa.BigInteger, nullable=False),
                        sa.PrimaryKeyConstraint(*keys, "shard", name=f"pk_{counts}"))
        if pg:
            op.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")  # writers wait for the commit
        for statement in (_pg_statements if pg else _sqlite_statements)(counts, table, keys):
            op.execute(statement)
        cols = ", ".join(keys)
        op.execute(f"INSERT INTO {counts} ({cols}, shard, n, bytes) "
                   f"SELECT {cols}, 0, count(*), coalesce(sum(size), 0) FROM {table} GROUP BY {cols}")


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for counts, (table, _keys) in _COUNTED.items():
        for op_name in ("ins", "del", "upd"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{counts}_{op_name}" + (f" ON {table}" if pg else ""))
            if pg:
                op.execute(f"DROP FUNCTION IF EXISTS splash_{counts}_{op_name}()")
        op.drop_table(counts)
