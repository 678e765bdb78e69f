"""Benchmark: our verified tape bundle (local archive backend) vs plain ``tar -cf`` + ``xxhsum`` of the members,
same files, same run.

Writes N GB of demo-like files (one proposal, one beam cycle, default 2 GB in 20 MB files) to ``cfs``, then:

* ours     -- ``services.archive.service.execute_archive`` with the local hpss tier: plan the bundle(s) and
              record them with their manifests in the ledger, write each tar under a temporary name while
              hashing every member as it is read, fsync, drop the tar's pages from the page cache, list the tar
              and compare with the manifest, re-read every member from the tar and checksum it, write the
              manifest, rename, fsync the folder, record every member's verified hpss copy (SQLite ledger).
* baseline -- ``tar -cf`` of the same files, then ``xxhsum -H2`` (XXH3-128, what we compute) over the members
              (``sha256sum`` when xxhsum is absent): what a careful person types by hand, no fsync, no re-read
              of the archive, no record.

Prints both times, the ratio ours/baseline (aim: <= 1.3), and a JSON line for the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import checksum_tool, scratch, time_our_run, write_bench_files

from splash_flows.config import default_config
from splash_flows.context import build_context
from splash_flows.ledger import NewSource
from splash_flows.ledger.store import SourceRecord, VerifiedCopy
from splash_flows.services.archive.service import execute_archive


def run_baseline(cfs: Path, out: Path, paths: list[str], *, durable: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(["tar", "-cf", str(out), "-C", str(cfs), *paths], check=True)
    if durable:  # the same tar made durable (what our fsync buys), for reference
        subprocess.run(["sync", "-f", str(out)], check=True)
    tool = checksum_tool()
    for i in range(0, len(paths), 500):
        subprocess.run([*tool, *paths[i:i + 500]], cwd=cfs, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def register(root: Path, paths: list[str]) -> None:
    """Record the files as moved and verified on cfs (what the move flow leaves), outside the timed part."""
    from splash_flows.checksum import new_hasher

    ctx = build_context(default_config(root))
    try:
        news = []
        for rel in paths:
            p = root / "cfs" / rel
            h = new_hasher("xxh3_128")
            h.update(p.read_bytes())
            st = p.stat()
            news.append(NewSource(rel, st.st_size, st.st_mtime, "xxh3_128", h.hexdigest()))
        records: list[SourceRecord] = ctx.ledger.register_sources("data733", news)
        ctx.ledger.record_verified_many("cfs", [VerifiedCopy(r, r.checksum, r.size, False) for r in records])
    finally:
        ctx.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0, help="total size of the files")
    parser.add_argument("--size-mb", type=float, default=20.0, help="size of one file")
    parser.add_argument("--dir", type=Path, default=Path("var/bench"), help="scratch folder (same disk as data)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    with scratch(args.dir, "archive-", args.keep) as work:
        size = int(args.size_mb * 1_000_000)
        count = max(1, int(args.gb * 1e9 // size))
        root = work / "site"
        for t in ("data733", "lamarr", "cfs", "hpss", "hpc"):
            (root / t).mkdir(parents=True)
        print(f"writing {count} files x {args.size_mb:g} MB to cfs ...", flush=True)
        when = datetime(2026, 3, 2, 18, tzinfo=UTC).timestamp()
        paths = write_bench_files(root / "cfs", count, size, "20260302", mtime=when)
        register(root, paths)
        subprocess.run(["sync"], check=True)
        base_s = run_baseline(root / "cfs", work / "baseline.tar", paths)
        subprocess.run(["sync"], check=True)  # the baseline's dirty pages must not be flushed on our clock
        durable_s = run_baseline(root / "cfs", work / "baseline-durable.tar", paths, durable=True)
        subprocess.run(["sync"], check=True)
        ours_s, summary = time_our_run(root, execute_archive)
        gb = count * size / 1e9
        ratio = ours_s / base_s
        print(f"ours:     {ours_s:7.2f} s  ({gb / ours_s:.2f} GB/s bundled, verified)  {summary}")
        print(f"baseline: {base_s:7.2f} s  (tar -cf + {' '.join(checksum_tool())} of the members)")
        print(f"baseline+sync: {durable_s:7.2f} s  (the same, with the tar synced to disk as ours is)")
        print(f"ratio ours/baseline: {ratio:.2f}  (aim <= 1.3); ours/baseline+sync: {ours_s / durable_s:.2f}")
        print(json.dumps({"bench": "archive", "files": count, "size_mb": args.size_mb, "gb": round(gb, 2),
                          "ours_s": round(ours_s, 2), "baseline_s": round(base_s, 2), "ratio": round(ratio, 2),
                          "baseline_sync_s": round(durable_s, 2), "ratio_sync": round(ours_s / durable_s, 2),
                          "checksum_tool": checksum_tool()[0], "cpus": os.cpu_count(),
                          "machine": platform.machine(), "python": platform.python_version()}))
        return 0


if __name__ == "__main__":
    sys.exit(main())
