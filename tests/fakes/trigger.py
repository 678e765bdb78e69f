"""Fake ``Trigger`` implementations for the watcher tests (stand-ins for ``PrefectDeploymentTrigger``).

Both behave like the Prefect server where the watcher relies on it: a repeated idempotency key returns the run
created the first time, and "the API cannot be reached" is an ``OrchestrationError``.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from splash_flows.errors import OrchestrationError, OrchestratorBusy, TriggerRejected


@dataclass(frozen=True)
class FakeRun:
    """One flow run the fake created."""

    id: str
    paths: tuple[str, ...]
    key: str
    at: float


class FakeTrigger:
    """In-memory fake: records every run it created, in order. ``down`` makes every call raise
    OrchestrationError (as an unreachable Prefect API does); ``reject`` makes it raise TriggerRejected;
    ``busy`` > 0 makes that many next calls raise OrchestratorBusy (a 503 from a locked SQLite database)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down = False
        self.reject = False
        self.busy = 0
        self.calls: list[tuple[tuple[str, ...], str]] = []
        self._by_key: dict[str, FakeRun] = {}
        self.runs: list[FakeRun] = []

    def trigger(self, paths: list[str], idempotency_key: str) -> str:
        with self._lock:
            self.calls.append((tuple(paths), idempotency_key))
            if self.down:
                raise OrchestrationError("fake Prefect API is down (connection refused)")
            if self.reject:
                raise TriggerRejected("fake Prefect API refused the parameters (422)")
            if self.busy > 0:
                self.busy -= 1
                raise OrchestratorBusy("fake Prefect API answered 503 (database is locked)")
            run = self._by_key.get(idempotency_key)
            if run is None:
                run = FakeRun(str(uuid.uuid4()), tuple(paths), idempotency_key, time.time())
                self._by_key[idempotency_key] = run
                self.runs.append(run)
            return run.id

    def sent_paths(self) -> list[str]:
        """Every path of every run created, in order (a path twice means it was sent twice)."""
        with self._lock:
            return [p for run in self.runs for p in run.paths]

    def runs_snapshot(self) -> list[FakeRun]:
        with self._lock:
            return list(self.runs)


class FileRecordingTrigger:
    """Cross-process fake for watcher subprocesses: every created run is one JSON line in ``log_path`` (flock +
    fsync, so a ``kill -9`` right after a call keeps it). Keys already in the file return their run. While the
    file ``down_flag`` exists every call raises OrchestrationError."""

    def __init__(self, log_path: Path, down_flag: Path | None = None) -> None:
        self.log_path = log_path
        self.down_flag = down_flag

    def trigger(self, paths: list[str], idempotency_key: str) -> str:
        if self.down_flag is not None and self.down_flag.exists():
            raise OrchestrationError("fake Prefect API is down (flag file present)")
        with open(self.log_path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    if rec["key"] == idempotency_key:
                        return str(rec["run_id"])
            run_id = str(uuid.uuid4())
            fh.write(json.dumps({"run_id": run_id, "key": idempotency_key, "paths": paths, "pid": os.getpid(),
                                 "at": time.time()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            return run_id

    @staticmethod
    def read(log_path: Path) -> list[dict[str, object]]:
        """The runs recorded so far (a truncated last line from a killed writer is ignored)."""
        if not log_path.exists():
            return []
        out = []
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
