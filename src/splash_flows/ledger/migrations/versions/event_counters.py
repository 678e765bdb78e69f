"""Event counters kept by the database: events per (kind, tier), and the detected -> verified latency histogram.

``/metrics`` exposes the event log as Prometheus counters (``splash_events_total``) and a histogram
(``splash_step_latency_seconds``). Folding them from the log at scrape time meant reading every event once per
server start: 60 s for the first scrape of a ledger with a million files (3M events) on SQLite. They are now
kept like the totals of ``0004_ledger_counters``: triggers add every inserted event to ``event_counts`` and every
``verified`` event's latency (its time minus its file's ``detected_at``) to ``latency_counts``, in the writing
transaction, as ``n = n + 1``. Only inserts count: the log is append-only, and a Prometheus counter never goes
down (an event whose file was later deleted still happened).

* PostgreSQL: statement-level triggers with a transition table, one grouped upsert per statement into the
  writing backend's row (``shard = pg_backend_pid()``), folded into shard 0 like the other counters.
* SQLite: row-level triggers, shard 0.

The latency buckets are baked into the trigger (``LATENCY_BUCKETS``, the same tuple as
``ledger.counters.LATENCY_BUCKETS``; a test checks they agree). ``bucket`` is the index of the first bound the
latency does not exceed, ``len(LATENCY_BUCKETS)`` for ``+Inf``.

The upgrade counts the existing log once, after creating the triggers; on PostgreSQL the ``LOCK`` keeps writers
out until the commit, so no event is counted twice or missed.

Revision ID: 0006_event_counters
Revises: 0004_ledger_counters
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_event_counters"
down_revision = "0005_watcher_scan_state"
branch_labels = None
depends_on = None

#: upper bounds (seconds) of the detected -> verified histogram; frozen here (a change is a new migration)
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                   86400.0)


def _bucket(lat: str) -> str:
    whens = " ".join(f"WHEN {lat} <= {b!r} THEN {i}" for i, b in enumerate(LATENCY_BUCKETS))
    return f"CASE {whens} ELSE {len(LATENCY_BUCKETS)} END"


def _pg_statements() -> list[str]:
    lat = "extract(epoch FROM e.at - f.detected_at)::float8"
    body = (
        "INSERT INTO event_counts AS c (kind, tier, shard, n) "
        "SELECT kind, coalesce(tier, ''), pg_backend_pid(), count(*) FROM new_rows "
        "GROUP BY kind, coalesce(tier, '') ORDER BY 1, 2 "
        "ON CONFLICT (kind, tier, shard) DO UPDATE SET n = c.n + excluded.n; "
        "INSERT INTO latency_counts AS c (tier, bucket, shard, n, seconds) "
        f"SELECT tier, bucket, pg_backend_pid(), count(*), sum(lat) FROM ("
        f"SELECT coalesce(e.tier, '') AS tier, {_bucket(lat)} AS bucket, {lat} AS lat "
        "FROM new_rows e JOIN files f ON f.id = e.file_id WHERE e.kind = 'verified') AS v "
        "GROUP BY tier, bucket ORDER BY 1, 2 "
        "ON CONFLICT (tier, bucket, shard) DO UPDATE SET n = c.n + excluded.n, seconds = c.seconds + excluded.seconds;"
    )
    return [
        f"CREATE FUNCTION splash_event_counts_ins() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
        "RETURN NULL; END $$",
        "CREATE TRIGGER events_event_counts_ins AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION splash_event_counts_ins()",
    ]


def _sqlite_statements() -> list[str]:
    lat = "((julianday(NEW.at) - julianday(f.detected_at)) * 86400.0)"
    return [
        "CREATE TRIGGER events_event_counts_ins AFTER INSERT ON events BEGIN "
        "INSERT INTO event_counts (kind, tier, shard, n) VALUES (NEW.kind, coalesce(NEW.tier, ''), 0, 1) "
        "ON CONFLICT (kind, tier, shard) DO UPDATE SET n = n + 1; END",
        "CREATE TRIGGER events_latency_counts_ins AFTER INSERT ON events "
        "WHEN NEW.kind = 'verified' AND NEW.file_id IS NOT NULL BEGIN "
        "INSERT INTO latency_counts (tier, bucket, shard, n, seconds) "
        f"SELECT coalesce(NEW.tier, ''), {_bucket(lat)}, 0, 1, {lat} FROM files f WHERE f.id = NEW.file_id "
        "ON CONFLICT (tier, bucket, shard) DO UPDATE SET n = n + 1, seconds = seconds + excluded.seconds; END",
    ]


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    op.create_table("event_counts",
                    sa.Column("kind", sa.String(32), nullable=False),
                    sa.Column("tier", sa.String(64), nullable=False),
                    sa.Column("shard", sa.Integer, nullable=False),
                    sa.Column("n", sa.BigInteger, nullable=False),
                    sa.PrimaryKeyConstraint("kind", "tier", "shard", name="pk_event_counts"))
    op.create_table("latency_counts",
                    sa.Column("tier", sa.String(64), nullable=False),
                    sa.Column("bucket", sa.Integer, nullable=False),
                    sa.Column("shard", sa.Integer, nullable=False),
                    sa.Column("n", sa.BigInteger, nullable=False),
                    sa.Column("seconds", sa.Float, nullable=False),
                    sa.PrimaryKeyConstraint("tier", "bucket", "shard", name="pk_latency_counts"))
    if pg:
        op.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")  # writers wait for the commit
    for statement in _pg_statements() if pg else _sqlite_statements():
        op.execute(statement)
    op.execute("INSERT INTO event_counts (kind, tier, shard, n) "
               "SELECT kind, coalesce(tier, ''), 0, count(*) FROM events GROUP BY kind, coalesce(tier, '')")
    lat = ("extract(epoch FROM e.at - f.detected_at)::float8" if pg
           else "((julianday(e.at) - julianday(f.detected_at)) * 86400.0)")
    op.execute("INSERT INTO latency_counts (tier, bucket, shard, n, seconds) "
               "SELECT tier, bucket, 0, count(*), sum(lat) FROM ("
               f"SELECT coalesce(e.tier, '') AS tier, {_bucket(lat)} AS bucket, {lat} AS lat "
               "FROM events e JOIN files f ON f.id = e.file_id WHERE e.kind = 'verified') AS v GROUP BY tier, bucket")


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    if pg:
        op.execute("DROP TRIGGER IF EXISTS events_event_counts_ins ON events")
        op.execute("DROP FUNCTION IF EXISTS splash_event_counts_ins()")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_event_counts_ins")
        op.execute("DROP TRIGGER IF EXISTS events_latency_counts_ins")
    op.drop_table("latency_counts")
    op.drop_table("event_counts")
