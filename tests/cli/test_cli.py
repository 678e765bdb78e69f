"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
ENV.pop("PREFECT_API_URL", None)
ENV.pop("SPLASH_FLOWS_CONFIG", None)


def cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "splash_flows", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_help_lists_commands() -> None:
    out = cli("--help").stdout
    for command in ("demo", "status", "config", "ledger", "catalog"):
        assert command in out


def test_config_check_redacts_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ledger: {url: 'postgresql://splash:${PW}@db/x'}\n"
                   "tiers: {data733: {root: a}, lamarr: {root: b}, cfs: {root: c}}\n")
    for root in "abc":
        (tmp_path / root).mkdir()
    proc = subprocess.run([sys.executable, "-m", "splash_flows", "config", "check", "--config", str(cfg), "--json"],
                          capture_output=True, text=True, env={**ENV, "PW": "s3cr3t-value"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "s3cr3t-value" not in proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["config"]["ledger"]["url"] == "postgresql://splash:***@db/x"


def test_config_check_refuses_a_local_root_that_is_missing_a_file_or_not_writable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ledger: {url: 'sqlite:///l.db'}\n"
                   "tiers: {data733: {root: a}, lamarr: {root: b}, cfs: {root: c}}\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").write_text("a file, not a folder")
    proc = cli("config", "check", "--config", str(cfg), check=False)
    assert proc.returncode == 1 and "ok" not in proc.stdout
    assert f"cfs: tier root {tmp_path / 'c'} does not exist" in proc.stderr
    assert f"lamarr: tier root {tmp_path / 'b'} is not a folder" in proc.stderr
    assert "data733" not in proc.stderr and "2 problem(s)" in proc.stderr
    as_json = json.loads(cli("config", "check", "--config", str(cfg), "--json", check=False).stdout)
    assert len(as_json["problems"]) == 2
    (tmp_path / "b").unlink()
    for root in "bc":
        (tmp_path / root).mkdir()
    assert cli("config", "check", "--config", str(cfg)).stdout.startswith("ok")
    # not writable: an immutable folder (even root cannot create a file in it), else a read-only one
    folder = tmp_path / "a"
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    if not immutable:
        if os.geteuid() == 0:
            pytest.skip("cannot make a folder unwritable for root here (no chattr +i on this file system)")
        os.chmod(folder, 0o555)
    try:
        proc = cli("config", "check", "--config", str(cfg), check=False)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)
    assert proc.returncode == 1, proc.stdout
    assert f"data733: tier root {folder} is not writable" in proc.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ledger: {url: 'sqlite:///x'}\ntiers: {data733: {root: a}}\n")
    proc = cli("--config", str(cfg), "status", check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "move" in lines[0], proc.stderr


@pytest.fixture
def demo_root(tmp_path: Path) -> Iterator[Path]:
    """A demo folder whose kept Prefect server is stopped at the end (and must then be gone)."""
    root = tmp_path / "demo"
    yield root
    info = root / ".prefect" / "splash-server.json"
    pid = json.loads(info.read_text())["pid"] if info.exists() else None
    out = cli("demo", "--root", str(root), "--stop-server")
    if pid is not None:
        assert "stopped" in out.stdout
        assert not Path(f"/proc/{pid}").exists() or b"local_server" not in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.prefect
def test_demo_end_to_end_twice(demo_root: Path, tmp_path: Path) -> None:
    root = demo_root
    first = cli("demo", "--root", str(root), "--scans", "3", "--small")
    assert "demo summary" in first.stdout
    said = " ".join(first.stdout.split())  # issue 11's "done when": every scan reduced, linked, AgBh peak in place
    assert "started, kept 10 min after this demo for the next one" in said
    assert "analysis: 3 of 3 scan(s) reduced, derived datasets linked" in said
    assert re.search(r"AgBh first peak [\d.]+ nm\^-1 \(calibrant 1\.0763, tolerance [\d.]+%\): ok", said), said
    again = cli("demo", "--root", str(root), "--small")  # second run: safe, nothing new, the server reused
    assert "reused, kept 10 min after this demo" in " ".join(again.stdout.split())
    every = json.loads(cli("--config", str(root / "splash-flows.yaml"), "status", "--json").stdout)
    rows = [r for r in every if "/reduced/" not in r["path"]]
    assert len(rows) == 9  # 2 single exposures (edf + txt) + one hi/lo set (2 edf + 2 txt + gb)
    results = [r for r in every if "/reduced/" in r["path"]]  # the analysis outputs, moved onward like any file
    assert len(results) >= 3 * 4
    for suffix in (".h5", ".dat", "_iq.png", "_frame.png"):  # every scan's results, under reduced/
        assert sum(r["path"].endswith(suffix) for r in results) == 3, suffix
    for row in every:
        for tier in ("lamarr", "cfs"):
            copy = row["copies"][tier]
            assert copy["state"] == "verified" and copy["checksum"] == row["checksum"]
            assert (root / tier / row["path"]).stat().st_size == row["size"]
    assert not list(root.rglob("*.part"))

    # the catalogue: one dataset per demo scan (re-running added none), with proposal, files, checksums, locations
    config = str(root / "splash-flows.yaml")
    found = json.loads(cli("--config", config, "catalog", "search", "--json").stdout)
    datasets = [d for d in found if d["dataset_type"] == "raw"]
    derived = [d for d in found if d["dataset_type"] == "derived"]
    assert len(datasets) == 3 and len(derived) == 3  # one reduced (derived) dataset per scan, linked to it
    assert sorted(d["input_datasets"][0] for d in derived) == sorted(d["pid"] for d in datasets)
    assert all(r["catalogue"]["state"] is None for r in results)  # never catalogued as raw data
    by_path = {r["path"]: r for r in rows}
    for ds in datasets:
        assert ds["proposal_id"] == "ALS-00000" and ds["checksum_algorithm"] == "xxh3_128"
        folder = ds["scan_key"].rpartition("/")[0]
        for f in ds["files"]:
            assert f["chk"] == by_path[f"{folder}/{f['path']}"]["checksum"]
        assert {loc["tier"]: loc["state"] for loc in ds["locations"]} == {"lamarr": "verified", "cfs": "verified"}
    assert sorted(len(ds["files"]) for ds in datasets) == [2, 2, 5]
    assert sum(len(ds["files"]) for ds in datasets) == len(rows)
    pids = {ds["pid"] for ds in datasets}
    assert all(r["catalogue"]["state"] == "catalogued" and r["catalogue"]["pid"] in pids for r in rows)
    hilo = next(ds for ds in datasets if len(ds["files"]) == 5)
    out = json.loads(cli("--config", config, "catalog", "download", hilo["pid"], "--to", str(tmp_path / "dl"),
                         "--json").stdout)
    assert len(out["files"]) == 5 and not out["failed"]
    folder = hilo["scan_key"].rpartition("/")[0]
    for f in hilo["files"]:
        assert (tmp_path / "dl" / f["path"]).read_bytes() == (root / "data733" / folder / f["path"]).read_bytes()


def test_demo_reduces_in_its_own_process_unless_the_machine_has_cores_to_spare() -> None:
    from splash_flows.cli.demo import demo_workers

    assert [demo_workers(False, cores=n) for n in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 2]
    assert demo_workers(True, cores=16) == 1  # tiny frames: a process start costs more than their reduction
