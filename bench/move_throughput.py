"""Benchmark: our verified copy vs plain ``cp`` followed by a checksum tool, same bytes, same run.

Sends a burst (default 200 files of 10 MB) from ``data733`` to ``lamarr`` + ``cfs``:

* ours     -- ``services.move.move_files``: register (hash) the sources, then copy to both tiers concurrently,
              each copy written under a temporary name, fsynced, dropped from the page cache, re-read from
              the device and compared, renamed, every step recorded in the ledger (SQLite).
* baseline -- ``cp -p`` of every file to each of the two tiers, then the checksum tool over the sources and
              both copies (``xxhsum -H2``, the same XXH3-128 we use, when installed; else ``sha256sum``).
              No fsync, no ledger: the least a careful person would do by hand.

Prints both times, the ratio ours/baseline (aim: <= 1.3), and a JSON line for the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splash_flows.config import default_config
from splash_flows.context import build_context
from splash_flows.services.move import move_files


def make_sources(root: Path, count: int, size: int) -> list[str]:
    block = os.urandom(size)
    paths = []
    for i in range(count):
        rel = f"ALS-00000/20260101/bench_{i:05d}_2m.edf"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # distinct content per file: a per-file header in front of shared random bytes
        p.write_bytes(i.to_bytes(8, "little") + block[8:])
        paths.append(rel)
    subprocess.run(["sync"], check=True)
    return paths


def checksum_tool() -> list[str]:
    if shutil.which("xxhsum"):
        return ["xxhsum", "-H2"]
    return ["sha256sum"]


def run_baseline(src: Path, targets: list[Path], paths: list[str]) -> float:
    tool = checksum_tool()
    start = time.perf_counter()
    for dst in targets:
        # one cp per target over the whole tree, as an operator would type it
        subprocess.run(["cp", "-rp", f"{src}/.", str(dst)], check=True)
    files = [str(src / p) for p in paths] + [str(d / p) for d in targets for p in paths]
    for i in range(0, len(files), 500):
        subprocess.run([*tool, *files[i:i + 500]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_ours(root: Path, paths: list[str]) -> tuple[float, str]:
    config = default_config(root)
    ctx = build_context(config)
    try:
        start = time.perf_counter()
        report = move_files(ctx, paths)
        elapsed = time.perf_counter() - start
        report.raise_for_failures()
        return elapsed, report.summary()
    finally:
        ctx.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--dir", type=Path, default=Path("var/bench"), help="scratch folder (same disk as data)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="move-", dir=args.dir))
    try:
        size = int(args.size_mb * 1_000_000)
        ours_root, base_root = work / "ours", work / "baseline"
        for r in (ours_root, base_root):
            for t in ("data733", "lamarr", "cfs"):
                (r / t).mkdir(parents=True)
        print(f"writing {args.files} files x {args.size_mb:g} MB ...", flush=True)
        paths = make_sources(ours_root / "data733", args.files, size)
        shutil.copytree(ours_root / "data733", base_root / "data733", dirs_exist_ok=True)
        subprocess.run(["sync"], check=True)

        base_s = run_baseline(base_root / "data733", [base_root / "lamarr", base_root / "cfs"], paths)
        subprocess.run(["sync"], check=True)  # the baseline's dirty pages must not be flushed on our clock
        ours_s, summary = run_ours(ours_root, paths)
        total_gb = args.files * size * 2 / 1e9
        ratio = ours_s / base_s
        print(f"ours:     {ours_s:7.2f} s  ({total_gb / ours_s:.2f} GB/s copied, verified)  {summary}")
        print(f"baseline: {base_s:7.2f} s  (cp -p x2 + {' '.join(checksum_tool())} over sources and copies)")
        print(f"ratio ours/baseline: {ratio:.2f}  (aim <= 1.3)")
        print(json.dumps({"bench": "move_throughput", "files": args.files, "size_mb": args.size_mb,
                          "ours_s": round(ours_s, 2), "baseline_s": round(base_s, 2), "ratio": round(ratio, 2),
                          "checksum_tool": checksum_tool()[0], "cpus": os.cpu_count(),
                          "machine": platform.machine(), "python": platform.python_version()}))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
