"""``splash-flows up``'s Prefect server opens its SQLite write transactions IMMEDIATE (flows/prefect_server.py):
a read-then-write transaction then waits its turn for the lock instead of failing with "database is locked",
which the API answered as 503 to the watcher's triggers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from splash_flows.flows import prefect_server


def test_every_sqlite_transaction_prefect_begins_is_immediate(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

    # undone after the test: other tests in this process keep Prefect's own behaviour
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction)
    monkeypatch.setattr(AioSqliteConfiguration, prefect_server._PATCHED, False, raising=False)
    seen: list[str | None] = []

    class RecordingSession:
        @asynccontextmanager
        async def begin(self) -> AsyncIterator[str]:
            seen.append(SQLITE_BEGIN_MODE.get())  # what begin_sqlite_stmt would emit after BEGIN
            yield "transaction"

    config = AioSqliteConfiguration(connection_url="sqlite+aiosqlite:///unused.db")

    async def begin_one(**kwargs: bool) -> None:
        async with config.begin_transaction(RecordingSession(), **kwargs) as tx:  # type: ignore[arg-type]
            assert str(tx) == "transaction"

    asyncio.run(begin_one())
    assert seen == ["DEFERRED"]  # Prefect's own default: a read may not become a write under contention
    prefect_server.immediate_sqlite_writes()
    prefect_server.immediate_sqlite_writes()  # idempotent
    asyncio.run(begin_one())
    asyncio.run(begin_one(with_for_update=True))
    assert seen == ["DEFERRED", "IMMEDIATE", "IMMEDIATE"]
