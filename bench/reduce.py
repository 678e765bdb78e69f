"""Benchmark: frames per second through our reduction vs a bare pyFAI loop, same Pilatus 2M frames, same run.

Writes N simulated 7.3.3 exposures (Pilatus 2M, 1475 x 1679 int32 EDF + sidecar, AgBh rings, transmission) and a
PONI of their geometry, then times, with warm integrators (each side reduces one frame first, untimed):

* ours     -- ``splash_flows.analysis.job.run_scan`` per frame: read the EDF (the project's reader) and the
              sidecar, mask (gaps, beamstop, negative pixels), normalise by the sidecar's monitor, integrate to
              I(q) (2000 points, Poisson errors), write NXcanSAS + .dat + two PNGs atomically (fsync, rename)
              and checksum every output -- in 1 process, and in the local backend's pool of ``--workers``.
* baseline -- a bare loop of ``fabio.open(edf).data`` + ``ai.integrate1d(data, 2000, mask=detector mask)``
              in 1 process, writing nothing (what a user would time first).

Baseline and ours alternate frame by frame (the same load for both).
Prints frames/s of each, the ratio (ours 1 process / baseline, per frame: aim <= 1.2), ours on the pool (aim
>= 15 frames/s on 2 cores for 1D), where our time goes, and a JSON line for the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="processes of the local backend's pool")
    parser.add_argument("--method", default="no,histogram,cython", help="pyFAI method (split,algo,impl)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import fabio

    from splash_flows.analysis import outputs as out
    from splash_flows.analysis.backends.local import LocalBackend, shutdown_pools
    from splash_flows.analysis.job import ScanJob, run_scan
    from splash_flows.analysis.reduce import Integrators, Settings, load_poni, load_single, reduce_frame
    from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni

    scratch = Path(tempfile.mkdtemp(prefix="bench-reduce-", dir=args.dir))
    try:
        print(f"writing {args.frames} + 1 Pilatus 2M frames into {scratch} ...", flush=True)
        written = simulate_acquisitions(scratch, args.frames + 1, when=datetime(2026, 3, 1, 10, 0, 0), seed=42)
        edfs = [p for p in written if p.suffix == ".edf"]
        for edf in edfs:  # transmission frames: the 1D reduction is what is timed
            txt = edf.with_suffix(".txt")
            txt.write_text("\n".join(line if not line.startswith("Sample Alpha Stage:") else
                                     "Sample Alpha Stage: 0.000000" for line in txt.read_text().splitlines())
                           + "\n")
        poni = simulated_poni()
        method = tuple(args.method.split(","))
        settings = Settings(method=method)  # type: ignore[arg-type]
        jobs = [ScanJob(scan_key=e.stem, folder=e.parent.relative_to(scratch).as_posix(), stem=e.stem,
                        kind="exposure", files={"edf": e.relative_to(scratch).as_posix(),
                                                "txt": e.with_suffix(".txt").relative_to(scratch).as_posix()},
                        poni_text=poni, calibration="bench") for e in edfs]
        warm, timed = jobs[0], jobs[1:]
        n = len(timed)

        # baseline and ours, interleaved frame by frame (alternating which goes first), so that both see the same
        # load: on a machine shared with other work, two consecutive loops measured minutes apart do not
        ai = load_poni(poni)
        mask = ai.detector.mask
        ai.integrate1d(fabio.open(str(edfs[0])).data, 2000, unit="q_nm^-1", method=method, mask=mask)
        integrators = Integrators()
        assert run_scan(scratch, warm, settings, integrators).ok
        bare = ours = 0.0
        results = []
        for k, (edf, job) in enumerate(zip(edfs[1:], timed, strict=True)):
            for side in ("bare", "ours") if k % 2 == 0 else ("ours", "bare"):
                started = time.perf_counter()
                if side == "bare":
                    ai.integrate1d(fabio.open(str(edf)).data, 2000, unit="q_nm^-1", method=method, mask=mask)
                    bare += time.perf_counter() - started
                else:
                    results.append(run_scan(scratch, job, settings, integrators))
                    ours += time.perf_counter() - started
        failed = [r.error for r in results if not r.ok]
        if failed:
            print(f"our reduction failed: {failed[0]}", file=sys.stderr)
            return 1

        # where our time goes (medians over a few frames)
        parts: dict[str, list[float]] = {}
        for job in timed[: min(5, n)]:
            t0 = time.perf_counter()
            frame = load_single(scratch, job.files["edf"], job.files["txt"], settings)
            t1 = time.perf_counter()
            red = reduce_frame(frame, poni, settings, integrators)
            t2 = time.perf_counter()
            folder = scratch / "parts"
            folder.mkdir(exist_ok=True)
            out.write_nxcansas(folder / "x.h5", red, stem="x", settings=settings, info={})
            t3 = time.perf_counter()
            out.write_dat(folder / "x.dat", red, stem="x", settings=settings, info={})
            t4 = time.perf_counter()
            out.plot_iq(folder / "x_iq.png", red, title="x")
            t5 = time.perf_counter()
            out.plot_frame(folder / "x_frame.png", red, title="x")
            t6 = time.perf_counter()
            for name, dt in (("read", t1 - t0), ("integrate", t2 - t1), ("nxcansas", t3 - t2), ("dat", t4 - t3),
                             ("iq_png", t5 - t4), ("frame_png", t6 - t5)):
                parts.setdefault(name, []).append(dt * 1000)

        # ours, the local backend's pool (warmed: each worker builds its integrator on its first frame)
        backend = LocalBackend(scratch, args.workers)
        backend.run([warm] * (args.workers * 3), settings)  # several, so that every worker likely gets one
        started = time.perf_counter()
        pooled = backend.run(timed, settings)
        pool_s = time.perf_counter() - started
        shutdown_pools()
        assert all(r.ok for r in pooled)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    bare_fps, ours_fps, pool_fps = n / bare, n / ours, n / pool_s
    ratio = ours / bare
    print(f"baseline (fabio read + integrate1d, 1 process): {bare_fps:6.1f} frames/s  ({bare / n * 1000:.0f} ms/frame)")
    print(f"ours (read, reduce, write .h5 .dat 2 PNGs, 1 process): {ours_fps:6.1f} frames/s  "
          f"({ours / n * 1000:.0f} ms/frame)")
    print(f"ratio ours/baseline per frame: {ratio:.2f}  (aim <= 1.2)")
    print(f"ours on the local pool ({args.workers} workers): {pool_fps:6.1f} frames/s  (aim >= 15 on 2 cores)")
    print("our time per frame, median ms: " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in parts.items()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(json.dumps({"bench": "reduce", "frames": n, "method": args.method, "baseline_fps": round(bare_fps, 2),
                      "ours_fps": round(ours_fps, 2), "ratio": round(ratio, 2), "pool_workers": args.workers,
                      "pool_fps": round(pool_fps, 2), "parts_ms": {k: round(statistics.median(v)) for k, v in
                                                                   parts.items()},
                      "cpus": os.cpu_count(), "load_avg_1min": round(load, 1), "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
