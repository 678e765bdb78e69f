"""Benchmark: our verified copy vs what a user would type instead, same bytes, same run.

Sends a burst (default 200 files of 10 MB; ``--files 1000 --size-kb 4`` for the small-file burst) from
``data733`` to ``lamarr`` + ``cfs``:

* ours     -- ``services.move.move_files``: register (hash) the sources, then copy to both tiers concurrently,
              each batch written under temporary names, fsynced, dropped from the page cache, re-read from
              the device and compared, renamed, every step recorded in the ledger (SQLite).
* cp       -- ``cp -rp`` to each of the two tiers, ``sync``, then the checksum tool over the sources and both
              copies (``xxhsum -H2``, the same XXH3-128 we use, when installed; else ``sha256sum``).
* rclone   -- ``rclone copy`` to each tier (it hashes source and copy after a local copy), then ``sync``.
* rsync    -- ``rsync -a`` to each tier (whole-file checksum of what it wrote), then ``sync``.

None of the baselines fsyncs file by file, re-reads from the device or records anything: they are the least a
careful person would do by hand. Prints every time, the ratio ours/baseline for each (aim vs cp: <= 1.3 for
large files, <= 3 for small ones), the load average, and a JSON line for the README table. A baseline whose
tool is not installed is skipped and named (scripts/ensure-packages.sh bench installs them). ``--repeat N``
runs every path N times, interleaved, into fresh targets (and a fresh ledger) each round, and reports the best
time of each: on a shared machine a burst of someone else's disk work then lands on no path alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import checksum_tool, scratch, time_our_run, write_bench_files

from splash_flows.context import Context
from splash_flows.services.move import MoveReport, move_files


def sync() -> None:
    subprocess.run(["sync"], check=True)


def run_cp(src: Path, targets: list[Path], paths: list[str]) -> float:
    tool = checksum_tool()
    start = time.perf_counter()
    for dst in targets:
        # one cp per target over the whole tree, as an operator would type it
        subprocess.run(["cp", "-rp", f"{src}/.", str(dst)], check=True)
    sync()
    files = [str(src / p) for p in paths] + [str(d / p) for d in targets for p in paths]
    for i in range(0, len(files), 500):
        subprocess.run([*tool, *files[i:i + 500]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_tool(argv: list[str], src: Path, targets: list[Path]) -> float:
    start = time.perf_counter()
    for dst in targets:
        subprocess.run([*argv, f"{src}/", f"{dst}/"], check=True, stdout=subprocess.DEVNULL)
    sync()
    return time.perf_counter() - start


BASELINES: dict[str, tuple[str, str]] = {
    # name -> (tool that must be installed, what the README calls it)
    "cp": ("cp", "cp -p x2 + sync + xxhsum"),
    "rclone": ("rclone", "rclone copy x2 + sync"),
    "rsync": ("rsync", "rsync -a x2 + sync"),
}


def run_baselines(base_root: Path, paths: list[str], say: Any = print, tag: str = "") -> dict[str, float]:
    """Each baseline into its own fresh target folders (same source files; ``tag`` names a round's folders, so
    a later round removes nothing: on a file system without a journal, ext4 skips inodes freed in the last 30 s
    when it creates a file, and a mass removal would slow whatever creates files next); seconds per baseline
    run."""
    out: dict[str, float] = {}
    src = base_root / "data733"
    for name, (tool, _label) in BASELINES.items():
        if shutil.which(tool) is None:
            say(f"  {name}: not installed, skipped (scripts/ensure-packages.sh bench)")
            continue
        targets = [base_root / f"{name}{tag}" / t for t in ("lamarr", "cfs")]
        for t in targets:
            t.mkdir(parents=True)
        sync()  # nobody's dirty pages are flushed on the next one's clock
        if name == "cp":
            out[name] = run_cp(src, targets, paths)
        elif name == "rclone":
            out[name] = run_tool(["rclone", "copy", "--config", "/dev/null", "--transfers", "4"], src, targets)
        else:
            out[name] = run_tool(["rsync", "-a"], src, targets)
        say(f"  {name}: {out[name]:.2f} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--size-kb", type=float, default=None, help="file size in kB (overrides --size-mb)")
    parser.add_argument("--dir", type=Path, default=Path("var/bench"), help="scratch folder (same disk as data)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every path, interleaved (baselines, then ours, per round); the best time "
                             "of each is reported, so a burst of another process's disk work hits no path alone")
    args = parser.parse_args()

    with scratch(args.dir, "move-", args.keep) as work:
        size = int(args.size_kb * 1000) if args.size_kb is not None else int(args.size_mb * 1_000_000)
        ours_root, base_root = work / "ours", work / "baseline"
        for t in ("data733", "lamarr", "cfs"):
            (ours_root / t).mkdir(parents=True)
        load_before = os.getloadavg()[0]
        print(f"writing {args.files} files x {size:,} B (load {load_before:.1f} on {os.cpu_count()} cores) ...",
              flush=True)
        paths = write_bench_files(ours_root / "data733", args.files, size, "20260101")
        sync()
        shutil.copytree(ours_root / "data733", base_root / "data733", dirs_exist_ok=True)
        sync()

        cpus: list[float] = []

        def ours(ctx: Context) -> MoveReport:
            start = time.process_time()  # this process's CPU, every thread
            report = move_files(ctx, paths)
            cpus.append(time.process_time() - start)
            return report

        base: dict[str, float] = {}
        ours_s, ours_cpu, summary = float("inf"), 0.0, ""
        for rnd in range(args.repeat):
            if args.repeat > 1:
                print(f"round {rnd + 1}/{args.repeat} (load {os.getloadavg()[0]:.1f})", flush=True)
            if rnd:  # fresh targets and ledger for every round (nothing removed until the end); the same sources
                fresh = work / f"ours{rnd}"
                for t in ("lamarr", "cfs"):
                    (fresh / t).mkdir(parents=True)
                os.symlink((ours_root / "data733").resolve(), fresh / "data733")
                root = fresh
            else:
                root = ours_root
            for name, secs in run_baselines(base_root, paths, tag=str(rnd) if rnd else "").items():
                base[name] = min(secs, base.get(name, secs))
            sync()  # the baselines' dirty pages must not be flushed on our clock
            secs, summary = time_our_run(root, ours)
            cpu = cpus[-1]
            print(f"  ours: {secs:.2f} s, {cpu:.2f} s CPU", flush=True)
            if secs < ours_s:
                ours_s, ours_cpu = secs, cpu
        load_after = os.getloadavg()[0]
        total_gb = args.files * size * 2 / 1e9
        best = f", best of {args.repeat}" if args.repeat > 1 else ""
        rate = f"{total_gb / ours_s:.3f} GB/s copied, verified{best}"
        print(f"ours:     {ours_s:7.2f} s, {ours_cpu:.2f} s CPU  ({rate})  {summary}")
        ratios = {name: ours_s / secs for name, secs in base.items()}
        for name, secs in base.items():
            print(f"{name:9s} {secs:7.2f} s  ({BASELINES[name][1]}); ours/{name} = {ratios[name]:.2f}")
        print(f"load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} cores "
              "(shared machine: compare the ratios, not the times)")
        print(json.dumps({"bench": "move_throughput", "files": args.files, "bytes_each": size, "rounds": args.repeat,
                          "ours_s": round(ours_s, 2),
                          "ours_cpu_s": round(ours_cpu, 2), "baselines_s": {k: round(v, 2) for k, v in base.items()},
                          "ratios": {k: round(v, 2) for k, v in ratios.items()},
                          "checksum_tool": checksum_tool()[0], "cpus": os.cpu_count(),
                          "load": [round(load_before, 1), round(load_after, 1)],
                          "machine": platform.machine(), "python": platform.python_version()}))
        return 0


if __name__ == "__main__":
    sys.exit(main())
