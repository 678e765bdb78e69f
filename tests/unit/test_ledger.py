"""The ledger on SQLite and on a real PostgreSQL server (same tests, both backends)."""

from __future__ import annotations

import threading

import pytest

from splash_flows.errors import LedgerError
from splash_flows.ledger import CopyState, EventKind, Ledger


def test_migrates_to_head_and_is_idempotent(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, upgrade=False)
    assert ledger.current_revision() is None
    assert ledger.upgrade() == ledger.head_revision()
    assert ledger.upgrade() == ledger.head_revision()
    assert Ledger.open(ledger_url).current_revision() == ledger.head_revision()
    ledger.close()


def test_register_is_idempotent_and_tracks_changes(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    kw = dict(size=10, mtime=1.5, checksum_alg="xxh3_128", checksum="aa")
    a = ledger.register_source("data733", "p/x.edf", **kw)  # type: ignore[arg-type]
    b = ledger.register_source("data733", "p/x.edf", **kw)  # type: ignore[arg-type]
    assert a == b
    ledger.record_verified(a, "lamarr", checksum="aa", size=10, skipped=False)
    assert ledger.counts()["files"] == 1 and ledger.counts()["copies"] == 2
    c = ledger.register_source("data733", "p/x.edf", size=11, mtime=2.0, checksum_alg="xxh3_128", checksum="bb")
    assert c.id == a.id and c.checksum == "bb"
    assert ledger.copy_state(c, "lamarr").state == CopyState.STALE  # type: ignore[union-attr]
    assert [e.kind for e in ledger.events(path="p/x.edf")] == [
        EventKind.DETECTED, EventKind.COPIED, EventKind.VERIFIED, EventKind.SOURCE_CHANGED]
    ledger.close()


def test_failures_and_status(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    src = ledger.register_source("data733", "b.edf", size=1, mtime=0.0, checksum_alg="xxh3_128", checksum="c")
    ledger.record_failed("b.edf", "cfs", "cfs:b.edf: disk full", source=src)
    ledger.record_failed("../evil", "data733", "refused", kind=EventKind.REFUSED)
    ledger.record_verified(src, "lamarr", checksum="c", size=1, skipped=True)
    (row,) = ledger.status()
    assert row.copies["cfs"].state == "failed" and row.copies["cfs"].error == "cfs:b.edf: disk full"
    assert row.copies["lamarr"].state == "verified"
    assert row.copies["data733"].state == "verified"
    assert ledger.count_verified("lamarr", ["b.edf", "nope"], "data733") == 1
    ledger.record_verified(src, "cfs", checksum="c", size=1, skipped=False)
    assert ledger.status()[0].copies["cfs"].error is None
    ledger.close()


def test_concurrent_registration_creates_one_row(ledger_url: str) -> None:
    ledgers = [Ledger.open(ledger_url) for _ in range(4)]
    errors: list[BaseException] = []

    def work(ledger: Ledger) -> None:
        try:
            for i in range(20):
                ledger.register_source("data733", f"f{i}", size=i, mtime=0.0, checksum_alg="xxh3_128", checksum="x")
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(lg,)) for lg in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledgers[0].counts()["files"] == 20
    assert ledgers[0].counts()["copies"] == 20
    assert len(ledgers[0].events(kind=EventKind.DETECTED)) == 20
    for lg in ledgers:
        lg.close()


def test_bad_url_is_one_clear_error() -> None:
    with pytest.raises(LedgerError, match="not valid"):
        Ledger.open("not a url")
    with pytest.raises(LedgerError, match="cannot reach") as exc:
        Ledger.open("postgresql://u:topsecret@127.0.0.1:1/x")
    assert "topsecret" not in str(exc.value)
