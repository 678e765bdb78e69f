"""Benchmark: the ledger's read paths on PostgreSQL with 1M files and 10M copy rows.

Fills a PostgreSQL ledger with ``--files`` source files (default 1,000,000) and ten copies each (data733, lamarr,
cfs, hpss and six more tiers: 10M copy rows), one catalogue scan per four files, prune due dates and states as a
year of beamline operation leaves them, all with ``INSERT ... SELECT generate_series`` (a few minutes). Then it
times the queries behind

* ``status`` -- one page (keyset, mid-ledger) and the per-tier totals;
* ``prune --plan`` -- unscheduled counts, the due-copy count and one page of due files (now, and 7 days ahead);
* ``reconcile`` and the watcher's rescan -- one 500-path chunk of ``source_progress`` / ``verified_versions``;
* the catalogue step -- pending scans (``scans_in_state``) and the files of one folder (``files_in_folder``);

each through the ledger function the command calls (best of 3 after a warm-up), and prints PostgreSQL's
``EXPLAIN ANALYZE`` of every statement each one ran. ``--markdown FILE`` writes the section of
docs/PERFORMANCE.md. The aim is under 1 s per query; the test ``tests/unit/test_ledger_indexes.py`` checks
(on small data) that the plans use the indexes named here.

    python bench/ledger_scale.py                          # starts a throw-away PostgreSQL (needs initdb)
    python bench/ledger_scale.py --files 100000           # quicker
    python bench/ledger_scale.py --url postgresql+psycopg://...   # an existing, EMPTY database
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (PostgreSQL, EXPLAIN capture)

from sqlalchemy import text
from tests.support.explain import captured, explain
from tests.support.postgres import PostgresServer, start_postgres

from splash_flows.ledger import Ledger
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger import prune as ledger_prune
from splash_flows.ledger.outbox import verified_versions
from splash_flows.ledger.progress import source_progress

TIERS = ("data733", "lamarr", "cfs", "hpss", "t4", "t5", "t6", "t7", "t8", "t9")
FILES_PER_SCAN = 4
SPACING_S = 30  # seconds between acquisitions: 1M files span about a year


def path_sql(i: str) -> str:
    """The path of file number ``i`` (SQL expression): proposal / day / scan folder / frame."""
    return (f"format('ALS-%s/%s/scan_%s/frame_%s.edf', lpad(({i} / 100000)::text, 5, '0'), "
            f"lpad((({i} / 2000) % 1000)::text, 4, '0'), lpad(({i} / {FILES_PER_SCAN})::text, 7, '0'), "
            f"{i} % {FILES_PER_SCAN})")


def path_of(i: int) -> str:
    return (f"ALS-{i // 100000:05d}/{(i // 2000) % 1000:04d}/scan_{i // FILES_PER_SCAN:07d}/"
            f"frame_{i % FILES_PER_SCAN}.edf")


def fill(ledger: Ledger, files: int, now: datetime, say: Callable[[str], None]) -> None:
    """1 file = 10 copies; data733 copies due 180 d after acquisition (pruned when past), lamarr 365 d; 1 in 1000
    cfs/hpss copies pending, 1 in 5000 failed; one catalogue scan per 4 files, the newest 500 pending."""
    tiers = ", ".join(f"'{t}'" for t in TIERS)
    steps = [
        ("files", f"""
            INSERT INTO files (id, source_tier, path, size, mtime, checksum_alg, checksum, detected_at, updated_at)
            SELECT i, 'data733', {path_sql('i')}, 9900000 + i % 7,
                   extract(epoch FROM ts), 'xxh3_128', md5(i::text) || md5((-i)::text), ts, ts
            FROM generate_series(1, :n) AS i,
                 LATERAL (SELECT CAST(:now AS timestamptz) - (:n - i) * interval '{SPACING_S} seconds' AS ts) AS t"""),
        ("copies", f"""
            INSERT INTO copies (file_id, tier, state, size, checksum, verified_at, updated_at, prune_due_at)
            SELECT f.id, t.tier,
                   CASE WHEN t.tier = 'data733' AND f.detected_at + interval '180 days' < :now THEN 'pruned'
                        WHEN t.tier IN ('cfs', 'hpss') AND f.id % 1000 = 7 THEN 'pending'
                        WHEN t.tier IN ('cfs', 'hpss') AND f.id % 5000 = 11 THEN 'failed'
                        ELSE 'verified' END,
                   f.size, f.checksum, f.detected_at, f.detected_at,
                   CASE t.tier WHEN 'data733' THEN f.detected_at + interval '180 days'
                               WHEN 'lamarr' THEN f.detected_at + interval '365 days' END
            FROM files AS f CROSS JOIN unnest(ARRAY[{tiers}]) AS t(tier)"""),
        ("catalogue_scans", f"""
            INSERT INTO catalogue_scans (id, source_tier, scan_key, state, pid, locations, attempts, updated_at)
            SELECT s, 'data733', {path_sql(f's * {FILES_PER_SCAN}')},
                   CASE WHEN s > :n / {FILES_PER_SCAN} - 500 THEN 'pending_catalogue' ELSE 'catalogued' END,
                   CASE WHEN s > :n / {FILES_PER_SCAN} - 500 THEN NULL ELSE 'pid/' || s END, '{{}}', 1,
                   CAST(:now AS timestamptz) - (:n / {FILES_PER_SCAN} - s) * interval '2 minutes'
            FROM generate_series(0, :n / {FILES_PER_SCAN}) AS s"""),
        ("catalogue_files", f"""
            INSERT INTO catalogue_files (file_id, scan_id) SELECT id, id / {FILES_PER_SCAN} FROM files"""),
    ]
    with ledger.engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for name, sql in steps:
            start = time.monotonic()
            conn.execute(text(sql), {"n": files, "now": now})
            say(f"  filled {name} in {time.monotonic() - start:.0f} s")
        for table in ("files", "catalogue_scans"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"(SELECT max(id) FROM {table}))"))
    with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        start = time.monotonic()
        conn.execute(text("VACUUM (ANALYZE)"))
        say(f"  VACUUM ANALYZE in {time.monotonic() - start:.0f} s")


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


def queries(ledger: Ledger, files: int, now: datetime) -> list[tuple[str, str, Callable[[], Any]]]:
    mid = path_of(files // 2)
    chunk = [path_of(i) for i in range(files // 3, files // 3 + 500)]
    prune_tiers = ["data733", "lamarr"]
    week = now + timedelta(days=7)
    folder = mid.rsplit("/", 1)[0]
    far = datetime(9999, 1, 1, tzinfo=UTC)
    return [
        ("status page", "status --limit 100 --after PATH (keyset page, mid-ledger)",
         lambda: ledger.status_page("data733", after=mid, limit=100)),
        ("status totals", "status --totals (copies per tier and state)", ledger.copy_totals),
        ("prune: unscheduled", "prune --plan: verified copies without a due date",
         lambda: ledger_prune.unscheduled_counts(ledger, prune_tiers)),
        ("prune: count due now", "prune: copies due now (progress total)",
         lambda: ledger_prune.count_due(ledger, tiers=prune_tiers, until=now)),
        ("prune: due page now", "prune run: first page of files due now (none: all past-due are pruned)",
         lambda: ledger_prune.due_files(ledger, tiers=prune_tiers, until=now, limit=500, claimed_before=now)),
        ("prune: count due 7 d", "prune --plan --until +7d: copies due",
         lambda: ledger_prune.count_due(ledger, tiers=prune_tiers, until=week)),
        ("prune: due page 7 d", "prune --plan --until +7d: one page of 500 due files",
         lambda: ledger_prune.due_files(ledger, tiers=prune_tiers, until=week, limit=500, claimed_before=far)),
        ("reconcile chunk", "reconcile: source_progress of 500 paths",
         lambda: source_progress(ledger, "data733", chunk)),
        ("rescan chunk", "watcher rescan/backfill: verified_versions of 500 paths",
         lambda: verified_versions(ledger, "data733", ["lamarr", "cfs"], chunk)),
        ("catalogue pending", "catalogue step: pending scans, least recently tried first (limit 50)",
         lambda: ledger_cat.scans_in_state(ledger, ["pending_catalogue"], limit=50)),
        ("catalogue folder", "catalogue step: the known files of one scan folder",
         lambda: ledger_cat.files_in_folder(ledger, "data733", folder)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000, help="source files (copies: ten per file)")
    ap.add_argument("--url", default=None, help="an existing empty PostgreSQL database (default: start one)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the results and plans here (markdown)")
    args = ap.parse_args(argv)

    server: PostgresServer | None = None
    url = args.url
    if url is None:
        server = start_postgres()
        if server is None:
            print("PostgreSQL is not installed (no initdb): pass --url", file=sys.stderr)
            return 2
        url = server.create_database("ledger_scale")
    now = datetime.now(UTC).replace(microsecond=0)
    say = print
    try:
        ledger = Ledger.open(url)
        try:
            load = os.getloadavg()
            say(f"filling {args.files:,} files and {args.files * len(TIERS):,} copies "
                f"(load {load[0]:.1f} on {os.cpu_count()} cores) ...")
            t0 = time.monotonic()
            fill(ledger, args.files, now, say)
            fill_s = time.monotonic() - t0
            with ledger.engine.connect() as conn:
                version = conn.execute(text("SHOW server_version")).scalar_one()
                sizes = conn.execute(text(
                    "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
                    "WHERE relname IN ('files', 'copies', 'catalogue_scans', 'catalogue_files')")).all()
            results = [timed(ledger, name, what, fn) for name, what, fn in queries(ledger, args.files, now)]
            load = os.getloadavg()
            lines = [f"PostgreSQL {version}; {args.files:,} files, {args.files * len(TIERS):,} copies; filled in "
                     f"{fill_s:.0f} s; load average {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; "
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
