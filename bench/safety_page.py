"""How fast the data-safety page and /metrics answer with a big ledger (default: a million files).

Builds a SQLite ledger (or uses --url for PostgreSQL) with N files spread over a year and over 40 proposals:
each has its source copy and two target copies (0.1 % failed, 0.05 % at risk, the newest 0.2 % still in flight),
and detected / copied / verified events. Then times each query the page and /metrics run, and, as the floor a
user would compare with, one bare ``SELECT tier, state, count(*) FROM copies GROUP BY tier, state``.

    .venv/bin/python bench/safety_page.py --files 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from splash_flows.config import default_config
from splash_flows.ledger import Ledger, safety
from splash_flows.ledger.models import Copy, Event, SourceFile
from splash_flows.monitoring.web import create_app


def build(ledger: Ledger, n: int, seed: int = 733) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    step = timedelta(days=365) / n
    batch = 20_000
    for lo in range(0, n, batch):
        files, copies, events = [], [], []
        for i in range(lo, min(n, lo + batch)):
            fid = i + 1
            at = start + step * i
            proposal = f"ALS-{(i * 7919) % 40:05d}"
            path = f"{proposal}/{at:%Y%m%d}/scan_{i:07d}_2m.edf"
            files.append({"id": fid, "source_tier": "data733", "path": path, "size": 10_000_000, "mtime": 0.0,
                          "checksum_alg": "xxh3_128", "checksum": f"{i:032x}", "detected_at": at, "updated_at": at})
            copies.append({"file_id": fid, "tier": "data733", "state": "verified", "size": 10_000_000,
                           "checksum": f"{i:032x}", "verified_at": at, "updated_at": at,
                           "prune_due_at": at + timedelta(days=180)})
            events.append({"at": at, "file_id": fid, "path": path, "tier": "data733", "kind": "detected", "detail": {}})
            in_flight = i >= n - n // 500
            for tier in ("lamarr", "cfs"):
                if in_flight and tier == "cfs":
                    continue
                r = rng.random()
                state = "failed" if r < 0.001 else ("at_risk" if r < 0.0015 else "verified")
                done = at + timedelta(seconds=rng.uniform(0.3, 5))
                copies.append({"file_id": fid, "tier": tier, "state": state, "size": 10_000_000,
                               "checksum": f"{i:032x}", "verified_at": done, "updated_at": done,
                               "prune_due_at": at + timedelta(days=30 if tier == "lamarr" else 365)})
                events.append({"at": done, "file_id": fid, "path": path, "tier": tier,
                               "kind": "verified" if state != "failed" else "failed", "detail": {}})
        with ledger.session() as sess:
            sess.execute(insert(SourceFile.__table__), files)
            sess.execute(insert(Copy.__table__), copies)
            sess.execute(insert(Event.__table__), events)


def _floor(ledger: Ledger) -> Any:
    with ledger.session() as sess:
        return sess.execute(text("SELECT tier, state, count(*) FROM copies GROUP BY tier, state")).all()


def timed(label: str, fn: Callable[[], Any], repeat: int = 3) -> tuple[str, float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return label, best, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--url", help="an empty ledger database (default: a SQLite file in a temporary folder)")
    parser.add_argument("--keep", type=Path, help="build the SQLite ledger here and keep it (re-used if present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = default_config(Path(tmp) / "site")
        db = args.keep or Path(tmp) / "ledger.db"
        reuse = args.keep is not None and args.keep.exists()
        url = args.url or f"sqlite:///{db}"
        t0 = time.perf_counter()
        ledger = Ledger.open(url)  # a kept ledger of an older schema is upgraded here (the counters' backfill)
        if reuse:
            print(f"opened the kept ledger in {time.perf_counter() - t0:.1f} s (including any schema upgrade)")
        if not reuse:
            t0 = time.perf_counter()
            build(ledger, args.files)
            with ledger.session() as sess:
                sess.execute(text("ANALYZE"))
            print(f"built {args.files:,} files in {time.perf_counter() - t0:.1f} s ({ledger.engine.dialect.name})")
        client = TestClient(create_app(config, ledger, overview_ttl=0))
        rows = [
            timed("floor: SELECT tier, state, count(*) FROM copies GROUP BY 1, 2", lambda: _floor(ledger)),
            timed("overview (top of the page; totals)", lambda: safety.overview(ledger, config)),
            timed("per proposal and day, last 14 days, first page", lambda: safety.groups(ledger, config, days=14)),
            timed("files of one proposal, one day (100)", lambda: safety.list_files(
                ledger, config, proposal="ALS-00007", day=f"{datetime.now(UTC) - timedelta(days=3):%Y-%m-%d}")),
            timed("late files (first 100)", lambda: safety.list_files(ledger, config, flag="late")),
            timed("one file's history", lambda: safety.file_detail(ledger, args.files // 2)),
            timed("GET /metrics, first scrape after a start", lambda: client.get("/metrics"), repeat=1),
            timed("GET /metrics, next scrapes", lambda: client.get("/metrics")),
        ]
        ov = rows[1][2]
        print(f"late {ov.late:,}, not safe {ov.not_safe:,}, at risk {ov.at_risk:,}, failed {ov.failed:,}")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'query':64} {'seconds':>8}")
        for label, seconds, _ in rows:
            print(f"{label:64} {seconds:8.3f}")
        ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
