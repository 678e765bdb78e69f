"""Benchmark: how fast the ``splash-flows`` command line answers, against the floor a user would compare it with.

Times, in the same run, each command as a fresh process (the way an operator runs it), best and median of
``--repeat`` runs:

* baselines -- ``python -c pass`` (the interpreter's own start-up: the floor for any Python CLI) and
  ``sqlite3 LEDGER 'SELECT count(*) FROM files'`` (the least a person could type to ask the ledger anything);
* floors    -- importing only the libraries ``status`` needs: Typer and rich (the CLI), pydantic (Typer 0.29
  converts every option through a pydantic ``TypeAdapter``, and the configuration is pydantic models); a Typer
  command with one option, run (its first ``TypeAdapter`` imports pydantic's schema machinery); then the
  project's configuration models (``splash_flows.config``, which every command validates): what ``status`` cannot
  go below; and, for comparison, SQLAlchemy's core and its ORM, which ``status`` no longer imports (it reads the
  ledger through ``sqlite3`` / ``psycopg``, ``ledger/dbapi.py``);
* ours      -- ``splash-flows --help``; ``status`` on a demo-sized ledger (9 files, as ``make demo`` leaves);
  ``status`` on a ledger of ``--files`` files (default 100,000, three tiers, events, catalogue); and
  ``status --json --limit 100`` there.

``--compare-src DIR`` also times ``--help`` and ``status`` with another source tree first on PYTHONPATH (e.g. a
``git archive`` of the commit before, on ledgers its own code built), for a before/after from one run. Every
command runs with its bytecode cached (``PYTHONPYCACHEPREFIX`` under the temporary folder, one warm-up run
first), as an installed package's is, even where the environment sets ``PYTHONDONTWRITEBYTECODE``. The
ledgers are built here (SQLite, bulk inserts through the same schema as production) under a temporary
folder. Prints a table with the ratio of each to ``python -c pass`` and a JSON line for the README table.
Aims (issue 12.5): ``--help`` and ``status`` on the demo under 0.5 s, ``status`` on 100,000 files under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

TARGETS = ("lamarr", "cfs")


def build_ledger(root: Path, files: int) -> Path:
    """A demo-shaped configuration under ``root`` whose ledger holds ``files`` files: every one verified on
    data733 and (all but every 1000th, which failed on cfs) on lamarr and cfs, five events each, one scan per
    two files; plus a few refused paths. Returns the configuration file."""
    from sqlalchemy import insert

    from splash_flows.ledger import Ledger
    from splash_flows.ledger.models import CatalogueFile, CatalogueScan, Copy, Event, SourceFile

    root.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "ledger": {"url": f"sqlite:///{root / 'ledger.db'}"},
        "tiers": {t: {"root": str(root / t)} for t in ("data733", *TARGETS)},
        "move": {"source": "data733", "targets": list(TARGETS)},
        "catalogue": {"kind": "embedded", "path": str(root / "catalogue.db")},
    }
    path = root / "splash-flows.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    ledger = Ledger.open(cfg["ledger"]["url"])
    now = datetime.now(UTC) - timedelta(hours=2)
    chunk = 20_000
    try:
        with ledger.engine.begin() as conn:
            for start in range(0, files, chunk):
                ids = range(start + 1, min(files, start + chunk) + 1)
                conn.execute(insert(SourceFile), [
                    {"id": i, "source_tier": "data733", "path": f"ALS-{i // 5000:05d}/20261130/sample_{i:07d}_2m.edf",
                     "size": 9_900_000, "mtime": 0.0, "checksum_alg": "xxh3_128", "checksum": f"{i:032x}",
                     "detected_at": now, "updated_at": now} for i in ids])
                copies = []
                events = []
                for i in ids:
                    for tier in ("data733", *TARGETS):
                        failed = tier == "cfs" and i % 1000 == 0
                        copies.append({"file_id": i, "tier": tier, "state": "failed" if failed else "verified",
                                       "size": 9_900_000, "checksum": f"{i:032x}", "verified_at": now,
                                       "error": "bench: injected failure" if failed else None, "updated_at": now})
                    for kind, tier in (("detected", "data733"), ("copied", "lamarr"), ("verified", "lamarr"),
                                       ("copied", "cfs"), ("verified", "cfs")):
                        events.append({"at": now, "file_id": i, "path": None, "tier": tier, "kind": kind,
                                       "detail": {}})
                conn.execute(insert(Copy), copies)
                conn.execute(insert(Event), events)
                scans = sorted({(i + 1) // 2 for i in ids})
                conn.execute(insert(CatalogueScan), [
                    {"id": s, "source_tier": "data733", "scan_key": f"scan-{s}", "state": "catalogued",
                     "pid": f"embedded/{s:08d}", "locations": {}, "attempts": 1, "updated_at": now}
                    for s in scans])
                conn.execute(insert(CatalogueFile), [{"file_id": i, "scan_id": (i + 1) // 2} for i in ids])
            conn.execute(insert(Event), [
                {"at": now, "file_id": None, "path": f"export/controlled_{k}.edf", "tier": "data733",
                 "kind": "refused", "detail": {"reason": "export-controlled folder"}} for k in range(5)])
    finally:
        ledger.close()
    return path


def timed(argv: list[str], repeat: int, env: dict[str, str]) -> tuple[float, float, float]:
    """Best and median wall time, and best CPU time (user + system), of ``repeat`` runs of ``argv`` (each must
    exit 0). On a loaded machine the CPU time is the steadier figure."""
    runs = []
    cpus = []
    subprocess.run(argv, env=env, capture_output=True, check=False)  # warm-up: caches the bytecode
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        runs.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return min(runs), statistics.median(runs), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="files in the large ledger")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (best and median reported)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--compare-src", type=Path, help="another source tree to time the same commands with")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # DIR: build the two ledgers, nothing else
    args = ap.parse_args()
    if args.build_only:
        build_ledger(args.build_only / "demo", 9)
        build_ledger(args.build_only / "large", args.files)
        return

    work = Path(tempfile.mkdtemp(prefix="splash-cli-bench-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPLASH_FLOWS_CONFIG", "PREFECT_API_URL", "PYTHONDONTWRITEBYTECODE")}
    env["COLUMNS"] = "80"
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")  # bytecode cached, as an installed package's is
    trees: list[tuple[str, dict[str, str]]] = [("", env)]
    if args.compare_src:  # its own ledgers, built by its own code (its schema may be older)
        trees.append((f" [{args.compare_src.name}]",
                      {**env, "PYTHONPATH": str(args.compare_src.resolve() / "src")}))
    cli = [sys.executable, "-m", "splash_flows"]
    results: dict[str, tuple[float, float, float]] = {}
    try:
        t0 = time.perf_counter()
        for i, (_suffix, tree_env) in enumerate(trees):
            subprocess.run([sys.executable, __file__, "--build-only", str(work / str(i)), "--files", str(args.files)],
                           env=tree_env, check=True)
        print(f"built ledgers of 9 and {args.files:,} files in {time.perf_counter() - t0:.1f} s", flush=True)
        results["python -c pass"] = timed([sys.executable, "-c", "pass"], args.repeat, env)
        one_option = ("import typer, rich.console, rich.table\napp = typer.Typer()\n"
                      "@app.command()\ndef main(n: int = 1) -> None:\n    pass\n"
                      "app(['--n', '2'], standalone_mode=False)")
        floors = [("floor: import typer, rich, pydantic", "import typer, rich.console, rich.table, pydantic"),
                  ("floor: a Typer command with one option", one_option),
                  ("floor: ... + splash_flows.config", "import typer, rich.console, rich.table, pydantic, "
                                                      "splash_flows.config"),
                  ("floor: ... + sqlalchemy (core)", "import typer, rich.console, rich.table, pydantic, sqlalchemy"),
                  ("floor: ... + sqlalchemy.orm", "import typer, rich.console, rich.table, pydantic, sqlalchemy.orm")]
        for name, code in floors:
            results[name] = timed([sys.executable, "-c", code], args.repeat, env)
        if shutil.which("sqlite3"):
            results[f"sqlite3 count(*) ({args.files:,} files)"] = timed(
                ["sqlite3", str(work / "0" / "large" / "ledger.db"), "SELECT count(*) FROM files"], args.repeat, env)
        for i, (suffix, tree_env) in enumerate(trees):
            small, large = work / str(i) / "demo" / "splash-flows.yaml", work / str(i) / "large" / "splash-flows.yaml"
            cases = [
                ("splash-flows --help", [*cli, "--help"]),
                ("status (demo, 9 files)", [*cli, "--config", str(small), "status"]),
                (f"status ({args.files:,} files)", [*cli, "--config", str(large), "status"]),
            ]
            if not suffix:
                cases += [
                    (f"status --state failed ({args.files:,})",
                     [*cli, "--config", str(large), "status", "--state", "failed"]),
                    (f"status --json --limit 100 ({args.files:,})",
                     [*cli, "--config", str(large), "status", "--json", "--limit", "100"]),
                ]
            for name, argv in cases:
                results[name + suffix] = timed(argv, args.repeat, tree_env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    floor = results["python -c pass"][0]
    print(f"load average {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores")
    print(f"{'command':44} {'best':>8} {'median':>8} {'cpu':>8} {'best/python':>12}")
    for name, (best, med, cpu) in results.items():
        print(f"{name:44} {best:7.3f}s {med:7.3f}s {cpu:7.3f}s {best / floor:11.1f}x")
    print(json.dumps({"bench": "cli_latency", "files": args.files, "repeat": args.repeat,
                      "results": {k: {"best_s": round(b, 3), "median_s": round(m, 3), "cpu_s": round(c, 3)}
                                  for k, (b, m, c) in results.items()},
                      "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
                      "load_1min": round(os.getloadavg()[0], 1), "date": datetime.now(UTC).date().isoformat()}))


if __name__ == "__main__":
    main()
