"""Benchmark: how long ``splash-flows demo`` takes once installed, and where the time goes.

Runs, as fresh processes in a temporary folder: the installation's step (``splash-flows demo --prepare``, which
``make install`` runs: Prefect's database template migrated once), the first demo on an empty folder (simulates
3 full-size scans, starts the demo's Prefect server from that template, copies, catalogues and reduces), then
``--reruns`` more on the same folder (nothing new to copy: the files are re-verified and skipped, the scans'
reductions are up to date; the server is reused), then a first demo on another empty folder.
Prints each run's wall time, its CPU time (the demo process and
the children it waited for -- Prefect's temporary server before this change; the kept server's CPU so far is
printed apart), and the demo's own breakdown (its ``time:`` line: start, simulate, imports, waiting
for the server, the dispatcher flow).

``--compare-src DIR`` runs the same sequence first with another source tree (``DIR/src`` first on PYTHONPATH,
e.g. a ``git archive`` of the previous commit) on its own folder, so a before/after comes from one run on one
machine. Its servers are stopped at the end (``demo --stop-server``). Machine load is printed: on a shared
machine wall times move with it, the CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def run_demo(root: Path, env: dict[str, str]) -> dict[str, object]:
    """One ``splash-flows demo --root ROOT``: wall and CPU seconds and the demo's own phase times."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "splash_flows", "demo", "--root", str(root)], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    text = " ".join(done.stdout.split())
    phases = {name: float(sec) for name, sec in re.findall(r"([a-zA-Z][a-zA-Z ]+?) (\d+\.\d) s[,;]",
                                                           text.split("time:", 1)[1])} if "time:" in text else {}
    return {"wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "phases": phases, "load_1min": round(os.getloadavg()[0], 1)}


def kept_server_cpu(root: Path) -> float | None:
    """CPU seconds used so far by the demo's kept Prefect server (detached: not counted in ``cpu_s``)."""
    try:
        pid = json.loads((root / ".prefect" / "splash-server.json").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, KeyError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(env: dict[str, str]) -> dict[str, object] | None:
    """``splash-flows demo --prepare`` as ``make install`` runs it (migrates Prefect's template database): wall
    and CPU seconds, or None when the tree has no such option (a tree from before it: its first demo migrates)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "splash_flows", "demo", "--prepare"], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode == 2 and "--prepare" in done.stderr:
        return None
    if done.returncode != 0:
        raise SystemExit(f"demo --prepare failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                                      - before.ru_stime, 1),
            "phases": {}, "load_1min": round(os.getloadavg()[0], 1)}


def sequence(label: str, root: Path, env: dict[str, str], reruns: int) -> list[dict[str, object]]:
    """The installation's step (``demo --prepare``, as ``make install`` runs it), the first demo on ``root``,
    ``reruns`` more on it, then a first demo on another new folder."""
    out = []
    installed = prepare(env)
    if installed is not None:
        result = {"code": label, "run": "install", **installed, "kept_server_cpu_s": None}
        print(json.dumps(result), flush=True)
        out.append(result)
    runs = [(root, "first" if i == 0 else f"re-run {i}") for i in range(1 + reruns)]
    runs.append((root.with_name(root.name + "-new"), "new folder"))
    for where, name in runs:
        result = {"code": label, "run": name, **run_demo(where, env), "kept_server_cpu_s": kept_server_cpu(where)}
        print(json.dumps(result), flush=True)
        out.append(result)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reruns", type=int, default=2)
    ap.add_argument("--compare-src", type=Path, help="another source tree to run first (before/after)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="splash-demo-bench-"))
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SPLASH_FLOWS_CONFIG",
                                                             "PREFECT_HOME")}
    base["COLUMNS"] = "200"
    # empty: the sequence starts as a new installation (``make install`` prepares it; a tree without
    # ``--prepare`` migrates in its first demo)
    base["SPLASH_FLOWS_PREFECT_TEMPLATE"] = str(work / "template")
    results = []
    try:
        if args.compare_src:
            path = os.pathsep.join([str(args.compare_src.resolve() / "src"), base.get("PYTHONPATH", "")])
            other = {**base, "SPLASH_FLOWS_PREFECT_TEMPLATE": str(work / "template-compare"),
                     "PYTHONPATH": path.rstrip(os.pathsep)}
            results += sequence(f"compare ({args.compare_src})", work / "compare", other, args.reruns)
        results += sequence("this tree", work / "this", base, args.reruns)
    finally:
        for root in (work / "this", work / "compare", work / "this-new", work / "compare-new"):
            if root.exists():
                subprocess.run([sys.executable, "-m", "splash_flows", "demo", "--root", str(root), "--stop-server"],
                               env=base, capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'code':40} {'run':10} {'wall':>7} {'cpu':>7} {'load':>5}  phases")
    for r in results:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())  # type: ignore[attr-defined]
        print(f"{r['code']:40} {r['run']:10} {r['wall_s']:6.1f}s {r['cpu_s']:6.1f}s {r['load_1min']:5}  {phases}")
    print(json.dumps({"bench": "demo_time", "date": datetime.now(UTC).date().isoformat(),
                      "cores": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
