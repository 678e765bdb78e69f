"""The ``sfapi`` backend against NERSC's Superfacility API mocked at the HTTP transport (respx), with the
``sfapi_client`` library doing its real requests. The mocked "compute node" runs the job's real entry point on
the hpc tier, as srun would: COMPLETED, FAILED with its log, TIMEOUT, and COMPLETED without results."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from splash_flows.analysis import service
from splash_flows.analysis.backends.sfapi import SfapiBackend, build_sfapi_client, job_script
from splash_flows.analysis.job import run_manifest
from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni
from splash_flows.config import Config, SfapiConfig, SfapiCredentialsConfig
from splash_flows.context import Context, build_context
from splash_flows.errors import ConfigError
from splash_flows.ledger import analysis as ledger_an
from splash_flows.ledger.models import AnalysisState

API = "https://api.nersc.test/api/v1.2"
JOB_ID = "4242"


class FakeNersc:
    """What SFAPI and Slurm answer, per scenario. ``final`` is the state Slurm reports once the job ran."""

    def __init__(self, hpc_root: Path, final: str, *, run_job: bool = True, log: str = "") -> None:
        self.hpc_root = hpc_root
        self.final = final
        self.run_job = run_job
        self.log = log
        self.polls = 0
        self.scripts: list[str] = []

    def submit(self, request: httpx.Request) -> httpx.Response:
        form = dict(pair.split("=", 1) for pair in request.content.decode().split("&"))
        from urllib.parse import unquote_plus

        script = unquote_plus(form["job"])
        assert form["isPath"] == "false" and script.startswith("#!/bin/bash")
        self.scripts.append(script)
        work_dir = Path(re.search(r"^#SBATCH --output=(.*)/slurm-%j\.log$", script, re.M).group(1))  # type: ignore[union-attr]
        manifest = script.split("<<'SPLASH_MANIFEST_END'\n", 1)[1].split("\nSPLASH_MANIFEST_END\n", 1)[0]
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "manifest.json").write_text(manifest)
        if self.run_job:  # what `srun python -m splash_flows.analysis.job MANIFEST --results ...` does there
            run_manifest(work_dir / "manifest.json", work_dir / "results.json")
        (work_dir / f"slurm-{JOB_ID}.log").write_text(self.log or "reduced\n")
        return httpx.Response(200, json={"task_id": "task-1", "status": "OK", "error": None})

    def jobs(self, request: httpx.Request) -> httpx.Response:
        self.polls += 1
        state = "PENDING" if self.polls == 1 else "RUNNING" if self.polls == 2 else self.final
        return httpx.Response(200, json={"status": "OK", "output": [{"jobid": JOB_ID, "state": state}],
                                         "error": None})


@pytest.fixture
def site(sqlite_config: Config) -> Iterator[tuple[Context, list[str]]]:
    sfapi = SfapiConfig(poll_interval_s=0.01, job_timeout_s=60)
    analysis = sqlite_config.analysis.model_copy(update={"backend": "sfapi", "npt": 200, "gi_npt": 32,
                                                         "sfapi": sfapi})
    creds = SfapiCredentialsConfig(key_file=Path("/nonexistent/sfapi.pem"), api_base_url=API)
    config = sqlite_config.model_copy(update={"analysis": analysis, "sfapi": creds})
    root = Path(config.tiers["data733"].root)
    written = simulate_acquisitions(root, 2, small=True, when=datetime(2026, 3, 1, 10, 0, 0), seed=7)
    ctx = build_context(config)
    ledger_an.add_calibration(ctx.ledger, simulated_poni(small=True), datetime(2026, 1, 1, tzinfo=UTC),
                              source="agbh.poni")
    yield ctx, [p.relative_to(root).as_posix() for p in written]
    ctx.close()


def _mock(router: respx.MockRouter, fake: FakeNersc) -> None:
    router.get(f"{API}/status/perlmutter").respond(200, json={"name": "perlmutter", "status": "active"})
    router.post(f"{API}/compute/jobs/perlmutter").mock(side_effect=fake.submit)
    router.get(f"{API}/tasks/task-1").respond(200, json={
        "id": "task-1", "status": "completed", "result": json.dumps({"status": "ok", "jobid": JOB_ID})})
    router.get(f"{API}/compute/jobs/perlmutter").mock(side_effect=fake.jobs)


def _backend(ctx: Context) -> SfapiBackend:
    from sfapi_client import Client

    def client(creds: SfapiCredentialsConfig | None) -> Client:
        assert creds is not None and creds.api_base_url  # the backend passes the one sfapi: section
        return Client(access_token="test-token", api_base_url=creds.api_base_url, wait_interval=0)

    return SfapiBackend(ctx, ctx.config.analysis.sfapi, client_factory=client, sleep=lambda _s: None)


def _run(ctx: Context, paths: list[str], fake: FakeNersc) -> service.AnalysisReport:
    with respx.mock(assert_all_called=False) as router:
        _mock(router, fake)
        return service.analyse_paths(ctx, paths, backend=_backend(ctx))


def test_completed_job_results_come_back_verified(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    hpc = Path(ctx.config.tiers["hpc"].root)
    fake = FakeNersc(hpc, "COMPLETED")
    report = _run(ctx, paths, fake)
    assert len(report.reduced) == 2 and not report.failed and report.backend == "sfapi"
    frames = sorted({p for p in paths})
    assert ctx.ledger.count_verified("hpc", frames, "data733") == len(frames)  # the verified tier copy in
    data733 = Path(ctx.config.tiers["data733"].root)
    for outputs in report.reduced.values():
        for path in outputs:
            assert (data733 / path).read_bytes() == (hpc / path).read_bytes()  # and back out
    script = fake.scripts[0]
    assert "srun python -m splash_flows.analysis.job" in script and "#SBATCH -q realtime" in script
    assert fake.polls >= 3  # PENDING, RUNNING, COMPLETED: polled until terminal


def test_failed_job_is_a_failure_with_its_log(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    fake = FakeNersc(Path(ctx.config.tiers["hpc"].root), "FAILED", run_job=False,
                     log="Traceback (most recent call last):\nMemoryError: cannot allocate\n")
    report = _run(ctx, paths, fake)
    assert not report.reduced and len(report.failed) == 2
    for err in report.failed.values():
        assert f"Slurm job {JOB_ID} ended FAILED, not COMPLETED" in str(err) and "MemoryError" in str(err)
    assert {r.state for r in ledger_an.analyses(ctx.ledger)} == {AnalysisState.FAILED}


def test_timeout_is_a_failure(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    report = _run(ctx, paths, FakeNersc(Path(ctx.config.tiers["hpc"].root), "TIMEOUT", run_job=False,
                                        log="slurmstepd: error: *** JOB 4242 CANCELLED DUE TO TIME LIMIT ***"))
    assert len(report.failed) == 2
    assert all("ended TIMEOUT" in str(e) and "TIME LIMIT" in str(e) for e in report.failed.values())


@pytest.mark.parametrize("state", ["NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED by 1234"])
def test_every_other_terminal_state_is_a_failure(site: tuple[Context, list[str]], state: str) -> None:
    ctx, paths = site
    report = _run(ctx, paths, FakeNersc(Path(ctx.config.tiers["hpc"].root), state, run_job=False))
    assert not report.reduced and len(report.failed) == 2
    assert all(f"ended {state.split()[0]}" in str(e) for e in report.failed.values())


def test_completed_without_results_is_a_failure(site: tuple[Context, list[str]]) -> None:
    ctx, paths = site
    report = _run(ctx, paths, FakeNersc(Path(ctx.config.tiers["hpc"].root), "COMPLETED", run_job=False))
    assert not report.reduced and len(report.failed) == 2
    assert all("COMPLETED but wrote no results file" in str(e) for e in report.failed.values())
    assert not list(Path(ctx.config.tiers["data733"].root).rglob("reduced/*"))


def test_results_that_do_not_verify_back_are_that_scans_error(site: tuple[Context, list[str]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, paths = site
    hpc = Path(ctx.config.tiers["hpc"].root)
    real = FakeNersc.submit

    def corrupt(self: FakeNersc, request: httpx.Request) -> httpx.Response:
        response = real(self, request)
        victim = next(hpc.rglob("reduced/*.dat"))
        victim.write_bytes(victim.read_bytes() + b"flipped on the way")
        return response

    monkeypatch.setattr(FakeNersc, "submit", corrupt)
    report = _run(ctx, paths, FakeNersc(hpc, "COMPLETED"))
    assert len(report.failed) == 1 and len(report.reduced) == 1
    assert "not verified back" in str(next(iter(report.failed.values())))


def test_job_script_runs_the_entry_point_in_the_configured_image() -> None:
    cfg = SfapiConfig(image="registry.nersc.gov/als/splash:1.0", qos="debug", time_limit="0:10:00")
    manifest: dict[str, Any] = {"version": 1, "root": "/pscratch/als/hpc", "settings": {}, "scans": []}
    script = job_script(cfg, work_dir="/pscratch/als/hpc/.splash-analysis/b1", manifest=manifest)
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    assert "#SBATCH -q debug" in script and "#SBATCH --time=0:10:00" in script
    assert ("srun podman-hpc run --rm --volume /pscratch/als/hpc:/pscratch/als/hpc "
            "registry.nersc.gov/als/splash:1.0 python -m splash_flows.analysis.job") in script


def test_client_construction_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="must be 600"):
        build_sfapi_client(SfapiCredentialsConfig(client_id="abcdefghijklm", key_file=key))
    with pytest.raises(ConfigError, match="top-level sfapi: section"):
        build_sfapi_client(None)
