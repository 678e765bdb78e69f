"""See the SQL a ledger function runs, and PostgreSQL's plan for each statement.

``captured(engine)`` records every statement (with its parameters, IN lists already expanded) that runs on
``engine`` inside the block; ``explain`` asks PostgreSQL for the plan of one of them with the same parameters.
Used by the index test (small data, ``enable_seqscan=off``: does a plan *use* the index at all) and by
``bench/ledger_scale.py`` (10M rows: which plan PostgreSQL picks by itself, and how long it takes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, event


@contextlib.contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Statements (and their parameters) executed on ``engine`` inside the block; executemany calls excluded."""
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool) -> None:
        if not executemany:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def explain(engine: Engine, statement: str, parameters: Any, *, analyze: bool = False,
            settings: Sequence[str] = ()) -> str:
    """PostgreSQL's plan of ``statement`` run with ``parameters`` (``analyze``: run it and show real rows and
    times). ``settings`` are ``SET LOCAL`` statements run first in the same transaction (e.g.
    ``enable_seqscan = off``). The transaction is rolled back."""
    options = "ANALYZE, BUFFERS, " if analyze else ""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            for setting in settings:
                cur.execute(f"SET LOCAL {setting}")
            cur.execute(f"EXPLAIN ({options}COSTS OFF) {statement}", parameters)
            return "\n".join(str(row[0]) for row in cur.fetchall())
        finally:
            cur.close()
            raw.rollback()
