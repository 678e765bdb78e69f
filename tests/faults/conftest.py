"""Fixtures of the fault matrix: its own PostgreSQL server (the matrix kills it), the fake SciCat server, the
site run by ``up``'s processes, the mode (bounded in ``make test``, full in ``make faults``) and the table printed
at the end of the session and written to ``bench/results/faults-<mode>.md``.

Environment: ``SPLASH_FAULTS=full`` (several seeds per fault, a few hundred files each), ``SPLASH_FAULT_SEEDS``
(seeds per fault in full mode, default 3), ``SPLASH_FAULT_SEED`` (replay one seed), ``SPLASH_FAULTS_ONLY``
(comma-separated fault names)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.scicat_server import FakeSciCat
from tests.faults.harness import FAULTS, PASSWORD_VAR, Outcome, Site, say, started_site, table
from tests.support.postgres import PostgresServer, start_postgres

FULL = os.environ.get("SPLASH_FAULTS") == "full"
MODE = "full" if FULL else "bounded"
SCANS = 100 if FULL else 5          # about 270 files per fault in full, 13 in the bounded run
RESULTS: list[Outcome] = []
RESULTS_FILE = Path(__file__).resolve().parents[2] / "bench" / "results" / f"faults-{MODE}.md"


def seeds() -> list[int]:
    """Seeds for each fault: the replayed one, or fresh ones (printed with every row)."""
    if os.environ.get("SPLASH_FAULT_SEED"):
        return [int(os.environ["SPLASH_FAULT_SEED"])]
    n = int(os.environ.get("SPLASH_FAULT_SEEDS", "3")) if FULL else 1
    return [random.SystemRandom().randrange(1, 10**6) for _ in range(n)]


def selected() -> list[str]:
    only = [f for f in os.environ.get("SPLASH_FAULTS_ONLY", "").split(",") if f]
    unknown = set(only) - set(FAULTS)
    if unknown:
        raise pytest.UsageError(f"SPLASH_FAULTS_ONLY names unknown faults {sorted(unknown)}; known: {FAULTS}")
    return only or FAULTS


@pytest.fixture(scope="session")
def fault_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the matrix's own: the kill_postgres fault kills it (never the session's)."""
    server = start_postgres()
    if server is None:
        if os.environ.get("SPLASH_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed but SPLASH_TEST_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL is not installed here (no initdb)")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fault_scicat() -> Iterator[FakeSciCat]:
    with FakeSciCat() as fake:
        os.environ[PASSWORD_VAR] = fake.users["ingestor"]
        yield fake


@pytest.fixture(scope="session")
def runner_site(fault_pg: PostgresServer, fault_scicat: FakeSciCat,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """``up`` with the in-process runner, shared by every fault but kill_worker."""
    with started_site(tmp_path_factory.mktemp("faults-runner"), fault_pg, fault_scicat, workers=False) as site:
        yield site


@pytest.fixture
def worker_site(fault_pg: PostgresServer, fault_scicat: FakeSciCat, tmp_path: Path) -> Iterator[Site]:
    """``up --workers`` (a Prefect process worker per pool), for the kill_worker fault only."""
    with started_site(tmp_path / "faults-workers", fault_pg, fault_scicat, workers=True) as site:
        yield site


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    text = table(RESULTS)
    notes = sorted({n for r in RESULTS for n in r.problems})
    terminalreporter.section(f"fault matrix ({MODE}: {SCANS} scans per fault)")
    terminalreporter.write_line(text)
    for n in notes[:30]:
        terminalreporter.write_line(f"  problem: {n}")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(f"Fault matrix, {MODE} ({SCANS} scans per fault), seeds in the table.\n\n{text}\n",
                            encoding="utf-8")
    say(f"fault table written to {RESULTS_FILE}")
