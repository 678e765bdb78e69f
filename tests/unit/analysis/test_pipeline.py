"""Running many scans: the pipelined ``run_scans`` (next frame integrated while the last one is written), the
local pool's chunks and start-up, and the demo's check that every reduced scan's results are on disk."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from splash_flows.analysis import job as job_mod
from splash_flows.analysis.backends import local
from splash_flows.analysis.job import ScanJob, ScanOutcome, run_scans
from splash_flows.analysis.outputs import output_names
from splash_flows.analysis.reduce import Integrators, Settings
from splash_flows.cli.demo import missing_outputs
from splash_flows.errors import AnalysisError
from tests.unit.analysis.helpers import agbh_counts, poni_text, write_exposure


def _job(stem: str, poni: str = "") -> ScanJob:
    return ScanJob(scan_key=f"p/{stem}", folder="p", stem=stem, kind="exposure",
                   files={"edf": f"p/{stem}.edf", "txt": f"p/{stem}.txt"}, poni_text=poni, calibration="#1 test")


def test_run_scans_writes_in_a_second_thread_keeps_order_and_isolates_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str, str]] = []

    def reduce(root: Path, job: ScanJob, settings: Settings, integrators: Integrators) -> str:
        events.append(("reduce", job.stem, threading.current_thread().name))
        if job.stem == "bad":
            raise AnalysisError("truncated EDF: 10 bytes, need 9,904,896", scan=job.scan_key)
        return job.stem

    def write(root: Path, job: ScanJob, settings: Settings, reduction: str, started: float) -> ScanOutcome:
        events.append(("write", job.stem, threading.current_thread().name))
        if job.stem == "unwritable":
            raise OSError(28, "No space left on device")
        return ScanOutcome(job.scan_key, True)

    monkeypatch.setattr(job_mod, "_reduce", reduce)
    monkeypatch.setattr(job_mod, "_write", write)
    seen: list[str] = []
    jobs = [_job(stem) for stem in ("a", "bad", "b", "unwritable", "c")]
    outcomes = run_scans(tmp_path, jobs, Settings(), Integrators(), progress=lambda o: seen.append(o.scan_key))
    assert [o.scan_key for o in outcomes] == [j.scan_key for j in jobs] == seen
    assert [o.ok for o in outcomes] == [True, False, True, False, True]
    assert outcomes[1].error == "truncated EDF: 10 bytes, need 9,904,896"
    assert outcomes[3].error == "OSError: [Errno 28] No space left on device"
    main = threading.current_thread().name
    assert {name for kind, _, name in events if kind == "reduce"} == {main}
    assert all(name.startswith("reduce-writer") for kind, _, name in events if kind == "write")
    assert [stem for kind, stem, _ in events if kind == "write"] == ["a", "b", "unwritable", "c"]


def test_chunks_are_consecutive_about_two_per_worker_and_bounded() -> None:
    jobs = [_job(f"s{i}") for i in range(40)]
    parts = local.chunks(jobs, 2)
    assert [j for part in parts for j in part] == jobs
    assert {len(p) for p in parts} == {local.MAX_CHUNK}
    assert [len(p) for p in local.chunks(jobs[:16], 2)] == [4, 4, 4, 4]
    assert [len(p) for p in local.chunks(jobs[:3], 2)] == [1, 1, 1]


@pytest.fixture
def pool_shutdown() -> Iterator[None]:
    yield
    local.shutdown_pools()


def test_local_pool_reduces_chunks_in_order_with_one_scan_failing(tmp_path: Path, pool_shutdown: None) -> None:
    poni = poni_text()
    for stem in ("a_0001", "c_0003"):
        write_exposure(tmp_path / "p", stem, agbh_counts())
    edf, _ = write_exposure(tmp_path / "p", "b_0002", agbh_counts())
    edf.write_bytes(edf.read_bytes()[:4096])  # truncated: that scan's error only
    jobs = [_job(stem, poni) for stem in ("a_0001", "b_0002", "c_0003")]
    seen: list[str] = []
    outcomes = local.LocalBackend(tmp_path, workers=2).run(jobs, Settings(npt=300, gi_npt=64),
                                                           progress=lambda o: seen.append(o.scan_key))
    assert [o.scan_key for o in outcomes] == seen == [j.scan_key for j in jobs]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "truncated" in (outcomes[1].error or "")
    for outcome, stem in ((outcomes[0], "a_0001"), (outcomes[2], "c_0003")):
        assert [o.path for o in outcome.outputs] == [f"p/reduced/{n}" for n in output_names(stem, grazing=False)]
        assert all((tmp_path / o.path).stat().st_size == o.size for o in outcome.outputs)


def test_worker_start_up_prepares_the_batch_geometries_and_survives_a_bad_one(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    from splash_flows.analysis import worker_init

    fresh = Integrators()
    monkeypatch.setattr(job_mod, "_INTEGRATORS", fresh)
    worker_init.init_worker(1, (poni_text(), "not a poni"), Settings(npt=300).as_dict())
    assert fresh.built == 1  # the good geometry, built once; the bad one left to its scans to report
    ai = fresh.azimuthal(poni_text())
    assert fresh.built == 1
    assert "q_center" in ai._cached_array  # pyFAI's per-pixel q: computed at start-up, not on the first frame
    assert len(fresh._masks) == 2  # the static mask and the calibrant's rings


def test_demo_names_a_reduced_scan_whose_results_are_not_on_disk(tmp_path: Path) -> None:
    names = output_names("s_0001", grazing=True)
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    paths = list(names)
    assert missing_outputs(tmp_path, "s_0001", paths) == []
    (tmp_path / "s_0001_frame.png").unlink()
    assert missing_outputs(tmp_path, "s_0001", paths) == ["s_0001_frame.png"]
    assert missing_outputs(tmp_path, "s_0001", paths[:1]) == ["s_0001.dat", "s_0001_iq.png", "s_0001_frame.png"]
