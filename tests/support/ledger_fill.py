"""A ledger as a year of beamline operation leaves it, filled in bulk with SQL, and the read queries that must
stay fast on it. Shared by ``bench/ledger_scale.py`` (1M files, 10M copies) and the index test (a few hundred).

PostgreSQL only (``generate_series``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from splash_flows.config import Config, default_config
from splash_flows.ledger import Ledger, safety
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger import overview as ov
from splash_flows.ledger import prune as ledger_prune
from splash_flows.ledger.outbox import in_flight_versions, verified_versions
from splash_flows.ledger.progress import source_progress
from splash_flows.ledger.scan_state import settled_folders

TIERS = ("data733", "lamarr", "cfs", "hpss", "t4", "t5", "t6", "t7", "t8", "t9")
FILES_PER_SCAN = 4
OUTBOX_FILES = 100  # files per outbox entry
YEAR_S = 365 * 86400  # the files' acquisitions span one year, whatever their number


def path_sql(i: str) -> str:
    """The path of file number ``i`` (SQL expression): proposal / day / scan folder / frame."""
    return (f"format('ALS-%s/%s/scan_%s/frame_%s.edf', lpad(({i} / 100000)::text, 5, '0'), "
            f"lpad((({i} / 2000) % 1000)::text, 4, '0'), lpad(({i} / {FILES_PER_SCAN})::text, 7, '0'), "
            f"{i} % {FILES_PER_SCAN})")


def path_of(i: int) -> str:
    return (f"ALS-{i // 100000:05d}/{(i // 2000) % 1000:04d}/scan_{i // FILES_PER_SCAN:07d}/"
            f"frame_{i % FILES_PER_SCAN}.edf")


def fill(ledger: Ledger, files: int, now: datetime, say: Callable[[str], None] = lambda _: None) -> None:
    """1 file = 10 copies; data733 copies due 180 d after acquisition (pruned when past), lamarr 365 d; 1 in 1000
    cfs/hpss copies pending, 1 in 5000 failed, 1 in 1000 lamarr copies
    unscheduled (moved before scheduling existed); one catalogue scan per 4 files, the newest 500 pending."""
    tiers = ", ".join(f"'{t}'" for t in TIERS)
    steps = [
        ("files", f"""
            INSERT INTO files (id, source_tier, path, size, mtime, checksum_alg, checksum, detected_at, updated_at)
            SELECT i, 'data733', {path_sql('i')}, 9900000 + i % 7,
                   extract(epoch FROM ts), 'xxh3_128', md5(i::text) || md5((-i)::text), ts, ts
            FROM generate_series(1, :n) AS i,
                 LATERAL (SELECT CAST(:now AS timestamptz) - (:n - i) * (:year / :n) * interval '1 second' AS ts)
                 AS t"""),
        ("copies", f"""
            INSERT INTO copies (file_id, tier, state, size, checksum, verified_at, updated_at, prune_due_at)
            SELECT f.id, t.tier,
                   CASE WHEN t.tier = 'data733' AND f.detected_at + interval '180 days' < :now THEN 'pruned'
                        WHEN t.tier IN ('cfs', 'hpss') AND f.id % 1000 = 7 THEN 'pending'
                        WHEN t.tier IN ('cfs', 'hpss') AND f.id % 5000 = 11 THEN 'failed'
                        ELSE 'verified' END,
                   f.size, f.checksum, f.detected_at, f.detected_at,
                   CASE t.tier WHEN 'data733' THEN f.detected_at + interval '180 days'
                               WHEN 'lamarr' THEN CASE WHEN f.id % 1000 <> 3
                                                       THEN f.detected_at + interval '365 days' END END
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
        # the watcher's outbox: one entry per 100 files (the newest 10 pending), each file indexed with its version
        ("outbox", f"""
            INSERT INTO outbox (id, created_at, idempotency_key, deployment, paths, state, attempts, sent_at)
            SELECT e, CAST(:now AS timestamptz) - (:n / {OUTBOX_FILES} - e) * interval '1 minute', 'key-' || e,
                   'dispatcher/run_733_dispatcher', '[]',
                   CASE WHEN e > :n / {OUTBOX_FILES} - 10 THEN 'pending' ELSE 'sent' END, 1,
                   CASE WHEN e > :n / {OUTBOX_FILES} - 10 THEN NULL
                        ELSE CAST(:now AS timestamptz) - (:n / {OUTBOX_FILES} - e) * interval '1 minute' END
            FROM generate_series(0, :n / {OUTBOX_FILES}) AS e"""),
        ("outbox_paths", f"""
            INSERT INTO outbox_paths (entry_id, path, size, mtime)
            SELECT id / {OUTBOX_FILES}, path, size, mtime FROM files"""),
        # the watcher's settled folders: every scan folder (the newest 500 scans' folders are still being sent)
        ("scan_folders", f"""
            INSERT INTO scan_folders (tier, path, mtime_ns, files)
            SELECT DISTINCT 'data733', regexp_replace(path, '/[^/]*$', ''), 1, {FILES_PER_SCAN}
            FROM files WHERE id <= :n - 500 * {FILES_PER_SCAN}"""),
    ]
    with ledger.engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        # secondary indexes of copies are built after the rows are in (a sorted build, not 10M insertions)
        later = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'copies' "
                                  "AND indexname NOT IN ('copies_pkey', 'uq_copies_file_tier')")).all()
        for name, _definition in later:
            conn.execute(text(f'DROP INDEX "{name}"'))
        for name, sql in steps:
            start = time.monotonic()
            conn.execute(text(sql), {"n": files, "now": now, "year": float(YEAR_S)})
            say(f"  filled {name} in {time.monotonic() - start:.0f} s")
        start = time.monotonic()
        for _name, definition in later:
            conn.execute(text(definition))
        say(f"  built {len(later)} copies index(es) in {time.monotonic() - start:.0f} s")
        for table in ("files", "catalogue_scans", "outbox"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"(SELECT max(id) FROM {table}))"))
    with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        start = time.monotonic()
        conn.execute(text("VACUUM (ANALYZE)"))
        say(f"  VACUUM ANALYZE in {time.monotonic() - start:.0f} s")


def page_config() -> Config:
    """The configuration the page reads the filled ledger with: source data733, targets lamarr and cfs (the 7.3.3
    layout), late after the default objective. Only tier names matter: no folder is touched."""
    return default_config(Path(tempfile.gettempdir()) / "ledger-fill-site")


def queries(ledger: Ledger, files: int, now: datetime) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, what it serves, the call) for every read path ``bench/ledger_scale.py`` times."""
    mid = path_of(files // 2)
    chunk = [path_of(i) for i in range(files // 3, files // 3 + 500)]
    prune_tiers = ["data733", "lamarr"]
    week = now + timedelta(days=7)
    folder = mid.rsplit("/", 1)[0]
    far = datetime(9999, 1, 1, tzinfo=UTC)
    site = page_config()
    return [
        ("status page", "status --limit 100 --after PATH (keyset page, mid-ledger)",
         lambda: ov.status_page(ledger, limit=100, after=("data733", mid)).rows),
        ("status totals", "status: files, bytes, copies per tier and state (the counters)",
         lambda: ov.totals(ledger).tiers),
        ("status --state failed", "status --state failed (any tier): its first page of 100",
         lambda: ov.status_page(ledger, ov.StatusFilter(states=((None, "failed"),)), limit=100).rows),
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
        ("rescan: in flight", "watcher rescan/backfill: in_flight_versions of 500 paths (newest: pending)",
         lambda: in_flight_versions(ledger, [path_of(i) for i in range(files - 500, files)],
                                    now - timedelta(hours=1))),
        ("rescan: settled", "light rescan: settled_folders of 500 scan folders",
         lambda: settled_folders(ledger, "data733", list(dict.fromkeys(
             path_of(i).rsplit("/", 1)[0] for i in range(files // 3, files // 3 + 500 * FILES_PER_SCAN))))),
        ("catalogue pending", "catalogue step: pending scans, least recently tried first (limit 50)",
         lambda: ledger_cat.scans_in_state(ledger, ["pending_catalogue"], limit=50)),
        ("catalogue folder", "catalogue step: the known files of one scan folder",
         lambda: ledger_cat.files_in_folder(ledger, "data733", folder)),
        ("page: totals", "data-safety page and /metrics: the overview (cards, tier table, late, at risk)",
         lambda: [safety.overview(ledger, site, now=now)]),
        ("page: per day", "data-safety page: per proposal and day, first page (its default window, 14 days)",
         lambda: safety.groups(ledger, site, days=site.monitoring.window_days, now=now)[0]),
        ("page: late files", "data-safety page: late files, first 100",
         lambda: safety.list_files(ledger, site, flag="late", now=now)),
    ]


