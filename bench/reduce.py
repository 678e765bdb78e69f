"""Benchmark: frames per second through our reduction vs a bare pyFAI loop, same Pilatus 2M frames, same run.

Writes N simulated 7.3.3 exposures (Pilatus 2M, 1475 x 1679 int32 EDF + sidecar, AgBh rings, transmission) and a
PONI of their geometry, then times, with warm integrators (each side builds its integrator and reduces before
the clock starts):

* ours     -- ``splash_flows.analysis.job.run_scans``: per frame, read the EDF (the project's reader) and the
              sidecar, mask (gaps, beamstop, negative pixels), normalise by the sidecar's monitor, integrate to
              I(q) (2000 points, Poisson errors), write NXcanSAS + .dat + two PNGs atomically (fsync, rename)
              and checksum every output; the next frame is integrated while the last one is written.
* baseline -- a bare loop of ``fabio.open(edf).data`` + ``ai.integrate1d(data, 2000, unit="q_nm^-1",
              method=..., mask=detector mask)``, writing nothing (what a user would time first).
* saving   -- the same loop as a scientist writes it to keep the result: the same call with pyFAI's own
              ``filename=<stem>.dat`` (pyFAI's documented saving path: a text file with pyFAI's header, q, I;
              no fsync, no checksum, no HDF5, no plot). Ours is compared with both, each ratio labelled.

Two comparisons, each like with like:

1. one process: ours (``run_scans``, its writer thread included) vs the bare and the saving loops in this process;
2. ``--workers`` processes: ours on the local backend's pool (``LocalBackend``: spawn, OpenMP threads capped to
   cores // workers, integrators built at worker start-up, chunks of paths) vs the bare and the saving loops on
   a pool of as many processes started the same way (same thread caps, same chunks, integrator built at
   start-up).

Each side runs over the same frames in rounds of ``--round`` frames (``--pool-round`` on the pools), the order of
the sides rotating every round, so all see the same load on a shared machine. A pool round is one batch handed
to the pool and waited for: its chunks go two to a worker, and each chunk's last frame is written with nothing
integrated beside it, so our pool in rounds of 8 (chunks of 2) measured 11-17 frames/s where rounds of 16 gave
20-30 (load 4-5): the default pool round is 16 frames, the same for all three sides.

Wall time AND CPU time (all threads; the pools' worker processes read from /proc) are printed: on a loaded
machine the wall time says how much of the cores we got, the CPU time what the work costs. Frames/s are printed
measured (wall) and derived from the CPU time (what the cores would give if the bench had them to itself:
cores x 1000 / CPU ms a frame in the pool, 1000 / CPU ms in one process). Prints ms/frame, the ratios, the
cores each side kept busy (CPU / wall), where our time goes, ``uptime`` at start and end, and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

_BARE: Any = None  # the bare worker's integrator and mask (built at its start-up)


def _bare_init(workers: int, poni: str, npt: int, unit: str, method: tuple[str, str, str]) -> None:
    """Start-up of a bare pool worker: the thread caps ours gets, then the integrator, warmed on one frame."""
    from splash_flows.analysis.worker_init import init_worker

    init_worker(workers)
    warnings.simplefilter("ignore")
    import fabio  # noqa: F401 -- loaded at start-up, as our workers load h5py and Pillow
    import numpy as np

    from splash_flows.analysis.reduce import load_poni

    global _BARE
    ai = load_poni(poni)
    mask = ai.detector.mask
    ai.integrate1d(np.ones(ai.detector.shape, dtype=np.int32), npt, unit=unit, method=method, mask=mask)
    _BARE = (ai, mask)


def _bare_chunk(paths: list[str], npt: int, unit: str, method: tuple[str, str, str], save_to: str | None = None) -> int:
    """The bare loop over ``paths`` in a pool worker; with ``save_to``, the saving loop (pyFAI writes
    ``<save_to>/<stem>.dat``)."""
    import fabio

    ai, mask = _BARE
    for path in paths:
        filename = None if save_to is None else os.path.join(save_to, Path(path).stem + ".dat")
        ai.integrate1d(fabio.open(path).data, npt, unit=unit, method=method, mask=mask, filename=filename)
    return len(paths)


SIDES = ("bare", "save", "ours")


def _order(round_index: int) -> tuple[str, ...]:
    """The sides in the order round ``round_index`` runs them (rotating, so none always goes first)."""
    k = round_index % len(SIDES)
    return SIDES[k:] + SIDES[:k]


def _uptime() -> str:
    """``uptime``'s line (the load of the shared machine), or the load average if ``uptime`` is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {_load()}"


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pids(pool: ProcessPoolExecutor) -> list[int]:
    return list(pool._processes or {})


def _load() -> float:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--round", type=int, default=8, help="frames per round (sides alternate every round)")
    parser.add_argument("--pool-round", type=int, default=16, help="frames per round on the pools (one batch)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the local backend's pool")
    parser.add_argument("--method", default="no,histogram,cython", help="pyFAI method (split,algo,impl)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import fabio

    from splash_flows.analysis import outputs as out
    from splash_flows.analysis.backends.local import LocalBackend, chunks, shutdown_pools
    from splash_flows.analysis.job import ScanJob, process_integrators, run_scans
    from splash_flows.analysis.reduce import Settings, load_poni, load_single, reduce_frame
    from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni

    load_start, uptime_start = _load(), _uptime()
    scratch = Path(tempfile.mkdtemp(prefix="bench-reduce-", dir=args.dir))
    warm_n = max(1, args.workers)
    try:
        print(f"writing {args.frames} + {warm_n} Pilatus 2M frames into {scratch} ...", flush=True)
        written = simulate_acquisitions(scratch, args.frames + warm_n, when=datetime(2026, 3, 1, 10, 0, 0), seed=42)
        edfs = [p for p in written if p.suffix == ".edf"]
        for edf in edfs:  # transmission frames: the 1D reduction is what is timed
            txt = edf.with_suffix(".txt")
            txt.write_text("\n".join(line if not line.startswith("Sample Alpha Stage:") else
                                     "Sample Alpha Stage: 0.000000" for line in txt.read_text().splitlines())
                           + "\n")
        poni = simulated_poni()
        method: tuple[str, str, str] = tuple(args.method.split(","))
        settings = Settings(method=method)
        npt, unit = settings.npt, settings.unit
        jobs = [ScanJob(scan_key=e.stem, folder=e.parent.relative_to(scratch).as_posix(), stem=e.stem,
                        kind="exposure", files={"edf": e.relative_to(scratch).as_posix(),
                                                "txt": e.with_suffix(".txt").relative_to(scratch).as_posix()},
                        poni_text=poni, calibration="bench") for e in edfs]
        warm, timed = jobs[:warm_n], jobs[warm_n:]
        timed_edfs = [str(e) for e in edfs[warm_n:]]
        n = len(timed)
        rounds = [(k, min(k + args.round, n)) for k in range(0, n, args.round)]
        pool_rounds = [(k, min(k + args.pool_round, n)) for k in range(0, n, args.pool_round)]
        saved = scratch / "saved"  # the saving loop's .dat files (one folder per comparison: no overwrites)
        (saved / "one").mkdir(parents=True)
        (saved / "pool").mkdir(parents=True)

        # 1. one process, rounds alternating which side goes first
        ai = load_poni(poni)
        mask = ai.detector.mask
        ai.integrate1d(fabio.open(str(edfs[0])).data, npt, unit=unit, method=method, mask=mask)
        integrators = process_integrators()
        integrators.prepare(poni, settings)
        assert all(o.ok for o in run_scans(scratch, warm[:1], settings, integrators))
        ai.integrate1d(fabio.open(str(edfs[0])).data, npt, unit=unit, method=method, mask=mask,
                       filename=str(saved / "warm.dat"))
        wall = dict.fromkeys(SIDES, 0.0)
        cpu = dict.fromkeys(SIDES, 0.0)
        results = []
        for r, (lo, hi) in enumerate(rounds):
            for side in _order(r):
                w0, c0 = time.perf_counter(), time.process_time()
                if side == "bare":
                    for path in timed_edfs[lo:hi]:
                        ai.integrate1d(fabio.open(path).data, npt, unit=unit, method=method, mask=mask)
                elif side == "save":
                    for path in timed_edfs[lo:hi]:
                        ai.integrate1d(fabio.open(path).data, npt, unit=unit, method=method, mask=mask,
                                       filename=str(saved / "one" / (Path(path).stem + ".dat")))
                else:
                    results.extend(run_scans(scratch, timed[lo:hi], settings, integrators))
                wall[side] += time.perf_counter() - w0
                cpu[side] += time.process_time() - c0
        failed = [r.error for r in results if not r.ok]
        if failed:
            print(f"our reduction failed: {failed[0]}", file=sys.stderr)
            return 1

        # where our time goes: CPU time of each step alone (medians over a few frames; the load does not move CPU
        # time much), and the wall time of writing all outputs durably (fsync waits for the disk: no CPU)
        parts: dict[str, list[float]] = {}
        folder = scratch / "parts"
        folder.mkdir(exist_ok=True)
        steps: list[tuple[str, Any]] = [
            ("read", lambda job, red: load_single(scratch, job.files["edf"], job.files["txt"], settings)),
            ("integrate", lambda job, red: reduce_frame(red, poni, settings, integrators)),
            ("nxcansas", lambda job, red: out.write_nxcansas(folder / "x.h5", red, stem="x", settings=settings,
                                                              info={})),
            ("dat", lambda job, red: out.write_dat(folder / "x.dat", red, stem="x", settings=settings, info={})),
            ("iq_png", lambda job, red: out.plot_iq(folder / "x_iq.png", red, title="x")),
            ("frame_png", lambda job, red: out.plot_frame(folder / "x_frame.png", red, title="x")),
        ]
        for job in timed[: min(5, n)]:
            value: Any = None
            for name, step in steps:
                c0 = time.process_time()
                result = step(job, value)
                parts.setdefault(name, []).append((time.process_time() - c0) * 1000)
                if name in ("read", "integrate"):
                    value = result
            w0 = time.perf_counter()
            out.write_all(value, folder / "all", "x", settings=settings, info={})
            parts.setdefault("write_all_wall", []).append((time.perf_counter() - w0) * 1000)

        # 2. --workers processes: our pool vs a bare pool started the same way, same chunks
        spawn = multiprocessing.get_context("spawn")
        bare_pool = ProcessPoolExecutor(max_workers=args.workers, mp_context=spawn, initializer=_bare_init,
                                        initargs=(args.workers, poni, npt, unit, method))
        for w in range(args.workers):  # each worker warms both loops (pyFAI loads its writer on first save)
            (saved / f"warm{w}").mkdir()
        list(bare_pool.map(_bare_chunk, [[str(edfs[0])]] * args.workers, [npt] * args.workers,
                           [unit] * args.workers, [method] * args.workers,
                           [str(saved / f"warm{w}") for w in range(args.workers)]))
        backend = LocalBackend(scratch, args.workers)
        assert all(o.ok for o in backend.run(warm, settings))  # starts the pool: each worker builds the integrator
        from splash_flows.analysis.backends import local

        ours_pool = local._pool(args.workers)
        pwall = dict.fromkeys(SIDES, 0.0)
        pcpu = dict.fromkeys(SIDES, 0.0)
        pooled = []
        for r, (lo, hi) in enumerate(pool_rounds):
            for side in _order(r):
                pids = _pids(ours_pool) if side == "ours" else _pids(bare_pool)
                c0, w0 = _cpu_of(pids), time.perf_counter()
                if side != "ours":
                    parts_of = [[str(scratch / j.files["edf"]) for j in part] for part in
                                chunks(timed[lo:hi], args.workers)]
                    save_to = str(saved / "pool") if side == "save" else None
                    m = len(parts_of)
                    assert sum(bare_pool.map(_bare_chunk, parts_of, [npt] * m, [unit] * m, [method] * m,
                                             [save_to] * m)) == hi - lo
                else:
                    pooled.extend(backend.run(timed[lo:hi], settings))
                pwall[side] += time.perf_counter() - w0
                pcpu[side] += _cpu_of(pids) - c0
        bare_pool.shutdown(wait=True)
        for where in ("one", "pool"):
            count = len(list((saved / where).glob("*.dat")))
            assert count == n, f"the saving loop ({where}) wrote {count} .dat files, not {n}"
        shutdown_pools()
        assert all(r.ok for r in pooled), [r.error for r in pooled if not r.ok][:1]
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    load_end, uptime_end = _load(), _uptime()
    cores = os.cpu_count() or 1
    fps = {k: n / v for k, v in wall.items()}
    pfps = {k: n / v for k, v in pwall.items()}
    ms = {k: v / n * 1000 for k, v in cpu.items()}
    pms = {k: v / n * 1000 for k, v in pcpu.items()}
    ratio = {k: wall["ours"] / wall[k] for k in ("bare", "save")}
    cpu_ratio = {k: cpu["ours"] / cpu[k] for k in ("bare", "save")}
    pratio = {k: pwall["ours"] / pwall[k] for k in ("bare", "save")}
    pcpu_ratio = {k: pcpu["ours"] / pcpu[k] for k in ("bare", "save")}
    cpu_fps = {k: 1000 / v for k, v in ms.items()}  # one process on one free core
    pcpu_fps = {k: cores * 1000 / v for k, v in pms.items()}  # the pool on `cores` free cores
    labels = {"bare": "baseline: fabio + integrate1d, nothing saved",
              "save": "saving: same + integrate1d(filename=.dat)",
              "ours": "ours: read, reduce, write .h5 .dat 2 PNGs"}
    print(f"{n} frames, rounds of {args.round} (pools: {args.pool_round}), method {args.method}, {cores} cores")
    print(f"uptime at start: {uptime_start}")
    print(f"uptime at end:   {uptime_end}")
    header = "                                               frames/s  frames/s  wall ms  CPU ms"
    sub = "                                               measured  from CPU  a frame  a frame"
    print("1 process" + header[9:])
    print(sub)
    for key in SIDES:
        print(f"  {labels[key]:<45s}{fps[key]:8.1f}  {cpu_fps[key]:8.1f}  {1000 / fps[key]:7.0f}  {ms[key]:6.0f}")
    print(f"  ratio ours / bare baseline:   wall {ratio['bare']:.2f}, CPU {cpu_ratio['bare']:.2f} (aim <= 1.2)")
    print(f"  ratio ours / saving baseline: wall {ratio['save']:.2f}, CPU {cpu_ratio['save']:.2f} (aim <= 1.2)")
    print("  cores busy (CPU / wall): " + ", ".join(f"{k} {cpu[k] / wall[k]:.2f}" for k in SIDES))
    print(f"{args.workers} processes" + header[len(f"{args.workers} processes"):])
    print(sub)
    for key in SIDES:
        print(f"  {labels[key]:<45s}{pfps[key]:8.1f}  {pcpu_fps[key]:8.1f}  {1000 / pfps[key]:7.0f}  {pms[key]:6.0f}")
    print(f"  ratio ours / bare baseline:   wall {pratio['bare']:.2f}, CPU {pcpu_ratio['bare']:.2f}")
    print(f"  ratio ours / saving baseline: wall {pratio['save']:.2f}, CPU {pcpu_ratio['save']:.2f}")
    print(f"  cores busy (CPU / wall, of {cores}): " + ", ".join(f"{k} {pcpu[k] / pwall[k]:.2f}" for k in SIDES))
    print(f"  ours: {pfps['ours']:.1f} frames/s measured at this load, {pcpu_fps['ours']:.1f} from CPU time on "
          f"{cores} free cores (aim >= 15 on 2 cores)")
    print("our time per frame, one step at a time, median CPU ms (write_all: wall ms, fsyncs included): "
          + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in parts.items()))

    def row(fps_: dict[str, float], cpu_fps_: dict[str, float], ms_: dict[str, float], key: str) -> dict[str, float]:
        return {"fps": round(fps_[key], 2), "fps_from_cpu": round(cpu_fps_[key], 1), "cpu_ms": round(ms_[key], 1)}

    print(json.dumps({"bench": "reduce", "frames": n, "method": args.method, "workers": args.workers,
                      "round": args.round, "pool_round": args.pool_round,
                      "one_process": {**{k: row(fps, cpu_fps, ms, k) for k in SIDES},
                                      "ratio_wall": {k: round(v, 2) for k, v in ratio.items()},
                                      "ratio_cpu": {k: round(v, 2) for k, v in cpu_ratio.items()}},
                      "pool": {**{k: row(pfps, pcpu_fps, pms, k) for k in SIDES},
                               "ratio_wall": {k: round(v, 2) for k, v in pratio.items()},
                               "ratio_cpu": {k: round(v, 2) for k, v in pcpu_ratio.items()}},
                      "cores_busy": {"one_process": {k: round(cpu[k] / wall[k], 2) for k in SIDES},
                                     "pool": {k: round(pcpu[k] / pwall[k], 2) for k in SIDES}},
                      "parts_ms": {k: round(statistics.median(v)) for k, v in parts.items()},
                      "cpus": cores, "load_avg_1min": [load_start, load_end],
                      "uptime": [uptime_start, uptime_end], "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
