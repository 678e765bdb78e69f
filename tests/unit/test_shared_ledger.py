"""Flow runs share one ledger per process (``context.shared_ledger``): opened, and its schema checked, by the
first run that needs it; never disposed by a run's ``Context.close``; opened again when its SQLite file was
replaced; at most ``SHARED_LEDGERS_KEPT`` URLs kept open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from splash_flows import context
from splash_flows.config import default_config_data
from splash_flows.context import close_shared_ledgers, context_from_path, shared_ledger
from splash_flows.ledger import Ledger


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    close_shared_ledgers()
    yield
    close_shared_ledgers()


def _config_file(root: Path) -> Path:
    data = default_config_data(root)
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = root / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_runs_of_one_process_share_the_ledger_and_check_its_schema_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    upgrades: list[str] = []
    real_upgrade = Ledger.upgrade

    def counting_upgrade(self: Ledger) -> str | None:
        upgrades.append(str(self.engine.url))
        return real_upgrade(self)

    monkeypatch.setattr(Ledger, "upgrade", counting_upgrade)
    config = _config_file(tmp_path / "site")
    first = context_from_path(str(config))
    first.ledger.record_event("detected", path="a.edf")
    first.close()  # a run ends: the process's ledger stays open for the next run
    second = context_from_path(str(config))
    assert second.ledger is first.ledger and not second.owns_ledger
    assert [e.path for e in second.ledger.events()] == ["a.edf"]
    second.close()
    assert len(upgrades) == 1


def test_a_replaced_sqlite_file_is_opened_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = shared_ledger(url)
    first.record_event("detected", path="old.edf")
    first.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"ledger.db{suffix}").unlink(missing_ok=True)
    second = shared_ledger(url)
    assert second is not first
    assert second.events() == []  # a new, upgraded ledger: no ghost of the deleted file
    second.record_event("detected", path="new.edf")
    assert [e.path for e in shared_ledger(url).events()] == ["new.edf"]


def test_only_the_most_recently_used_ledgers_stay_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "SHARED_LEDGERS_KEPT", 2)
    urls = [f"sqlite:///{tmp_path / f'l{i}.db'}" for i in range(3)]
    a, b = shared_ledger(urls[0]), shared_ledger(urls[1])
    assert shared_ledger(urls[0]) is a  # used again: now the most recent
    shared_ledger(urls[2])  # b is the least recently used: disposed, opened again when asked
    assert shared_ledger(urls[0]) is a
    assert shared_ledger(urls[1]) is not b


def test_reads_do_not_queue_behind_another_process_writing(tmp_path: Path) -> None:
    """SQLite: ``session`` takes the write lock at BEGIN; ``read_session`` takes none, so the watcher's reads
    (its outbox, the verified check) go on while a flow run in another process holds the lock."""
    from sqlalchemy import text

    from splash_flows.ledger.outbox import Outbox, verified_versions

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reader, writer = Ledger.open(url), Ledger.open(url)
    Outbox(reader).add("d/x", ["a.edf"])
    try:
        with writer.session() as sess:  # BEGIN IMMEDIATE: the write lock is held until the block ends
            sess.execute(text("UPDATE outbox SET attempts = attempts + 1"))
            assert Outbox(reader).counts()["pending"] == 1  # would wait for the lock (then fail) before
            assert Outbox(reader).next_pending() is not None
            assert verified_versions(reader, "data733", ["lamarr"], ["a.edf"]) == {}
    finally:
        reader.close()
        writer.close()
