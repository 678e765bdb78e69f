"""Shared fixtures: configurations rooted in tmp folders, and the ledger on SQLite and on real PostgreSQL."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from splash_flows.config import Config, default_config, default_config_data
from splash_flows.context import Context
from splash_flows.ledger import Ledger
from tests.support.postgres import PostgresServer, start_postgres_or_skip

_db_counter = itertools.count()


def _import_cli_consoles_without_columns() -> None:
    """The CLI's rich consoles (splash_flows.cli.common) fix their width if COLUMNS is set when they are created,
    and the CLI imports them on the first command run. Created here, with no COLUMNS, they follow the COLUMNS
    each test hands CliRunner; otherwise the first test to run a command in a process (CliRunner sets COLUMNS
    while it runs) would fix the width for every later test in that process, whichever order xdist gives."""
    columns = os.environ.pop("COLUMNS", None)
    try:
        import splash_flows.cli.common  # noqa: F401
    finally:
        if columns is not None:
            os.environ["COLUMNS"] = columns


_import_cli_consoles_without_columns()


#: Loggers whose levels a test may change in-process (the CLI's ``configure_logging`` under CliRunner, tests that
#: turn everything to DEBUG): restored after every test, so a later test in the same process (xdist runs many
#: modules in one) does not capture every SQL statement SQLAlchemy logs at INFO.
_LEVEL_KEPT = ("", "sqlalchemy", "sqlalchemy.engine", "httpx", "httpcore", "watchdog", "alembic")


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in _LEVEL_KEPT}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)



@pytest.fixture(autouse=True)
def _hypothesis_examples_independent_of_imports(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every Hypothesis test draws the same examples whatever else the process imported (an xdist worker
    imports the whole suite): tests/support/hypothesis_pool.py says why."""
    if not getattr(request.function, "is_hypothesis_test", False):
        yield
        return
    from tests.support.hypothesis_pool import fixed_constants

    with fixed_constants():
        yield


#: The fault matrix (tests/faults) runs bounded in `make test` (one `up` stack, one seed per fault);
#: ``SPLASH_FAULTS=full`` (`make faults`) runs the full one; ``SPLASH_FAULTS=off`` leaves it out.
collect_ignore_glob = ["faults/*"] if os.environ.get("SPLASH_FAULTS") == "off" else []

#: Tests that share the integration session's Prefect server (tests/integration/conftest.py) kill workers, stop
#: that server and count what it ran: they are marked ``serial`` here, as are tests marked so by hand (``up``
#: end to end), and ``make test`` runs them alone, apart from the rest, which runs on two processes (pytest-xdist).
SERIAL_FIXTURES = frozenset({"prefect_server"})
#: The in-process flow tests share one temporary Prefect server per process (tests/flows/conftest.py).
HARNESS_FOLDER = "tests/flows/"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests on the shared Prefect server ``serial`` (they live in tests/integration)."""
    for item in items:
        if set(getattr(item, "fixturenames", ())) & SERIAL_FIXTURES:
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("serial") and not item.nodeid.startswith("tests/integration/"):
            raise pytest.UsageError(f"{item.nodeid}: serial tests belong in tests/integration (the only folder "
                                    "scripts/run-tests.sh runs alone)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with tests/flows as one unit: each module runs on one process (its module fixtures are
    built once, as in a serial run) and one process runs every in-process flow test, so the temporary Prefect
    server starts once. (xdist's ``loadgroup`` does not group under pytest 9: it renames node ids.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndFlows(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return HARNESS_FOLDER if module.startswith(HARNESS_FOLDER) else module

    return ModulesAndFlows(config, log)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. Skipped only where none can be had, saying why; ``make test``
    sets SPLASH_TEST_REQUIRE_POSTGRES=1 so a missing server fails there instead."""
    server = start_postgres_or_skip()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger migrated to the newest revision once per session (see ``ledger_url``)."""
    path = tmp_path_factory.mktemp("ledger-template") / "ledger.db"
    Ledger.open(f"sqlite:///{path}").close()
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server: PostgresServer) -> str:
    """A PostgreSQL ledger database migrated to the newest revision once per session (see ``ledger_url``)."""
    name = f"ledger_template_{os.getpid()}"
    Ledger.open(postgres_server.create_database(name)).close()
    return name


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger database on each backend: empty, or -- for tests that take ``config`` (and so ``ctx``),
    which open it migrated anyway -- a copy of the session's migrated one. Migrating costs each test a second
    or more (ten revisions, each committed); the migrations themselves are tested on empty databases
    (tests/unit/test_ledger.py, test_*_migration.py, test_ledger_upgrade_keeps_data.py)."""
    migrated = "config" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        if migrated:
            template: Path = request.getfixturevalue("migrated_sqlite")
            for suffix in ("", "-wal"):  # a closed WAL database is one file; copy a leftover log too
                if Path(f"{template}{suffix}").exists():
                    shutil.copyfile(f"{template}{suffix}", f"{path}{suffix}")
        return f"sqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"ledger_{os.getpid()}_{next(_db_counter)}"
    if not migrated:
        return server.create_database(name)
    return server.create_database(name, template=request.getfixturevalue("migrated_postgres"))


@pytest.fixture
def config(tmp_path: Path, ledger_url: str) -> Config:
    """The embedded default rooted in tmp_path, on the parametrised ledger backend, with tier folders made."""
    cfg = default_config(tmp_path / "site")
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"url": SecretStr(ledger_url)})})
    for tier in cfg.tiers.values():
        Path(tier.root).mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    """The embedded default rooted in tmp_path on SQLite only (for tests that are not about the backend)."""
    cfg = default_config(tmp_path / "site")
    for tier in cfg.tiers.values():
        Path(tier.root).mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The embedded default rooted in ``tmp_path/site`` written to a YAML file, tier folders made (for flows and
    CLI commands, which take a config path)."""
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def ctx(config: Config) -> Iterator[Context]:
    context = Context(config=config, ledger=Ledger.open(config.ledger.url_value()))
    yield context
    context.close()


def write_file(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
