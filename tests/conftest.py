"""Shared fixtures: configurations rooted in tmp folders, and the ledger on SQLite and on real PostgreSQL."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from splash_flows.config import Config, default_config, default_config_data
from splash_flows.context import Context
from splash_flows.ledger import Ledger
from tests.support.postgres import PostgresServer, start_postgres

_db_counter = itertools.count()

#: The fault matrix (tests/faults) runs bounded in `make test` (one `up` stack, one seed per fault);
#: ``SPLASH_FAULTS=full`` (`make faults`) runs the full one; ``SPLASH_FAULTS=off`` leaves it out.
collect_ignore_glob = ["faults/*"] if os.environ.get("SPLASH_FAULTS") == "off" else []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. Skipped only where none can be had, saying why; ``make test``
    sets SPLASH_TEST_REQUIRE_POSTGRES=1 so a missing server fails there instead."""
    server = start_postgres()
    if server is None:
        if os.environ.get("SPLASH_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (no initdb found) but SPLASH_TEST_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL is not installed here (no initdb on PATH or in /usr/lib/postgresql)")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"ledger_{os.getpid()}_{next(_db_counter)}")


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
