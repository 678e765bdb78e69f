"""The demo's kept Prefect server starts a new folder from a migrated template database instead of migrating
Prefect's schema again (``flows/local_server.py``): saved once, copied whole, never over a folder's own data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from splash_flows.flows import local_server


def _database(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num TEXT)")
        db.executemany("INSERT INTO alembic_version VALUES (?)", [(f"rev{i}",) for i in range(rows)])


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM alembic_version").fetchone()[0])


def test_first_home_saves_the_template_and_the_next_new_home_starts_from_it(tmp_path: Path) -> None:
    first, template = tmp_path / "first" / ".prefect", tmp_path / "cache" / "prefect-9.9.9"
    _database(first / local_server.DB_FILE, 3)
    (first / local_server.MEMO_FILE).write_text('block_auto_registration = "abc"\n')
    assert not local_server.seed_from_template(first, template)  # no template yet: the server migrates its own
    assert local_server.save_template(first, template)
    assert _rows(template / local_server.DB_FILE) == 3 and not list(template.glob(".*.tmp"))
    assert not local_server.save_template(first, template)  # saved once

    new = tmp_path / "new" / ".prefect"
    new.mkdir(parents=True)
    assert local_server.seed_from_template(new, template)
    assert _rows(new / local_server.DB_FILE) == 3
    assert (new / local_server.MEMO_FILE).read_text() == 'block_auto_registration = "abc"\n'

    _database(new / local_server.DB_FILE, 2)  # the folder's own runs since: never replaced by the template
    assert not local_server.seed_from_template(new, template)
    assert _rows(new / local_server.DB_FILE) == 5


def test_template_folder_is_per_prefect_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(local_server.TEMPLATE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert local_server.template_dir("3.9.1") == tmp_path / "splash-flows" / "prefect-3.9.1"
    monkeypatch.setenv(local_server.TEMPLATE_ENV, str(tmp_path / "t"))
    assert local_server.template_dir("3.9.2") == tmp_path / "t" / "prefect-3.9.2"


def test_prepare_template_keeps_an_existing_one_and_starts_no_server(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv(local_server.TEMPLATE_ENV, str(tmp_path / "t"))
    for name in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    from importlib.metadata import version

    template = local_server.template_dir(version("prefect"))
    _database(template / local_server.DB_FILE, 1)

    def no_server(*_: object, **__: object) -> None:
        raise AssertionError("a template exists: no server may be started")

    monkeypatch.setattr(local_server, "ensure_server", no_server)
    assert local_server.prepare_template() == template
    assert _rows(template / local_server.DB_FILE) == 1


def test_prepare_template_fails_loudly_when_the_server_saved_none(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv(local_server.TEMPLATE_ENV, str(tmp_path / "t"))
    for name in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    homes: list[Path] = []
    stopped: list[Path] = []

    def fake_start(home: Path, **_: object) -> local_server.ServerHandle:
        homes.append(home)
        (home / local_server.LOG_FILE).write_text("migrations failed: disk full\n")
        return local_server.ServerHandle(home=home, pid=1, port=1, started=True)

    monkeypatch.setattr(local_server, "ensure_server", fake_start)
    monkeypatch.setattr(local_server, "wait_until_healthy", lambda handle, timeout=0.0: 0.0)
    def fake_stop(home: Path, timeout: float = 0.0) -> bool:
        stopped.append(home)
        return True

    monkeypatch.setattr(local_server, "stop_server", fake_stop)
    from splash_flows.errors import OrchestrationError

    with pytest.raises(OrchestrationError, match=r"(?s)saved no template.*disk full"):
        local_server.prepare_template()
    assert stopped == homes and not homes[0].exists()  # the server stopped, its temporary home removed


def test_prepare_template_has_nothing_to_do_for_a_users_own_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect@db/prefect")
    assert local_server.prepare_template() is None
