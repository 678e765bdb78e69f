"""Time from a file's close to "verified on lamarr and cfs", through the deployed stack (``splash-flows up``).

Measures, in one run:
- single files on a warm stack: each file is written like a detector writes (open, write, close), then the
  dispatcher deployment is triggered for it and the ledger is polled until both copies are verified; the next
  file starts after that run has finished. Reported: p50, p99, max.
- a burst (default 1000 small files): written back to back, a dispatcher run triggered for every ``--batch-size``
  files as soon as they are closed (what the watcher's batching does); reported: the total from the first close
  to the last verification, and per-file p50/p99 (ledger ``verified_at`` minus close time).
- the bare verified copy of the same burst files (``services.move.move_files`` in this process, into fresh
  target folders and a fresh ledger): the floor the stack is compared with. Reported: the ratio.
- the baselines a user would pick, on the same burst files in the same run (``cp -p`` x2 + ``sync`` +
  ``xxhsum``, ``rclone copy`` x2 + ``sync``, ``rsync -a`` x2 + ``sync``; see ``move_throughput.py``): every
  ratio bare/baseline and stack/baseline is printed.

Trigger: ``--trigger deployment`` (default) creates the runs by deployment name, as the watcher does, without
the watcher's quiet period (add that period -- 2 s by default -- to the single-file figures for the full
detector-to-safe time). ``--trigger watcher`` lets the watcher of ``splash-flows up`` find the files itself
(needs ``splash-flows watch``).

Executors: ``--executor runner`` (the in-process runner ``up`` uses) or ``--executor workers`` (a Prefect
process worker per pool: the seed's layout). Results are printed and written to bench/results/.

    python bench/detect_to_safe.py                      # runner, 20 singles, burst of 1000 x 4 kB
    python bench/detect_to_safe.py --executor workers --singles 10 --burst 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from splash_flows.cli.up import LocalStack
from splash_flows.config import WatcherConfig, default_config_data, load_config_file, parse_config
from splash_flows.context import Context
from splash_flows.errors import OrchestrationError, TriggerRejected
from splash_flows.flows.deploy import DISPATCHER_DEPLOYMENT
from splash_flows.flows.trigger import PrefectDeploymentTrigger
from splash_flows.ledger import Ledger
from splash_flows.ledger.models import Copy, CopyState, SourceFile
from splash_flows.services.move import move_files
from splash_flows.watcher.outbox import replay_delay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from move_throughput import BASELINES, run_baselines  # the one definition of the baselines

TARGETS = ("lamarr", "cfs")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_file(path: Path, size: int) -> float:
    """Write like a detector (open, write, close); return the wall-clock time of the close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    return time.time()


def verified_times(ledger: Ledger, paths: list[str]) -> dict[str, float]:
    """For each path verified on every target: the latest verification time (epoch seconds)."""
    out: dict[str, float] = {}
    with ledger.read_session() as sess:  # no write lock: this poll must not delay the stack it measures
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            rows = sess.execute(select(SourceFile.path, Copy.tier, Copy.verified_at).join(Copy)
                                .where(SourceFile.source_tier == "data733", SourceFile.path.in_(chunk),
                                       Copy.tier.in_(TARGETS), Copy.state == CopyState.VERIFIED))
            per: dict[str, list[float]] = {}
            for path, _tier, at in rows:
                per.setdefault(path, []).append(at.timestamp())
            out.update({p: max(ts) for p, ts in per.items() if len(ts) == len(TARGETS)})
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds used so far by each named process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def wait_runs_final(api_url: str, run_ids: list[str], timeout: float = 600) -> None:
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as client:
        while True:
            states = [client.read_flow_run(UUID(r)).state for r in run_ids]
            if all(s is not None and s.is_final() for s in states):
                bad = [s.name for s in states if s is not None and not s.is_completed()]
                if bad:
                    raise SystemExit(f"runs did not complete: {bad}")
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"runs not final after {timeout} s")
            time.sleep(0.1)


def wait_verified(ledger: Ledger, paths: list[str], timeout: float,
                  triggers: list[Future[list[str]]] | None = None) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        for fut in triggers or []:
            if fut.done() and fut.exception() is not None:  # a lost trigger: say so now, not after the timeout
                raise SystemExit(f"a trigger failed: {fut.exception()!r}")
        times = verified_times(ledger, paths)
        if len(times) == len(paths):
            return times
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(times)} of {len(paths)} files verified after {timeout} s")
        time.sleep(0.25)  # the figures come from the ledger's verified_at, not from when this poll sees them


def bare_copy(root: Path, paths: list[str]) -> float:
    """Seconds for move_files on the same source files into fresh targets and a fresh ledger."""
    bare = root / "bare"
    shutil.rmtree(bare, ignore_errors=True)
    data = default_config_data(bare)
    data["tiers"]["data733"]["root"] = str(root / "data733")
    data["ledger"]["url"] = f"sqlite:///{bare / 'ledger.db'}"
    for name in TARGETS:
        Path(data["tiers"][name]["root"]).mkdir(parents=True, exist_ok=True)
    site = load_config_file(root / "splash-flows.yaml")
    data["move"]["concurrency"] = site.move.concurrency
    config = parse_config(data, source="<bench bare copy>", base=bare, environ={})
    ctx = Context(config=config, ledger=Ledger.open(config.ledger.url_value()))
    try:
        start, cpu = time.monotonic(), time.process_time()
        report = move_files(ctx, paths)
        elapsed = time.monotonic() - start
        report.raise_for_failures()
        print(f"  bare move_files: {elapsed:.2f} s wall, {time.process_time() - cpu:.2f} s CPU", flush=True)
        return elapsed
    finally:
        ctx.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="Stack folder (default: a fresh temporary one).")
    ap.add_argument("--executor", choices=("runner", "workers"), default="runner")
    ap.add_argument("--trigger", choices=("deployment", "watcher"), default="deployment")
    ap.add_argument("--singles", type=int, default=20, help="Single files, one after the other.")
    ap.add_argument("--single-size", type=int, default=1_000_000, help="Bytes per single file.")
    ap.add_argument("--single-timeout", type=float, default=120.0,
                    help="Seconds to wait for each single file (the benchmark stops when one takes longer).")
    ap.add_argument("--burst", type=int, default=1000, help="Files in the burst (0: skip).")
    ap.add_argument("--burst-size", type=int, default=4096, help="Bytes per burst file.")
    ap.add_argument("--batch-size", type=int, default=WatcherConfig().max_batch_files,
                    help="Files per dispatcher run in the burst with --trigger deployment (default: the watcher's "
                    "max_batch_files; with --trigger watcher the watcher batches).")
    ap.add_argument("--limit", type=int, default=4, help="Runs at once (runner threads / worker processes).")
    ap.add_argument("--prefect-database-url", default=None,
                    help="PREFECT_API_DATABASE_CONNECTION_URL for the server (default: SQLite, as `up`).")
    ap.add_argument("--prefect-postgres", action="store_true",
                    help="Start a throw-away PostgreSQL for the Prefect server (as the flow-733 VM runs it: "
                         "deploy/ansible); needs initdb (scripts/ensure-postgres.sh).")
    ap.add_argument("--poll", type=float, default=0.25, help="Runner poll interval (s).")
    ap.add_argument("--verbose", action="store_true", help="Keep Prefect's INFO logs in ROOT/logs/.")
    args = ap.parse_args(argv)

    root = args.root or Path(tempfile.mkdtemp(prefix="splash-bench-"))
    extra = {"PREFECT_LOGGING_LEVEL": "INFO" if args.verbose else "WARNING"}
    postgres = None
    if args.prefect_postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the throw-away server
        from tests.support.postgres import start_postgres

        postgres = start_postgres()
        if postgres is None:
            print("PostgreSQL is not installed (no initdb): run scripts/ensure-postgres.sh", file=sys.stderr)
            return 2
        args.prefect_database_url = postgres.create_database("prefect_bench").replace("+psycopg", "+asyncpg")
    if args.prefect_database_url:
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = args.prefect_database_url
    stack = LocalStack(root=root, port=0, limit=args.limit, workers=args.executor == "workers",
                       watcher=args.trigger == "watcher", ui=False, extra_env=extra,
                       poll=args.poll)
    results: dict[str, Any] = {"executor": args.executor, "trigger": args.trigger, "cores": os.cpu_count(),
                               "at": datetime.now(UTC).isoformat(),
                               "prefect_database": "postgresql" if args.prefect_database_url else "sqlite",
                               "load_at_start": os.getloadavg()[0]}
    t0 = time.monotonic()
    try:
        stack.start(say=lambda line: print(f"  {line}", flush=True))
    except BaseException:
        if postgres is not None:
            postgres.stop()
        raise
    print(f"stack up in {time.monotonic() - t0:.1f} s: {stack.api_url} ({root}; Prefect database "
          f"{results['prefect_database']}; load {results['load_at_start']:.1f})", flush=True)
    if args.trigger == "watcher" and stack.notes:
        print("\n".join(stack.notes), file=sys.stderr)
        stack.stop()
        if postgres is not None:
            postgres.stop()
        return 2
    os.environ["PREFECT_API_URL"] = stack.api_url
    data733 = stack.root / "data733"
    ledger = Ledger.open(load_config_file(stack.config_path).ledger.url_value())
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: stack.api_url}):  # the watcher's trigger, as it sends
            trigger = PrefectDeploymentTrigger(DISPATCHER_DEPLOYMENT, None)

        def send(paths: list[str]) -> list[str]:
            """Create the run as the watcher's sender does: one bounded request per attempt, a transient failure
            (a 503 from a busy SQLite-backed server) retried after 0.5 s, 1 s, 2 s ... with the same key."""
            if args.trigger != "deployment":
                return []
            start, key = time.monotonic(), f"bench-{uuid.uuid4().hex}"
            for attempt in range(30):
                try:
                    run_id = trigger.trigger(paths, key)
                    break
                except TriggerRejected:
                    raise
                except OrchestrationError as err:
                    if attempt == 29:
                        raise
                    print(f"  trigger attempt {attempt + 1} failed, retrying: {err}", flush=True)
                    time.sleep(replay_delay(attempt, 5.0))
            if args.verbose:
                print(f"  triggered {len(paths)} file(s) in {time.monotonic() - start:.2f} s", flush=True)
            return [run_id]

        # warm-up: the first run of each kind pays one-off imports and connections
        warm = "warmup/w.edf"
        write_file(data733 / warm, 1000)
        runs = send([warm])
        wait_verified(ledger, [warm], 180)
        if runs:
            wait_runs_final(stack.api_url, runs)

        singles: list[float] = []
        for i in range(args.singles):
            rel = f"single/scan_{i:04d}.edf"
            closed = write_file(data733 / rel, args.single_size)
            runs = send([rel])
            done = wait_verified(ledger, [rel], args.single_timeout)[rel]
            singles.append(done - closed)
            print(f"  single {i + 1}/{args.singles}: {singles[-1]:.2f} s", flush=True)
            if runs:
                wait_runs_final(stack.api_url, runs)
            time.sleep(0.5)
        if singles:
            results["single"] = {"n": len(singles), "bytes": args.single_size,
                                 "p50_s": statistics.median(singles), "p99_s": percentile(singles, 99),
                                 "max_s": max(singles), "all_s": [round(x, 3) for x in singles]}

        if args.burst:
            paths = [f"burst/b{i // 1000:03d}/f_{i:06d}.edf" for i in range(args.burst)]
            closes: dict[str, float] = {}
            procs = {c.name: c.pid for c in stack.children} | {"bench": os.getpid()}
            cpu_before = cpu_seconds(procs)
            # Triggers go out from another thread, as from the watcher's own process: the "detector" never waits.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trigger") as triggers:
                pending: list[Future[list[str]]] = []
                batch: list[str] = []
                for rel in paths:
                    closes[rel] = write_file(data733 / rel, args.burst_size)
                    batch.append(rel)
                    if len(batch) == args.batch_size:
                        pending.append(triggers.submit(send, batch))
                        batch = []
                if batch:
                    pending.append(triggers.submit(send, batch))
                done_at = wait_verified(ledger, paths, 1800, pending)
                runs = [r for fut in pending for r in fut.result()]
            if args.trigger == "watcher":  # the watcher's batches: its outbox entries of the burst
                from splash_flows.ledger.outbox import Outbox

                runs_seen = [e for e in Outbox(ledger).entries() if e.paths and e.paths[0].startswith("burst/")]
                results["burst_batches"] = [len(e.paths) for e in runs_seen]
            lat = [done_at[p] - closes[p] for p in paths]
            first_close, last_close = min(closes.values()), max(closes.values())
            total = max(done_at.values()) - first_close
            if runs:
                wait_runs_final(stack.api_url, runs)
            cpu_after = cpu_seconds(procs)
            cpu = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in cpu_after}
            bare = bare_copy(stack.root, paths)
            base_root = stack.root / "baselines"
            shutil.rmtree(base_root, ignore_errors=True)
            base_root.mkdir()
            os.symlink(data733 / "burst", base_root / "data733")  # the burst's files only
            baselines = run_baselines(base_root, [p.removeprefix("burst/") for p in paths],
                                      say=lambda line: print(line, flush=True))
            results["burst"] = {
                "files": len(paths), "bytes_each": args.burst_size,
                "runs": len(runs) or len(results.get("burst_batches", [])) or None,
                "batches": results.pop("burst_batches", None),
                "batch_size": args.batch_size, "writing_s": last_close - first_close,
                "total_s": total, "after_last_close_s": max(done_at.values()) - last_close,
                "p50_s": statistics.median(lat), "p99_s": percentile(lat, 99),
                "bare_move_files_s": bare, "ratio_total_vs_bare": total / bare if bare else None,
                "cpu_s_during_burst": cpu,
                "baselines_s": baselines,
                "ratio_bare_vs_baseline": {k: bare / v for k, v in baselines.items()},
                "ratio_total_vs_baseline": {k: total / v for k, v in baselines.items()},
                "load": os.getloadavg()[0],
            }
    finally:
        ledger.close()
        stack.stop()
        if postgres is not None:
            postgres.stop()

    print(f"\nresults (close -> verified on lamarr and cfs; Prefect database {results['prefect_database']}; load "
          f"{results['load_at_start']:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} "
          "cores):")
    if "single" in results:
        s = results["single"]
        print(f"  single files ({s['n']} x {s['bytes']} B, {args.executor}, trigger={args.trigger}): "
              f"p50 {s['p50_s']:.2f} s, p99 {s['p99_s']:.2f} s, max {s['max_s']:.2f} s")
    if "burst" in results:
        b = results["burst"]
        how = f"batches of {b['batch_size']}" if args.trigger == "deployment" else f"watcher batches {b['batches']}"
        print(f"  burst ({b['files']} x {b['bytes_each']} B, {how}): total "
              f"{b['total_s']:.2f} s (writing took {b['writing_s']:.2f} s), per file p50 {b['p50_s']:.2f} s, "
              f"p99 {b['p99_s']:.2f} s")
        print(f"  CPU seconds used during the burst: {b['cpu_s_during_burst']}")
        print(f"  bare move_files of the same files: {b['bare_move_files_s']:.2f} s -> ratio "
              f"{b['ratio_total_vs_bare']:.2f}x")
        for name, secs in b["baselines_s"].items():
            print(f"  {BASELINES[name][1]}: {secs:.2f} s -> bare/{name} {b['ratio_bare_vs_baseline'][name]:.2f}x, "
                  f"stack/{name} {b['ratio_total_vs_baseline'][name]:.2f}x")
        print(f"  load average at the end: {b['load']:.1f} on {os.cpu_count()} cores")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = f"detect_to_safe-{args.executor}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    (out / name).write_text(json.dumps(results, indent=2))
    print(f"  written to {out / name}")
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
