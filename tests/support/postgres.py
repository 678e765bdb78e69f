"""A real PostgreSQL server for tests: initdb in a temporary folder, loopback port, stopped at the end.

Runs the server as the unprivileged ``postgres`` user when the tests run as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bindir: Path
    base: Path
    port: int
    user: str = "splash"

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user, "--auth=trust",
                   "-E", "UTF8", "--no-sync"])
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off -c max_connections=200"
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", opts, "-l",
                   str(self.base / "server.log"), "-w", "-t", "60", "start"])

    def stop(self) -> None:
        if self.datadir.exists():
            try:
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"])
            except subprocess.CalledProcessError:
                pass  # already stopped
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given, which nobody may be connected to); its URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
        engine.dispose()
        return self.url(name)


def start_postgres() -> PostgresServer | None:
    """Start a throwaway server, or None when PostgreSQL is not installed."""
    bindir = find_pg_bin()
    if bindir is None:
        return None
    base = Path(tempfile.mkdtemp(prefix="splash-pg-", dir="/tmp"))
    os.chmod(base, 0o755)
    server = PostgresServer(bindir=bindir, base=base, port=free_port())
    server.start()
    return server


def start_postgres_or_skip() -> PostgresServer:
    """A throwaway server for a fixture; the test is skipped, saying why, where none can be had, and fails
    instead when SPLASH_TEST_REQUIRE_POSTGRES=1 (``make test``)."""
    import pytest

    server = start_postgres()
    if server is None:
        if os.environ.get("SPLASH_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (no initdb found) but SPLASH_TEST_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL is not installed here (no initdb on PATH or in /usr/lib/postgresql)")
    return server
