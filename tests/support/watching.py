"""Helpers for watcher tests: bounded waiting on a condition, and writing files the way a detector does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], what: str, *, timeout: float = 30.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something other than None or False, and return that; fail naming
    ``what`` after ``timeout``. The timeout only bounds a hang: nothing asserts how long the wait took."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def detector_write(path: Path, chunks: list[bytes], pause: float,
                   between: Callable[[int], None] | None = None) -> float:
    """Open, write ``chunks`` with ``pause`` seconds between them (flushing each), close. ``between(i)`` runs
    after chunk ``i`` is on disk and before the next one, with the file still open. Returns the close time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for i, chunk in enumerate(chunks):
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            if between is not None:
                between(i)
            if i < len(chunks) - 1:
                time.sleep(pause)
    return time.time()
