"""Fixtures of the fault matrix: its own PostgreSQL server (the matrix kills it), the fake SciCat server, the
site run by ``up``'s processes, the mode (bounded in ``make test``, full in ``make faults``) and the table printed
at the end of the session and written to ``bench/results/faults-<mode>.md``.

Environment: ``SPLASH_FAULTS=full`` (several seeds per fault, a few hundred files each), ``SPLASH_FAULT_SEEDS``
(seeds per fault in full mode, default 3), ``SPLASH_FAULT_SEED`` (replay one seed), ``SPLASH_FAULTS_ONLY``
(comma-separated fault names), ``SPLASH_FAULT_SCANS`` (scans per fault)."""

from __future__ import annotations

import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fakes.scicat_server import FakeSciCat
from tests.faults.harness import FAULTS, PASSWORD_VAR, Outcome, Site, Workload, started_site, table
from tests.support.postgres import PostgresServer, start_postgres_or_skip

FULL = os.environ.get("SPLASH_FAULTS") == "full"
MODE = "full" if FULL else "bounded"
#: scans per fault: about 270 files in full, 13 in the bounded run (``SPLASH_FAULT_SCANS`` overrides)
SCANS = int(os.environ.get("SPLASH_FAULT_SCANS", 100 if FULL else 5))
RESULTS: list[Outcome] = []
CASES_PLANNED: list[tuple[str, int]] = []  # filled by the test module
CLOCK: dict[str, float] = {}  # began (monotonic), stack_s, load_start
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
    server = start_postgres_or_skip()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fault_scicat() -> Iterator[FakeSciCat]:
    with FakeSciCat() as fake:
        os.environ[PASSWORD_VAR] = fake.users["ingestor"]
        yield fake


@pytest.fixture(scope="session")
def fault_site(fault_pg: PostgresServer, fault_scicat: FakeSciCat, postgres_server: PostgresServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One ``up`` stack for the whole matrix (the in-process runner; kill_worker swaps in process workers).
    Prefect's own database is on the session's PostgreSQL (as in production; the matrix never kills that one):
    on SQLite, a loaded machine made the restarted server answer 503 "database is locked" for minutes."""
    CLOCK.update(began=time.monotonic(), load_start=os.getloadavg()[0], cpu_start=cpu_seconds())
    prefect_db = postgres_server.create_database(f"prefect_faults_{os.getpid()}").replace("+psycopg", "+asyncpg")
    warm = threading.Thread(target=warm_up, args=(tmp_path_factory.mktemp("faults-warm-up"),), daemon=True)
    warm.start()  # the simulator's first call loads pyFAI (up to 30 s of reading files on a busy disk)
    with started_site(tmp_path_factory.mktemp("faults"), fault_pg, fault_scicat, workers=False,
                      prefect_db=prefect_db) as site:
        CLOCK["stack_s"] = site.started_s
        warm.join()
        yield site
    CLOCK["cpu"] = cpu_seconds() - CLOCK["cpu_start"]


def warm_up(folder: Path) -> None:
    """Simulate one scan while the stack starts, so the first fault's workload does not wait for pyFAI."""
    Workload.make(folder, "ALS-00000", 1, 0)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that ended: the stack's processes, the
    flow-run processes of its workers, the PostgreSQL restarts. Unlike wall time, it does not grow with the
    machine's load."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def header(done: int) -> str:
    """What the table is: mode, size, when, how long and under what load (the machine is shared)."""
    wall = time.monotonic() - CLOCK["began"] if CLOCK.get("began") else 0.0
    total = len(CASES_PLANNED) or done
    state = "complete" if done >= total else f"in progress: {done} of {total} faults"
    per_fault = max(Counter(name for name, _ in CASES_PLANNED).values(), default=1)
    return (f"Fault matrix, {MODE}: {SCANS} scans per fault, {per_fault} seed(s) per fault ({state}); "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; one `up` stack started in {CLOCK.get('stack_s', 0):.0f} s, "
            f"{wall:.0f} s wall from the start of the stack until now, on {os.cpu_count()} cores at load "
            f"{CLOCK.get('load_start', 0):.1f} (start) / {os.getloadavg()[0]:.1f} (now)"
            + (f"; {CLOCK['cpu']:.0f} s of CPU in all (the stack's processes included)" if "cpu" in CLOCK else "")
            + ". Seeds in the table.")


def write_results() -> None:
    """The table so far into ``bench/results/faults-<mode>.md`` (rewritten after every fault, so a long run
    that is stopped still leaves its rows)."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(f"{header(len(RESULTS))}\n\n{table(RESULTS)}\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table at the end of every run that ran a fault, `pytest -q` included (sections are always shown)."""
    if not RESULTS:
        return
    text = table(RESULTS)
    notes = sorted({n for r in RESULTS for n in r.problems})
    terminalreporter.section(f"fault matrix ({MODE}: {SCANS} scans per fault)")
    terminalreporter.write_line(header(len(RESULTS)))
    terminalreporter.write_line(text)
    for n in notes[:30]:
        terminalreporter.write_line(f"  problem: {n}")
    write_results()
    terminalreporter.write_line(f"fault table written to {RESULTS_FILE}")
