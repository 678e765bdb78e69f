"""Prefect's own server, with SQLite write transactions that take the write lock when they begin.

Why: on a SQLite-backed Prefect server (``splash-flows up``'s default) a burst's trigger was answered ``503``
one time in three to eight, each after 1-4 s (measured: ``docs/PERFORMANCE.md`` §3). Prefect opens most of its
write transactions *deferred* (``BEGIN``): the transaction reads first (``create_flow_run`` reads the flow's and
deployment's labels), then writes. SQLite cannot upgrade such a read to a write while another connection holds
the write lock (the runs' state changes, the event and task-run recorders): it waits for that holder, then fails
(``database is locked``, its snapshot being stale), and the API answers 503. Prefect's own comment in
``AioSqliteConfiguration.setup_sqlite`` names the remedy: the IMMEDIATE transaction mode, in which a writer
takes the lock at ``BEGIN`` and waits its turn on the busy timeout instead of failing. Prefect uses it only for
state changes (``with_for_update``); ``immediate_sqlite_writes`` makes every transaction Prefect opens with
``begin_transaction`` (its writes: reads run without one) begin so. PostgreSQL-backed servers are untouched.

Run as ``python -m splash_flows.flows.prefect_server server start ...`` (the arguments of ``prefect``'s CLI);
``splash-flows up`` starts its server so. The kept demo server (``local_server``) applies the same patch.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

_PATCHED = "_splash_flows_immediate"


def immediate_sqlite_writes() -> None:
    """Make Prefect's SQLite ``begin_transaction`` always ``BEGIN IMMEDIATE`` (idempotent)."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    if getattr(AioSqliteConfiguration, _PATCHED, False):
        return
    original = AioSqliteConfiguration.begin_transaction

    @asynccontextmanager
    async def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> AsyncIterator[Any]:
        async with original(self, session, with_for_update=True) as transaction:
            yield transaction

    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    setattr(AioSqliteConfiguration, _PATCHED, True)


def main(argv: list[str] | None = None) -> None:
    """``prefect`` CLI with the patch applied (its server runs in this process: ``--workers 1``, the default)."""
    immediate_sqlite_writes()
    from prefect.cli import app

    sys.argv = ["prefect", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
