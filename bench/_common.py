"""What the benchmarks in this folder share: one definition each, so every bench measures the same way.

* ``checksum_tool`` -- the checksum command a careful person would run by hand in a baseline (``xxhsum -H2``,
  the XXH3-128 we compute, when installed; else ``sha256sum``).
* ``write_bench_files`` -- N demo-like detector files of one size, distinct content each, under one proposal
  and one day.
* ``time_our_run`` -- our side of a benchmark: a context on the site's default configuration, the wall time of
  one service call, then the report's failures raised (a run that lost a file is no figure) and its summary.
* ``scratch`` -- the benchmark's scratch folder on the data disk, removed afterwards unless kept.

The scripts are run as ``python bench/NAME.py``, so this folder is on ``sys.path`` and ``from _common import``
finds this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from splash_flows.config import default_config
from splash_flows.context import Context, build_context


class Report(Protocol):
    """What a service report offers a benchmark (``MoveReport``, ``ArchiveReport``)."""

    def raise_for_failures(self) -> None: ...

    def summary(self) -> str: ...


def checksum_tool() -> list[str]:
    """The baseline's checksum command: XXH3-128 (what we compute) when ``xxhsum`` is installed, else SHA-256."""
    return ["xxhsum", "-H2"] if shutil.which("xxhsum") else ["sha256sum"]


def write_bench_files(root: Path, count: int, size: int, day: str, mtime: float | None = None) -> list[str]:
    """Write ``count`` files of ``size`` bytes under ``root/ALS-00000/<day>/``; return their relative paths.

    Each file is a per-file 8-byte header in front of shared random bytes, so every file's content (and
    checksum) is distinct without paying for ``count`` times ``size`` random bytes. ``mtime``, when given, is
    set on every file (a benchmark that plans by date needs the files in a known beam cycle).
    """
    block = os.urandom(size)
    paths = []
    for i in range(count):
        rel = f"ALS-00000/{day}/bench_{i:05d}_2m.edf"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(i.to_bytes(8, "little") + block[8:])
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        paths.append(rel)
    return paths


def time_our_run(root: Path, run: Callable[[Context], Report]) -> tuple[float, str]:
    """Seconds ``run`` takes on a context for the default configuration under ``root``, and its summary.

    The context is built outside the clock; the report's failures are raised after it.
    """
    ctx = build_context(default_config(root))
    try:
        start = time.perf_counter()
        report = run(ctx)
        elapsed = time.perf_counter() - start
        report.raise_for_failures()
        return elapsed, report.summary()
    finally:
        ctx.close()


@contextmanager
def scratch(parent: Path, prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh folder under ``parent`` (created if needed) for one benchmark run; removed after unless ``keep``."""
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
