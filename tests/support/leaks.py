"""Shared by the secrets-never-leak tests (issue 13 item 3): tests/security/test_secrets.py (the command line)
and tests/flows/test_no_secret_leaks.py (the flows and the watcher).

Every secret the configuration holds -- the SciCat password, the ledger's database password, the Globus client
secret -- is set to its own unique marker, and ``Leaks`` gathers every place one could leak into (output, log
files, Prefect flow-run parameters and logs, exception messages, ledger rows, catalogue records) and fails naming
the first place holding a marker.

The ledger is a real PostgreSQL (trust authentication: any password is accepted, so the marker really is in the
URL every process connects with); SciCat is the FAKE server, whose account password is the marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from splash_flows.config import default_config_data
from tests.fakes.scicat_server import FakeSciCat
from tests.support.postgres import PostgresServer

MARKERS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("SCICAT_PW", "LEDGER_PW", "GLOBUS_SECRET")}
ENV = {**os.environ, **MARKERS, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
for _name in ("PREFECT_API_URL", "SPLASH_FLOWS_CONFIG"):
    ENV.pop(_name, None)


@dataclass
class Leaks:
    """Everything a secret could leak into, gathered as (where, text); ``check`` fails naming the first leak."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: Any) -> None:
        self.seen.append((where, text if isinstance(text, str) else json.dumps(text, default=str)))

    def add_error(self, where: str, err: BaseException) -> None:
        chain: BaseException | None = err
        while chain is not None:  # the message and every cause
            self.add(where, f"{type(chain).__name__}: {chain}")
            chain = chain.__cause__ or chain.__context__

    def check(self) -> None:
        assert self.seen, "nothing was gathered"
        for where, text in self.seen:
            for name, marker in MARKERS.items():
                assert marker not in text, f"the {name} marker leaked into {where}: ...{_around(text, marker)}..."


def _around(text: str, marker: str) -> str:
    at = text.index(marker)
    return text[max(0, at - 80): at + len(marker) + 20]


@dataclass
class SecretSite:
    config_file: Path
    root: Path
    fake: FakeSciCat
    ledger_url: str


@contextmanager
def secret_site(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[SecretSite]:
    """A site whose every secret is a marker: PostgreSQL ledger, the FAKE SciCat, a Globus section."""
    with FakeSciCat(users={"ingestor": MARKERS["SCICAT_PW"]}) as fake:
        url = postgres_server.create_database(f"secrets_{uuid.uuid4().hex[:12]}")
        url = url.replace("splash@", "splash:${LEDGER_PW}@", 1)
        data = default_config_data(tmp_path / "site")
        for tier in data["tiers"].values():
            Path(tier["root"]).mkdir(parents=True, exist_ok=True)
        data["ledger"] = {"url": url}
        data["catalogue"] = {"kind": "scicat", "url": fake.url, "username": "ingestor", "password": "${SCICAT_PW}",
                             "admin_groups": ["ingestor"], "retry": {"max_attempts": 1}}
        data["dataset"] = {"contact_email": "bl733@example.org", "source_folder_host": "bl733-data.als.example.org",
                           "settle_seconds": 0}
        data["globus"] = {"client_id": str(uuid.uuid4()), "client_secret": "${GLOBUS_SECRET}"}
        config_file = tmp_path / "site.yaml"
        config_file.write_text(yaml.safe_dump(data))
        yield SecretSite(config_file, tmp_path / "site", fake, url.replace("${LEDGER_PW}", MARKERS["LEDGER_PW"]))


def cli(leaks: Leaks, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "splash_flows", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)
    leaks.add(f"`splash-flows {' '.join(args)}` (exit {proc.returncode}) stdout", proc.stdout)
    leaks.add(f"`splash-flows {' '.join(args)}` stderr", proc.stderr)
    return proc


def gather_ledger(leaks: Leaks, url: str) -> None:
    """Every row of every ledger table, as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            rows = 0
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)).mappings():
                    leaks.add(f"ledger row of {table.name}", {k: str(v) for k, v in row.items()})
                    rows += 1
        assert rows, "the ledger holds no rows: nothing ran"
    finally:
        engine.dispose()
