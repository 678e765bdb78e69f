"""The watcher as a process: kill -9 while files keep arriving, SIGTERM, and the ``splash-flows watch`` CLI.

The watcher processes use the cross-process fake trigger (``FileRecordingTrigger``), except the CLI test, which
runs the real Prefect trigger against an API address where nothing listens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from splash_flows.config import default_config_data
from splash_flows.ledger import Ledger
from splash_flows.ledger.outbox import Outbox
from tests.fakes.trigger import FileRecordingTrigger
from tests.support.postgres import free_port
from tests.support.watching import detector_write, wait_for
from tests.watcher.conftest import FAST

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A configuration file (embedded default + fast watcher settings) with its tier folders."""
    data = default_config_data(tmp_path / "site")
    data["watcher"] = dict(FAST)
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env.update(extra)
    return env


class Proc:
    """A child process whose combined output goes to a file (so it can never block on a full pipe)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.fh = open(log, "ab")  # closed in wait()
        self.popen = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self.fh.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def _start_fake_watcher(site: Path, runs: Path, procs: list[Proc], down: Path | None = None) -> Proc:
    args = [sys.executable, "-m", "tests.watcher.fake_watcher_main", str(site), str(runs)]
    if down is not None:
        args.append(str(down))
    proc = Proc(args, site.parent / "watcher.log", _env())
    procs.append(proc)
    wait_for(lambda: proc.popen.poll() is not None or "watching " in proc.output(), "the watcher to start")
    assert proc.popen.poll() is None, proc.output()
    return proc


def test_kill_9_while_files_keep_arriving_loses_nothing_and_sends_each_once(
        site: Path, tmp_path: Path, procs: list[Proc]) -> None:
    root = site.parent / "site" / "data733"
    runs = tmp_path / "runs.jsonl"
    written: list[str] = []
    stop_writing = threading.Event()

    def detector() -> None:  # writes scans the way a detector does until told to stop: through kills and restarts
        n = 0
        while not stop_writing.is_set():
            rel = f"scan_{n // 10:02d}/frame_{n % 10:03d}.edf"
            detector_write(root / rel, [os.urandom(2048)] * 3, 0.01)
            written.append(rel)
            n += 1
            time.sleep(0.02)

    writer = threading.Thread(target=detector, name="detector")
    writer.start()
    try:
        for kill_after_runs in (2, 6):
            proc = _start_fake_watcher(site, runs, procs)
            wait_for(lambda n=kill_after_runs: len(FileRecordingTrigger.read(runs)) >= n,  # type: ignore[misc]
                     f"{kill_after_runs} runs before the kill")
            proc.popen.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        final = _start_fake_watcher(site, runs, procs)
        after_restart = len(written)
        wait_for(lambda: len(written) >= after_restart + 10, "more files after the last restart")
    finally:
        stop_writing.set()
        writer.join()
    expected = list(written)

    def all_sent() -> bool:
        sent = {p for r in FileRecordingTrigger.read(runs) for p in r["paths"]}  # type: ignore[attr-defined]
        return set(expected) <= sent

    wait_for(all_sent, "every file to be sent", timeout=60)
    final.popen.send_signal(signal.SIGTERM)
    assert final.wait() == 0, final.output()
    assert "backfill found" in final.output()  # files written while no watcher ran were recovered by a backfill
    runs_by_path: dict[str, set[str]] = {}
    for r in FileRecordingTrigger.read(runs):
        for p in r["paths"]:  # type: ignore[attr-defined]
            runs_by_path.setdefault(p, set()).add(str(r["run_id"]))
    assert sorted(runs_by_path) == sorted(expected)  # nothing extra (no partial names, no temporary files)
    twice = {p: n for p, n in runs_by_path.items() if len(n) != 1}
    assert not twice, f"files sent in more than one run: {twice}"


def test_sigterm_stops_promptly_and_keeps_unsent_batches_pending(site: Path, tmp_path: Path,
                                                                 procs: list[Proc]) -> None:
    down = tmp_path / "prefect-is-down"
    down.touch()
    runs = tmp_path / "runs.jsonl"
    proc = _start_fake_watcher(site, runs, procs, down=down)
    root = site.parent / "site" / "data733"
    for folder in ("t1", "t2"):
        detector_write(root / folder / "f.edf", [b"a" * 100, b"b" * 100], 0.05)
    ledger = Ledger.open(yaml.safe_load(site.read_text())["ledger"]["url"])
    try:
        outbox = Outbox(ledger)
        wait_for(lambda: outbox.counts()["pending"] == 2 and outbox.entries()[0].attempts >= 2,
                 "two pending entries, the first one attempted (the second waits behind it)")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert "received SIGTERM: stopping" in proc.output()
        assert "2 batch(es) pending in the outbox" in proc.output()
        assert [e.state for e in outbox.entries()] == ["pending", "pending"]
        assert FileRecordingTrigger.read(runs) == []
        down.unlink()  # Prefect is back: the next start replays both, then sends nothing else
        proc2 = _start_fake_watcher(site, runs, procs)
        wait_for(lambda: outbox.counts()["pending"] == 0, "the replay")
        proc2.popen.send_signal(signal.SIGINT)
        assert proc2.wait(timeout=30) == 0, proc2.output()
    finally:
        ledger.close()
    assert sorted(p for r in FileRecordingTrigger.read(runs) for p in r["paths"]) == ["t1/f.edf", "t2/f.edf"]  # type: ignore[attr-defined]


def test_cli_watch_with_prefect_unreachable_queues_then_stops_on_sigterm(site: Path, tmp_path: Path,
                                                                         procs: list[Proc]) -> None:
    """The real command and the real Prefect trigger, with nothing listening at PREFECT_API_URL."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = _env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"))
    proc = Proc([sys.executable, "-m", "splash_flows", "watch", "--config", str(site)], tmp_path / "cli.log", env)
    procs.append(proc)
    wait_for(lambda: proc.popen.poll() is not None or "watching " in proc.output(), "the command to start",
             timeout=60)
    out = proc.output()
    assert proc.popen.poll() is None, out
    assert "inotify mode" in out and "dispatcher/run_733_dispatcher" in out and api in out
    root = site.parent / "site" / "data733"
    detector_write(root / "cli_scan" / "frame 1.edf", [b"x" * 100] * 2, 0.05)
    ledger = Ledger.open(yaml.safe_load(site.read_text())["ledger"]["url"])
    try:
        outbox = Outbox(ledger)
        entry = wait_for(lambda: next((e for e in outbox.entries() if e.attempts), None), "a failed attempt",
                         timeout=60)
        assert entry.state == "pending" and entry.paths == ("cli_scan/frame 1.edf",)
        assert "cannot reach the Prefect API" in (entry.last_error or "")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.output()
        assert outbox.entries()[0].state == "pending"
    finally:
        ledger.close()
    assert proc.output().count("cannot trigger") == 1  # one WARNING for the outage, not one per attempt


def test_cli_watch_without_prefect_api_url_fails_with_one_line(site: Path, tmp_path: Path) -> None:
    env = _env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "splash_flows", "watch", "--config", str(site)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PREFECT_API_URL is not set" in done.stderr
