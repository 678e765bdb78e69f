"""Every benchmark in one run, one table: the figures README shows "from one run on this machine" (issue 14).

Runs the benchmarks of this folder one after the other, each as its own process (never two at once: they
would measure each other), keeps each one's whole output in ``bench/results/run-STAMP/NAME.log``, reads the
result it prints (its JSON line; ``detect_to_safe`` writes a file and says where; ``ledger_scale`` prints a
markdown table) and writes ``bench/results/run-STAMP/REPORT.md``: per measurement our figure, the baselines of
the same run, the ratio, the aim and whether it is met, with the machine's load before and after each
benchmark. A benchmark that fails is reported as failed, with the end of its log, and the others still run;
the command then exits 1.

    python bench/report.py                 # everything, full sizes (about an hour on 2 cores)
    python bench/report.py --quick         # smaller sizes: checks that every benchmark runs (minutes)
    python bench/report.py --only small burst reduce

The baseline tools (``rclone``, ``rsync``, ``xxhsum``) are installed by ``scripts/ensure-packages.sh bench``
and PostgreSQL by ``scripts/ensure-packages.sh postgres`` (``make bench-all`` runs both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: A row of the report: work, our figure, the baselines of the same run, ratio, aim, met (yes / no / "").
Row = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script and arguments (full and quick sizes) and how its result becomes rows."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[Row]]
    reads: str = "json"  # "json": the last {"bench": ...} line; "file": the JSON file named by "written to PATH";
    # "table": the markdown rows ledger_scale prints


def _s(x: float) -> str:
    return f"{x:.2f} s"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def demo_rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for run in r["results"]:
        name = run["run"]
        phases = ", ".join(f"{k} {v:.1f}" for k, v in run["phases"].items())
        if name == "install":
            out.append(("`make install`'s step: Prefect template migrated (`demo --prepare`)",
                        f"{run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU", "", "", "", ""))
        elif name in ("first", "re-run 1"):
            what = "first `make demo` after install" if name == "first" else "`make demo` again"
            out.append((f"{what} ({phases})", f"{run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU", "", "",
                        "< 10 s", _met(run["wall_s"] < 10.0)))
    return out


def cli_rows(r: dict[str, Any]) -> list[Row]:
    res = r["results"]
    floor = res["python -c pass"]["best_s"]
    out: list[Row] = []
    for key, res_key, aim in (("`splash-flows --help`", "splash-flows --help", 0.5),
                              ("`status` on the demo (9 files)", "status (demo, 9 files)", 0.5)):
        best = res[res_key]["best_s"]
        out.append((key, _s(best), f"`python -c pass` {_s(floor)}", f"{best / floor:.0f}x", f"< {aim} s",
                    _met(best < aim)))
    big = next(k for k in res if k.startswith("status (") and "demo" not in k)
    out.append((f"`{big}`", _s(res[big]["best_s"]), "", "", "< 2 s", _met(res[big]["best_s"] < 2.0)))
    return out


def _copy_rows(r: dict[str, Any], aim: float) -> list[Row]:
    size = r["bytes_each"]
    label = f"{size / 1000:.0f} kB" if size < 10**6 else f"{size / 10**6:.0f} MB"
    out: list[Row] = []
    for i, (name, secs) in enumerate(r["baselines_s"].items()):
        ratio = r["ratios"][name]
        out.append((f"verified copy of {r['files']} x {label} to 2 tiers" if i == 0 else "",
                    _s(r["ours_s"]) if i == 0 else "", f"{name}: {_s(secs)}", f"{ratio:.2f}",
                    f"<= {aim} vs cp" if name == "cp" else "", _met(ratio <= aim) if name == "cp" else ""))
    return out


def burst_rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    executor = r.get("executor", "runner")
    if "single" in r:
        s = r["single"]
        out.append((f"one {s['bytes'] // 1000} kB file, detector close -> verified on 2 tiers ({executor}, "
                    f"n={s['n']})", f"p50 {_s(s['p50_s'])}, p99 {_s(s['p99_s'])}", "", "", "p50 < 1 s",
                    _met(s["p50_s"] < 1.0)))
    if "burst" in r:
        b = r["burst"]
        out.append((f"burst {b['files']} x {b['bytes_each'] / 1000:.0f} kB through the deployed stack ({executor})",
                    _s(b["total_s"]), f"bare `move_files`: {_s(b['bare_move_files_s'])}",
                    f"{b['ratio_total_vs_bare']:.2f}", "<= 1.3 vs bare", _met(b["ratio_total_vs_bare"] <= 1.3)))
        for name, secs in b["baselines_s"].items():
            ratio = b["ratio_bare_vs_baseline"][name]
            out.append(("" if name != "cp" else "bare `move_files` of the burst's files", "",
                        f"{name}: {_s(secs)}", f"{ratio:.2f}", "<= 3 vs cp" if name == "cp" else "",
                        _met(ratio <= 3.0) if name == "cp" else ""))
    return out


def reduce_rows(r: dict[str, Any]) -> list[Row]:
    one, pool = r["one_process"], r["pool"]
    return [
        ("reduction of Pilatus 2M frames, 1 process (read, integrate, write outputs)",
         f"{one['ours']['fps']:.1f} frames/s ({one['ours']['cpu_ms']:.0f} ms CPU)",
         f"bare fabio + integrate1d: {one['bare']['fps']:.1f} frames/s", f"{one['ratio_wall']['bare']:.2f} wall, "
         f"{one['ratio_cpu']['bare']:.2f} CPU", "<= 1.2", _met(one["ratio_wall"]["bare"] <= 1.2)),
        (f"same, local backend's pool of {r['workers']}", f"{pool['ours']['fps']:.1f} frames/s",
         f"bare pool: {pool['bare']['fps']:.1f} frames/s", f"{pool['ratio_wall']['bare']:.2f} wall",
         ">= 15 frames/s", _met(pool["ours"]["fps"] >= 15.0)),
    ]


def archive_rows(r: dict[str, Any]) -> list[Row]:
    return [(f"bundle + verify {r['gb']} GB to the local tape tier", _s(r["ours_s"]),
             f"tar -cf + checksum: {_s(r['baseline_s'])}", f"{r['ratio']:.2f}", "", "")]


def scale_rows(r: dict[str, Any]) -> list[Row]:
    find, fcpu = r["find_s"], r["find_cpu_s"]
    out: list[Row] = [(f"`find` over {r['backfill_found']:,} files", f"{_s(find)}, {fcpu:.2f} s CPU", "", "", "",
                       "")]
    for name, key, cpu in (("watcher backfill: start -> every file in the outbox", "backfill_queued_s",
                            "backfill_cpu_s"),
                           ("full rescan, every file verified", "rescan_s", "rescan_cpu_s"),
                           ("light rescan (settled folders unchanged)", "light_rescan_s", "light_rescan_cpu_s"),
                           ("`reconcile --dry-run` (whole CLI)", "reconcile_dry_run_s", "reconcile_cpu_s")):
        ratio = r[cpu] / fcpu
        aim = "<= 2 vs find" if key != "reconcile_dry_run_s" else ""
        out.append((name, f"{_s(r[key])}, {r[cpu]:.2f} s CPU", "find", f"{r[key] / find:.1f} wall, {ratio:.1f} CPU",
                    aim, _met(ratio <= 2.0) if aim else ""))
    out.append(("peak memory of the backfill", f"{r['backfill_maxrss_mib']:.0f} MiB",
                f"find {r['find_maxrss_mib']:.0f} MiB", "", "flat with the tree", ""))
    return out


def ledger_rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name, what, best in r["queries"]:
        out.append((f"{name}: {what}", f"{best:.0f} ms", "", "", "< 1 s", _met(best < 1000.0)))
    return out


BENCHES: list[Bench] = [
    Bench("demo", "demo_time.py", ("--reruns", "2"), ("--reruns", "1"), demo_rows),
    Bench("cli", "cli_latency.py", (), ("--files", "20000", "--repeat", "3"), cli_rows),
    Bench("small", "move_throughput.py", ("--files", "1000", "--size-kb", "4", "--repeat", "3"),
          ("--files", "300", "--size-kb", "4"),
          lambda r: _copy_rows(r, 3.0)),
    Bench("burst", "detect_to_safe.py", ("--trigger", "watcher", "--singles", "20"),
          ("--trigger", "watcher", "--singles", "5", "--burst", "400"), burst_rows, reads="file"),
    Bench("workers", "detect_to_safe.py", ("--trigger", "watcher", "--executor", "workers", "--singles", "10",
                                           "--burst", "0"),
          ("--trigger", "watcher", "--executor", "workers", "--singles", "3", "--burst", "0"), burst_rows,
          reads="file"),
    Bench("large", "move_throughput.py", (), ("--files", "20"), lambda r: _copy_rows(r, 1.3)),
    Bench("reduce", "reduce.py", (), ("--frames", "8", "--round", "4"), reduce_rows),
    Bench("archive", "archive.py", (), ("--gb", "0.2"), archive_rows),
    Bench("scale", "scale.py", ("--dir", "/dev/shm/splash-scale", "--clean"),
          ("--files", "20000", "--dir", "/dev/shm/splash-scale-quick", "--clean"), scale_rows),
    Bench("ledger", "ledger_scale.py", (), ("--files", "20000"), ledger_rows, reads="table"),
]

_TABLE_ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<what>[^|]+?) \| (?P<best>[\d.]+) ms \|")


def parse(bench: Bench, output: str, argv: list[str]) -> dict[str, Any]:
    """The result a benchmark printed. Raises ValueError naming what is missing."""
    if bench.reads == "file":
        found = re.findall(r"written to (\S+\.json)", output)
        if not found:
            raise ValueError(f"{bench.script} named no result file ('written to ...json')")
        data = json.loads(Path(found[-1]).read_text(encoding="utf-8"))
        executor = argv[argv.index("--executor") + 1] if "--executor" in argv else "runner"
        return {"executor": executor, **data}
    if bench.reads == "table":
        queries = [(m["name"], m["what"], float(m["best"])) for line in output.splitlines()
                   if (m := _TABLE_ROW.match(line))]
        if not queries:
            raise ValueError(f"{bench.script} printed no query table")
        return {"queries": queries}
    for line in reversed(output.splitlines()):
        if line.startswith('{"bench"'):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise ValueError(f"{bench.script} printed no JSON result line")


def run(bench: Bench, quick: bool, folder: Path) -> tuple[list[Row], str, float]:
    """Run one benchmark; its rows (or one row saying it failed and why), the load before -> after, seconds."""
    argv = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full)]
    log = folder / f"{bench.name}.log"
    load0 = os.getloadavg()[0]
    start = time.monotonic()
    print(f"[{datetime.now(UTC):%H:%M:%S}] {bench.name}: {' '.join(argv[1:])}", flush=True)
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True, check=False, cwd=HERE.parent)
    seconds = time.monotonic() - start
    load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
    text = log.read_text(encoding="utf-8", errors="replace")
    if done.returncode != 0:
        tail = " / ".join(text.strip().splitlines()[-3:])[-300:]
        return [(f"{bench.name}: FAILED (exit {done.returncode})", tail, "", "", "", "**no**")], load, seconds
    try:
        return bench.rows(parse(bench, text, argv)), load, seconds
    except (ValueError, KeyError, TypeError, StopIteration, OSError) as err:
        return [(f"{bench.name}: result unreadable", f"{type(err).__name__}: {err}", "", "", "", "**no**")], \
            load, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a check that every benchmark runs")
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for run-STAMP/")
    args = ap.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = args.out / f"run-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    lines = [f"# Benchmarks, one run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Python "
             f"{sys.version.split()[0]}{' (--quick sizes)' if args.quick else ''}", "",
             "| work | ours | baseline (same run) | ratio | aim | met |", "|---|---|---|---|---|---|"]
    failed = False
    sections: list[str] = []
    for bench in chosen:
        rows, load, seconds = run(bench, args.quick, folder)
        failed = failed or any(r[0].startswith(f"{bench.name}: ") for r in rows)
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        sections.append(f"- `{bench.name}` ({bench.script}): {seconds:.0f} s, load {load}; log `{bench.name}.log`")
    report = "\n".join([*lines, "", "Each benchmark, its duration and the load average (1 min) before -> after:",
                         *sections]) + "\n"
    (folder / "REPORT.md").write_text(report, encoding="utf-8")
    print("\n" + report + f"\nwritten to {folder / 'REPORT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
