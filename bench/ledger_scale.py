"""Benchmark: the ledger's read paths on PostgreSQL with 1M files and 10M copy rows.

Fills a PostgreSQL ledger with ``--files`` source files (default 1,000,000) and ten copies each (data733, lamarr,
cfs, hpss and six more tiers: 10M copy rows), one catalogue scan per four files, prune due dates and states as a
year of beamline operation leaves them, all with ``INSERT ... SELECT generate_series`` (a few minutes). Then it
times the queries behind

* ``status`` -- one page (keyset, mid-ledger) and the per-tier totals;
* ``prune --plan`` -- unscheduled counts, the due-copy count and one page of due files (now, and 7 days ahead);
* ``reconcile`` and the watcher's rescan -- one 500-path chunk of ``source_progress`` / ``verified_versions``;
* the catalogue step -- pending scans (``scans_in_state``) and the files of one folder (``files_in_folder``);
* the data-safety page -- its totals (``safety.overview``, also /metrics), the per proposal and day table and
  the late files;

each through the ledger function the command calls (best of 3 after a warm-up), and prints PostgreSQL's
``EXPLAIN ANALYZE`` of every statement each one ran. ``--markdown FILE`` writes the section of
docs/PERFORMANCE.md. The aim is under 1 s per query; the test ``tests/unit/test_ledger_indexes.py`` checks
(on small data) that the plans use the indexes named here.

    python bench/ledger_scale.py                          # starts a throw-away PostgreSQL (needs initdb)
    python bench/ledger_scale.py --files 100000           # quicker
    python bench/ledger_scale.py --url postgresql+psycopg://...   # an existing, EMPTY database
    python bench/ledger_scale.py --url ... --reuse --now ISO  # one filled before (upgraded first, timed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (PostgreSQL, EXPLAIN capture)

from sqlalchemy import text
from tests.support.explain import captured, explain
from tests.support.ledger_fill import TIERS, fill, queries
from tests.support.postgres import PostgresServer, start_postgres

from splash_flows.ledger import Ledger


@dataclass
class Timed:
    name: str
    what: str
    best_s: float
    median_s: float
    statements: list[tuple[str, Any]]
    result: str


def timed(ledger: Ledger, name: str, what: str, fn: Callable[[], Any], runs: int = 3) -> Timed:
    with captured(ledger.engine) as stmts:
        out = fn()  # warm-up, and the statements it runs
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    summary = f"{len(out)} rows" if hasattr(out, "__len__") else repr(out)
    return Timed(name, what, min(times), statistics.median(times), list(stmts), summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000, help="source files (copies: ten per file)")
    ap.add_argument("--url", default=None, help="an existing empty PostgreSQL database (default: start one)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the results and plans here (markdown)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --url: a database this benchmark filled before (any older schema: it is upgraded, "
                         "and the upgrade timed); skip the fill")
    ap.add_argument("--now", default=None, help="with --reuse: the time the fill used (ISO 8601; it prints it)")
    args = ap.parse_args(argv)

    server: PostgresServer | None = None
    url = args.url
    if url is None:
        server = start_postgres()
        if server is None:
            print("PostgreSQL is not installed (no initdb): pass --url", file=sys.stderr)
            return 2
        url = server.create_database("ledger_scale")
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC).replace(microsecond=0)
    say = print
    try:
        t0 = time.monotonic()
        ledger = Ledger.open(url)  # with --reuse, this upgrades an older fill (migration 0004 counts its rows)
        upgrade_s = time.monotonic() - t0
        try:
            load = os.getloadavg()
            if args.reuse:
                fill_s = 0.0
                say(f"reusing the fill of {now.isoformat()}; opened and upgraded in {upgrade_s:.1f} s "
                    f"(load {load[0]:.1f})")
            else:
                say(f"filling {args.files:,} files and {args.files * len(TIERS):,} copies "
                    f"(load {load[0]:.1f} on {os.cpu_count()} cores; now = {now.isoformat()}) ...")
                t0 = time.monotonic()
                fill(ledger, args.files, now, say)
                fill_s = time.monotonic() - t0
            with ledger.engine.connect() as conn:
                version = conn.execute(text("SHOW server_version")).scalar_one()
                sizes = conn.execute(text(
                    "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
                    "WHERE relname IN ('files', 'copies', 'catalogue_scans', 'catalogue_files', 'copy_counts')"
                    )).all()
            results = [timed(ledger, name, what, fn) for name, what, fn in queries(ledger, args.files, now)]
            load = os.getloadavg()
            filled = f"reused a fill (upgraded in {upgrade_s:.0f} s)" if args.reuse else f"filled in {fill_s:.0f} s"
            lines = [f"PostgreSQL {version}; {args.files:,} files, {args.files * len(TIERS):,} copies; {filled}; "
                     f"load average {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; "
                     f"sizes: {', '.join(f'{n} {s}' for n, s in sizes)}", "",
                     "| query | what | best | median | result |", "|---|---|---|---|---|"]
            for r in results:
                lines.append(f"| {r.name} | {r.what} | {r.best_s * 1000:.1f} ms | {r.median_s * 1000:.1f} ms | "
                             f"{r.result} |")
            table = "\n".join(lines)
            print("\n" + table)
            plans = []
            for r in results:
                plans.append(f"\n#### {r.name}: {r.what}\n")
                shown = r.statements[:3]
                for statement, params in shown:
                    plan = explain(ledger.engine, statement, params, analyze=True)
                    one_line = " ".join(statement.split())
                    if len(one_line) > 400:
                        one_line = one_line[:400] + " ..."
                    plans.append(f"```\n{one_line}\n\n{plan}\n```")
                if len(r.statements) > len(shown):
                    plans.append(f"({len(r.statements) - len(shown)} more statement(s) of the same shape)")
            if args.markdown:
                args.markdown.write_text(table + "\n" + "\n".join(plans) + "\n")
                print(f"\nplans written to {args.markdown}")
            else:
                print("\n".join(plans))
            slow = [r.name for r in results if r.best_s >= 1.0]
            print(f"\n{len(results) - len(slow)} of {len(results)} queries under 1 s"
                  + (f"; over: {', '.join(slow)}" if slow else ""))
        finally:
            ledger.close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
