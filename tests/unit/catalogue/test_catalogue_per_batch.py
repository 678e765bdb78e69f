"""The catalogue step pays per batch, not per scan (issue 14 item 1): one ledger transaction for a batch's scan
records, one embedded-catalogue transaction for its datasets; waiting scans are re-checked on a back-off, and
at once by the batch that brings their missing file; a catalogue transaction that fails to commit leaves its
scans pending, never "catalogued"."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from splash_flows.catalogue.embedded import EmbeddedCatalogue
from splash_flows.config import Config, DatasetConfig
from splash_flows.context import Context, build_context
from splash_flows.errors import CatalogueUnavailable
from splash_flows.ledger.catalogue import get_scan, scan_counts
from splash_flows.services.catalogue import catalogue_batch, retry_pending
from splash_flows.services.move import move_files
from tests.unit.catalogue.test_catalogue_service import simulate


class WriteTransactions:
    """Counts committed transactions of ``engine`` that wrote to the tables named in ``tables``."""

    def __init__(self, engine: Engine, tables: tuple[str, ...]) -> None:
        self.engine, self.tables = engine, tables
        self.count = 0
        self._wrote = False
        event.listen(engine, "after_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        head = statement.lstrip().upper()
        if head.startswith(("INSERT", "UPDATE", "DELETE")) and any(t.upper() in head for t in self.tables):
            self._wrote = True

    def _commit(self, _conn: Any) -> None:
        if self._wrote:
            self.count += 1
        self._wrote = False

    def close(self) -> None:
        event.remove(self.engine, "after_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)


@pytest.fixture
def open_ctx() -> Iterator[Callable[[Config], Context]]:
    opened: list[Context] = []

    def make(config: Config) -> Context:
        ctx = build_context(config)
        opened.append(ctx)
        return ctx

    yield make
    for ctx in opened:
        ctx.close()


def _dataset(config: Config, **kwargs: Any) -> Config:
    return config.model_copy(update={"dataset": DatasetConfig(**kwargs)})


def test_a_batch_of_scans_is_one_ledger_transaction_and_one_catalogue_transaction(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    config = _dataset(sqlite_config, settle_seconds=0)
    ctx = open_ctx(config)
    paths = simulate(config, n=6, autoexpose_every=0, hi_lo_every=0)
    move_files(ctx, paths)
    cat = ctx.catalogue()
    assert isinstance(cat, EmbeddedCatalogue)
    ledger_writes = WriteTransactions(ctx.ledger.engine, ("catalogue_scans", "catalogue_files", "events"))
    catalogue_writes = WriteTransactions(cat._engine, ("catalogue_",))
    try:
        report = catalogue_batch(ctx, paths)
    finally:
        ledger_writes.close()
        catalogue_writes.close()
    assert len(report.catalogued) == 6 and not report.pending and not report.failed
    assert (ledger_writes.count, catalogue_writes.count) == (1, 1)
    assert len(cat.search()) == 6 and all(e.has_thumbnail and len(e.doc.locations) == 2 for e in cat.search())
    assert scan_counts(ctx.ledger) == {"catalogued": 6}


def test_a_waiting_scan_is_rechecked_by_the_batch_bringing_its_sidecar_not_by_every_batch(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    config = _dataset(sqlite_config, settle_seconds=3600, wait_recheck_seconds=3600)
    ctx = open_ctx(config)
    root = Path(config.tiers["data733"].root)
    [image, sidecar] = simulate(config, n=1, autoexpose_every=0, hi_lo_every=0)
    hidden = root / (sidecar + ".later")
    (root / sidecar).rename(hidden)  # the sidecar is not there yet
    move_files(ctx, [image])
    [(key, reason)] = catalogue_batch(ctx, [image]).pending.items()
    assert reason.startswith("waiting up to 3600 s")
    checked = get_scan(ctx.ledger, "data733", key)
    assert checked is not None

    others = simulate(config, n=2, autoexpose_every=0, hi_lo_every=0, seed=99, proposal="ALS-00623")
    move_files(ctx, others)
    report = catalogue_batch(ctx, others)
    assert len(report.catalogued) == 2
    assert report.retried is not None and key not in report.retried.pending  # not re-checked: backing off
    again = get_scan(ctx.ledger, "data733", key)
    assert again is not None and again.updated_at == checked.updated_at

    hidden.rename(root / sidecar)  # the sidecar arrives: its batch re-checks the scan at once
    move_files(ctx, [sidecar])
    arrived = catalogue_batch(ctx, [sidecar])
    assert list(arrived.catalogued) == [key]
    entry = ctx.catalogue().find(key)
    assert entry is not None and sorted(f.path for f in entry.doc.files) == sorted(
        p.rsplit("/", 1)[1] for p in (image, sidecar))


def test_waiting_scans_are_rechecked_by_other_batches_once_their_back_off_passed(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    config = _dataset(sqlite_config, settle_seconds=3600, wait_recheck_seconds=0)
    ctx = open_ctx(config)
    root = Path(config.tiers["data733"].root)
    [image, sidecar] = simulate(config, n=1, autoexpose_every=0, hi_lo_every=0)
    (root / sidecar).unlink()
    move_files(ctx, [image])
    [key] = catalogue_batch(ctx, [image]).pending
    others = simulate(config, n=1, autoexpose_every=0, hi_lo_every=0, seed=99, proposal="ALS-00623")
    move_files(ctx, others)
    report = catalogue_batch(ctx, others)
    assert report.retried is not None and report.retried.pending[key].startswith("waiting up to 3600 s")


def test_a_catalogue_batch_that_does_not_commit_leaves_its_scans_pending(
        sqlite_config: Config, open_ctx: Callable[[Config], Context], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _dataset(sqlite_config, settle_seconds=0)
    ctx = open_ctx(config)
    paths = simulate(config, n=2, autoexpose_every=0, hi_lo_every=0)
    move_files(ctx, paths)
    cat = ctx.catalogue()
    assert isinstance(cat, EmbeddedCatalogue)
    real = cat.batch

    @contextmanager
    def failing_commit() -> Iterator[None]:
        with real():
            yield
            raise CatalogueUnavailable("embedded catalogue: disk I/O error at commit")  # rolls the batch back

    monkeypatch.setattr(cat, "batch", failing_commit)
    report = catalogue_batch(ctx, paths)
    assert not report.catalogued and len(report.pending) == 2
    assert all("not committed" in why for why in report.pending.values())
    assert cat.search() == []  # nothing of the batch was kept...
    assert scan_counts(ctx.ledger) == {"pending_catalogue": 2}  # ...and the ledger does not claim it was
    assert all((rec := get_scan(ctx.ledger, "data733", k)) is not None and rec.pid is None for k in report.pending)

    monkeypatch.setattr(cat, "batch", real)
    assert len(retry_pending(ctx).catalogued) == 2
    assert len(cat.search()) == 2 and scan_counts(ctx.ledger) == {"catalogued": 2}
