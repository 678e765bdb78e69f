"""A site with moved, catalogued 7.3.3 scans (no Prefect: the services directly) and ``splash-flows serve`` on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import load_config_file
from splash_flows.context import build_context
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from tests.support.postgres import free_port


def moved_site(config_file: Path, scans: int = 3) -> list[str]:
    """Simulate ``scans`` acquisitions into the source tier, move and catalogue them; the moved paths."""
    config = load_config_file(config_file)
    simulate_acquisitions(Path(config.tiers[config.move.source].root), scans, small=True)
    ctx = build_context(config)
    try:
        paths = sorted(st.path for st in ctx.tier(config.move.source).walk())
        move_files(ctx, paths).raise_for_failures()
        catalogue_batch(ctx, paths).raise_for_failures()
    finally:
        ctx.close()
    return paths


def cli(config_file: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``splash-flows --config FILE ARGS`` as an operator would."""
    return subprocess.run([sys.executable, "-m", "splash_flows", "--config", str(config_file), *args],
                          capture_output=True, text=True, check=check, timeout=120)


@contextmanager
def serving(config_file: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``splash-flows serve`` on a free loopback port; yields its base URL and the process (stopped after)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "splash_flows", "--config", str(config_file), "serve",
                             "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
