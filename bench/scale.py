"""Benchmark: a million files -- the watcher's scans and ``reconcile --dry-run`` against ``find`` on one tree.

Builds a nested tree of ``--files`` files (default 1,000,000: proposal / day / scan folders of 100 files), then
measures, each in a fresh process (wall time and peak resident memory):

* ``find``           -- ``find ROOT -type f -printf '%s %T@ %P\\n'``: names, sizes and mtimes, what our scans read;
* backfill           -- the watcher started for real (``Watcher.start``: observer, then the startup scan) on an
                        empty ledger, every file new: the time until the scan is done and until every file is
                        in the outbox (Prefect is "down", so nothing is sent); the scan waits while more than
                        ``SCAN_BACKLOG`` found files wait to become ready, so memory stays flat;
* full rescan        -- the same scan with the ledger holding every file verified on both targets (the steady
                        state: nothing to send; memory should not grow with the tree): every file ``lstat``-ed
                        and looked up. The first one also records the settled folders (``scan_folders``: a
                        row per leaf folder), the second finds them recorded: both are timed;
* light rescan       -- a periodic rescan between full ones (``watcher.full_rescan_every``): settled folders
                        whose mtime is unchanged are not listed;
* reconcile dry run  -- ``splash-flows reconcile --dry-run --json --min-age 0`` on the same ledger.

The ledger (SQLite, the default) is filled directly with one row per file and its three verified copies, as
the move would have left them. File contents never matter to a scan (it reads names and ``stat``), so files are
empty unless ``--size`` says otherwise. Aims: scans <= 2x ``find``; memory not growing with the tree beyond
the ledger's index. Prints a table (wall time and CPU time: on a loaded machine ``find``, mostly kernel time,
waits less for a core than Python does, so the CPU ratio is the steadier one) and a JSON line; ``--dir`` on
tmpfs (``/dev/shm``) measures the scan's own cost when the disk is shared and busy (file creation on a loaded
disk costs milliseconds per file).

    python bench/scale.py --dir /dev/shm/splash-scale            # 1,000,000 files
    python bench/scale.py --files 100000 --dir /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PER_FOLDER = 100
MTIME0 = 1_767_225_600  # 2026-01-01


def rel_of(i: int) -> str:
    return (f"ALS-{i // 100_000:05d}/day_{(i // 10_000) % 10:02d}/scan_{(i // PER_FOLDER) % 100:03d}/"
            f"frame_{i:07d}.edf")


def build_tree(root: Path, files: int, size: int) -> float:
    start = time.monotonic()
    payload = b"\0" * size
    made: set[str] = set()
    for i in range(files):
        rel = rel_of(i)
        folder = rel.rsplit("/", 1)[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        path = f"{root}/{rel}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if payload:
                os.write(fd, payload)
        finally:
            os.close(fd)
        os.utime(path, (MTIME0 + i, MTIME0 + i))
        if i and i % 100_000 == 0:
            print(f"  {i:,} files ...", flush=True)
    (root / ".complete").write_text(str(files))
    return time.monotonic() - start


def write_config(work: Path, tree: Path) -> Path:
    from splash_flows.config import default_config_data

    data = default_config_data(work / "site")
    data["tiers"]["data733"]["root"] = str(tree)
    data["ledger"]["url"] = f"sqlite:///{work / 'ledger.db'}"
    for name, tier in data["tiers"].items():
        if name != "data733":
            Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = work / "splash-flows.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fill_ledger(db: Path, files: int, size: int) -> float:
    """Every file registered and verified on data733, lamarr and cfs (what a completed move leaves)."""
    start = time.monotonic()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now = "2026-01-02 00:00:00.000000"
    with conn:
        conn.execute("DELETE FROM copies")
        conn.execute("DELETE FROM files")
        conn.executemany(
            "INSERT INTO files (id, source_tier, path, size, mtime, checksum_alg, checksum, detected_at, updated_at) "
            "VALUES (?, 'data733', ?, ?, ?, 'xxh3_128', ?, ?, ?)",
            ((i + 1, rel_of(i), size, float(MTIME0 + i), f"{i:032x}", now, now) for i in range(files)))
        conn.executemany(
            "INSERT INTO copies (file_id, tier, state, size, checksum, verified_at, updated_at) "
            "VALUES (?, ?, 'verified', ?, ?, ?, ?)",
            ((i + 1, tier, size, f"{i:032x}", now, now) for i in range(files) for tier in ("data733", "lamarr", "cfs")))
    conn.close()
    return time.monotonic() - start


def measure(argv: list[str], *, stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run ``argv`` in a fresh child; its wall time and peak RSS (through a tiny wrapper that reports both)."""
    wrapper = ("import json,resource,subprocess,sys,time;t=time.monotonic();"
               "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
               "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print(json.dumps({'rc':r.returncode,'s':time.monotonic()-t,'cpu_s':u.ru_utime+u.ru_stime,"
               "'maxrss_kb':u.ru_maxrss}))")
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{argv[:3]} exited {result['rc']}: {out.stderr[-2000:]}")
    return result


SCAN = """
import json, sys, time, resource
from pathlib import Path
from splash_flows.config import load_config_file
from splash_flows.ledger import Ledger
from splash_flows.watcher import Watcher

class Nothing:
    def trigger(self, paths, idempotency_key):
        raise AssertionError("the scan alone never triggers")

config = load_config_file(Path(sys.argv[1]))
ledger = Ledger.open(config.ledger.url_value())
watcher = Watcher(config, ledger, Nothing())
start, cpu = time.monotonic(), time.process_time()
found = watcher.rescan("", light=len(sys.argv) > 2 and sys.argv[2] == "light")
print(json.dumps({"found": found, "scan_s": time.monotonic() - start, "cpu_s": time.process_time() - cpu,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""


BACKFILL = """
import json, sys, time, resource
from pathlib import Path
from splash_flows.config import load_config_file
from splash_flows.errors import OrchestrationError
from splash_flows.ledger import Ledger
from splash_flows.ledger.outbox import Outbox
from splash_flows.watcher import Watcher

class Down:
    def trigger(self, paths, idempotency_key):
        raise OrchestrationError("the benchmark measures the backfill up to the outbox")

scans = []
def hook(event):
    if event.kind == "rescan" and not event.detail["prefix"]:
        scans.append(event.detail)

config = load_config_file(Path(sys.argv[1]))
ledger = Ledger.open(config.ledger.url_value())
watcher = Watcher(config, ledger, Down(), hook=hook)
start, cpu = time.monotonic(), time.process_time()
watcher.start()
while not scans:
    time.sleep(0.05)
scan_s = time.monotonic() - start
while watcher.pending_files():
    time.sleep(0.2)
queued_s, cpu_s = time.monotonic() - start, time.process_time() - cpu
watcher.stop()
maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the check below reads every path
entries = Outbox(ledger).entries()
print(json.dumps({"found": scans[0]["found"], "scan_s": scan_s, "queued_s": queued_s, "cpu_s": cpu_s,
                  "queued_files": sum(len(e.paths) for e in entries), "outbox_entries": len(entries),
                  "self_maxrss_kb": maxrss_kb}), file=sys.stderr)
"""


def run_scan(config: Path, script: str = SCAN, *extra: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", script, str(config), *extra], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"scan failed: {proc.stderr[-3000:]}")
    line = [x for x in proc.stderr.strip().splitlines() if x.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=0, help="bytes per file (default 0: scans never read contents)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/splash-scale"), help="scratch folder (kept for reuse)")
    ap.add_argument("--clean", action="store_true", help="remove the scratch folder at the end")
    args = ap.parse_args(argv)

    work = args.dir.resolve()
    tree = work / f"tree-{args.files}"
    results: dict[str, Any] = {"files": args.files, "dir": str(work), "cores": os.cpu_count()}
    marker = tree / ".complete"
    if not (marker.exists() and marker.read_text() == str(args.files)):
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        print(f"building {args.files:,} files under {tree} ...", flush=True)
        results["build_s"] = build_tree(tree, args.files, args.size)
    marker.unlink()  # not a data file: the scans must see exactly the tree
    try:
        config = write_config(work, tree)
        db = work / "ledger.db"
        for leftover in work.glob("ledger.db*"):
            leftover.unlink()

        load0 = os.getloadavg()[0]
        find = measure(["find", str(tree), "-type", "f", "-printf", "%s %T@ %P\n"])
        print(f"find: {find['s']:.2f} s, {find['maxrss_kb'] / 1024:.0f} MiB", flush=True)

        from splash_flows.ledger import Ledger

        Ledger.open(f"sqlite:///{db}").close()  # schema
        backfill = run_scan(config, BACKFILL)
        if backfill["queued_files"] != args.files:
            raise SystemExit(f"the backfill queued {backfill['queued_files']:,} files, not {args.files:,}")
        print(f"backfill (empty ledger): scan {backfill['scan_s']:.2f} s, every file in the outbox "
              f"{backfill['queued_s']:.2f} s ({backfill['outbox_entries']:,} entries), found "
              f"{backfill['found']:,}, {backfill['self_maxrss_kb'] / 1024:.0f} MiB", flush=True)
        for leftover in work.glob("ledger.db*"):  # the rescan's ledger: every file verified, empty outbox
            leftover.unlink()
        Ledger.open(f"sqlite:///{db}").close()

        results["ledger_fill_s"] = fill_ledger(db, args.files, args.size)
        first_full = run_scan(config)
        print(f"first full rescan (all verified; records settled folders): {first_full['scan_s']:.2f} s, found "
              f"{first_full['found']:,}, {first_full['self_maxrss_kb'] / 1024:.0f} MiB", flush=True)
        rescan = run_scan(config)
        print(f"full rescan (all verified): {rescan['scan_s']:.2f} s, found {rescan['found']:,}, "
              f"{rescan['self_maxrss_kb'] / 1024:.0f} MiB", flush=True)
        light = run_scan(config, SCAN, "light")
        print(f"light rescan: {light['scan_s']:.2f} s, found {light['found']:,}, "
              f"{light['self_maxrss_kb'] / 1024:.0f} MiB", flush=True)
        find2 = measure(["find", str(tree), "-type", "f", "-printf", "%s %T@ %P\n"])
        reconcile = measure([sys.executable, "-m", "splash_flows", "--config", str(config), "reconcile",
                             "--dry-run", "--json", "--min-age", "0"])
        print(f"reconcile --dry-run: {reconcile['s']:.2f} s, {reconcile['maxrss_kb'] / 1024:.0f} MiB", flush=True)
        baseline = min(find["s"], find2["s"])
        results.update({
            "find_s": baseline, "find_maxrss_mib": find["maxrss_kb"] / 1024,
            "find_cpu_s": min(find["cpu_s"], find2["cpu_s"]), "backfill_cpu_s": backfill["cpu_s"],
            "rescan_cpu_s": rescan["cpu_s"], "reconcile_cpu_s": reconcile["cpu_s"],
            "backfill_s": backfill["scan_s"], "backfill_queued_s": backfill["queued_s"],
            "backfill_found": backfill["found"],
            "backfill_maxrss_mib": backfill["self_maxrss_kb"] / 1024,
            "rescan_s": rescan["scan_s"], "rescan_found": rescan["found"],
            "rescan_maxrss_mib": rescan["self_maxrss_kb"] / 1024,
            "first_rescan_s": first_full["scan_s"], "first_rescan_cpu_s": first_full["cpu_s"],
            "first_rescan_maxrss_mib": first_full["self_maxrss_kb"] / 1024,
            "light_rescan_s": light["scan_s"], "light_rescan_cpu_s": light["cpu_s"], "light_found": light["found"],
            "light_rescan_maxrss_mib": light["self_maxrss_kb"] / 1024,
            "reconcile_dry_run_s": reconcile["s"], "reconcile_maxrss_mib": reconcile["maxrss_kb"] / 1024,
            "ledger_db_mib": db.stat().st_size / 2**20,
            "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
        })
        print(f"\n{args.files:,} files ({work}); load {load0:.1f} -> {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        fcpu = results["find_cpu_s"]
        print("| work | time | vs find | CPU (user+sys) | vs find | peak memory |\n|---|---|---|---|---|---|\n"
              f"| find -type f -printf size,mtime,path | {baseline:.2f} s | 1.00 | {fcpu:.2f} s | 1.00 | "
              f"{find['maxrss_kb'] / 1024:.0f} MiB |")
        for name, key, cpu_key, mem in (
                ("backfill: watcher start -> scan done (empty ledger)", "backfill_s", None, "backfill_maxrss_mib"),
                ("backfill: start -> every file in the outbox", "backfill_queued_s", "backfill_cpu_s",
                 "backfill_maxrss_mib"),
                ("first full rescan (records settled folders)", "first_rescan_s", "first_rescan_cpu_s",
                 "first_rescan_maxrss_mib"),
                ("full rescan (all verified)", "rescan_s", "rescan_cpu_s", "rescan_maxrss_mib"),
                ("light rescan (settled folders unchanged)", "light_rescan_s", "light_rescan_cpu_s",
                 "light_rescan_maxrss_mib"),
                ("reconcile --dry-run (whole CLI)", "reconcile_dry_run_s", "reconcile_cpu_s",
                 "reconcile_maxrss_mib")):
            cpu_cells = (f"{results[cpu_key]:.2f} s | {results[cpu_key] / fcpu:.2f}" if cpu_key else "| ")
            print(f"| {name} | {results[key]:.2f} s | {results[key] / baseline:.2f} | {cpu_cells} | "
                  f"{results[mem]:.0f} MiB |")
        print(json.dumps({"bench": "scale", **{k: round(v, 2) if isinstance(v, float) else v
                                               for k, v in results.items()}}))
    finally:
        marker.write_text(str(args.files))
        if args.clean:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
