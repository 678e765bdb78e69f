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

Two comparisons, each like with like:

1. one process: ours (``run_scans``, its writer thread included) vs the bare loop in this process;
2. ``--workers`` processes: ours on the local backend's pool (``LocalBackend``: spawn, OpenMP threads capped to
   cores // workers, integrators built at worker start-up, chunks of paths) vs the bare loop on a pool of as
   many processes started the same way (same thread caps, same chunks, integrator built at start-up).

Each side runs over the same frames in rounds of ``--round`` frames, alternating which goes first, so both see
the same load on a shared machine. Wall time AND CPU time (all threads; the pools' worker processes read from
/proc) are printed: on a loaded machine the wall time says how much of the cores we got, the CPU time what the
work costs. Prints frames/s, ms/frame, both ratios, where our time goes, the load, and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
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


def _bare_chunk(paths: list[str], npt: int, unit: str, method: tuple[str, str, str]) -> int:
    """The bare loop over ``paths`` in a pool worker."""
    import fabio

    ai, mask = _BARE
    for path in paths:
        ai.integrate1d(fabio.open(path).data, npt, unit=unit, method=method, mask=mask)
    return len(paths)


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

    load_start = _load()
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

        # 1. one process, rounds alternating which side goes first
        ai = load_poni(poni)
        mask = ai.detector.mask
        ai.integrate1d(fabio.open(str(edfs[0])).data, npt, unit=unit, method=method, mask=mask)
        integrators = process_integrators()
        integrators.prepare(poni, settings)
        assert all(o.ok for o in run_scans(scratch, warm[:1], settings, integrators))
        wall = {"bare": 0.0, "ours": 0.0}
        cpu = {"bare": 0.0, "ours": 0.0}
        results = []
        for r, (lo, hi) in enumerate(rounds):
            for side in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                w0, c0 = time.perf_counter(), time.process_time()
                if side == "bare":
                    for path in timed_edfs[lo:hi]:
                        ai.integrate1d(fabio.open(path).data, npt, unit=unit, method=method, mask=mask)
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
        list(bare_pool.map(_bare_chunk, [[str(edfs[0])]] * args.workers, [npt] * args.workers,
                           [unit] * args.workers, [method] * args.workers))
        backend = LocalBackend(scratch, args.workers)
        assert all(o.ok for o in backend.run(warm, settings))  # starts the pool: each worker builds the integrator
        from splash_flows.analysis.backends import local

        ours_pool = local._pool(args.workers)
        pwall = {"bare": 0.0, "ours": 0.0}
        pcpu = {"bare": 0.0, "ours": 0.0}
        pooled = []
        for r, (lo, hi) in enumerate(rounds):
            for side in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                pids = _pids(bare_pool) if side == "bare" else _pids(ours_pool)
                c0, w0 = _cpu_of(pids), time.perf_counter()
                if side == "bare":
                    parts_of = [[str(scratch / j.files["edf"]) for j in part] for part in
                                chunks(timed[lo:hi], args.workers)]
                    assert sum(bare_pool.map(_bare_chunk, parts_of, [npt] * len(parts_of), [unit] * len(parts_of),
                                             [method] * len(parts_of))) == hi - lo
                else:
                    pooled.extend(backend.run(timed[lo:hi], settings))
                pwall[side] += time.perf_counter() - w0
                pcpu[side] += _cpu_of(pids) - c0
        bare_pool.shutdown(wait=True)
        shutdown_pools()
        assert all(r.ok for r in pooled), [r.error for r in pooled if not r.ok][:1]
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    load_end = _load()
    fps = {k: n / v for k, v in wall.items()}
    pfps = {k: n / v for k, v in pwall.items()}
    ms = {k: v / n * 1000 for k, v in cpu.items()}
    pms = {k: v / n * 1000 for k, v in pcpu.items()}
    ratio, cpu_ratio = wall["ours"] / wall["bare"], cpu["ours"] / cpu["bare"]
    pratio, pcpu_ratio = pwall["ours"] / pwall["bare"], pcpu["ours"] / pcpu["bare"]
    cores = os.cpu_count() or 1
    print(f"{n} frames, rounds of {args.round}, method {args.method}; load average {load_start} -> {load_end} "
          f"on {cores} cores")
    print("1 process                      frames/s  wall ms/frame  CPU ms/frame")
    print(f"  baseline (fabio + integrate1d) {fps['bare']:7.1f}  {1000 / fps['bare']:13.0f}  {ms['bare']:12.0f}")
    print(f"  ours (read, reduce, write)     {fps['ours']:7.1f}  {1000 / fps['ours']:13.0f}  {ms['ours']:12.0f}")
    print(f"  ratio ours/baseline: wall {ratio:.2f} (aim <= 1.2), CPU {cpu_ratio:.2f}")
    print(f"{args.workers} processes")
    print(f"  baseline pool                  {pfps['bare']:7.1f}  {1000 / pfps['bare']:13.0f}  {pms['bare']:12.0f}")
    print(f"  ours, local backend pool       {pfps['ours']:7.1f}  {1000 / pfps['ours']:13.0f}  {pms['ours']:12.0f}")
    print(f"  ratio ours/baseline: wall {pratio:.2f}, CPU {pcpu_ratio:.2f}; ours {pfps['ours']:.1f} frames/s "
          f"(aim >= 15 on 2 cores); CPU-bound on {cores} free cores: {cores * 1000 / pms['ours']:.1f} frames/s")
    print("our time per frame, one step at a time, median CPU ms (write_all: wall ms, fsyncs included): "
          + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in parts.items()))
    print(json.dumps({"bench": "reduce", "frames": n, "method": args.method, "workers": args.workers,
                      "one_process": {"baseline_fps": round(fps["bare"], 2), "ours_fps": round(fps["ours"], 2),
                                      "ratio_wall": round(ratio, 2), "ratio_cpu": round(cpu_ratio, 2),
                                      "baseline_cpu_ms": round(ms["bare"]), "ours_cpu_ms": round(ms["ours"])},
                      "pool": {"baseline_fps": round(pfps["bare"], 2), "ours_fps": round(pfps["ours"], 2),
                               "ratio_wall": round(pratio, 2), "ratio_cpu": round(pcpu_ratio, 2),
                               "baseline_cpu_ms": round(pms["bare"]), "ours_cpu_ms": round(pms["ours"])},
                      "parts_ms": {k: round(statistics.median(v)) for k, v in parts.items()},
                      "cpus": cores, "load_avg_1min": [load_start, load_end],
                      "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
