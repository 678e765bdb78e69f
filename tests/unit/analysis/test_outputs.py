"""The files a reduction writes: NXcanSAS read back with h5py, the .dat, the PNGs; the job entry point."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from splash_flows.analysis.job import ScanJob, main, read_results, run_scan, write_manifest
from splash_flows.analysis.outputs import output_names
from splash_flows.analysis.reduce import Settings
from tests.unit.analysis.helpers import AGBH_Q, agbh_counts, poni_text, write_exposure

PNG = b"\x89PNG\r\n\x1a\n"


def _job(stem: str, *, alpha: float = 0.0) -> ScanJob:
    return ScanJob(scan_key=f"p/{stem}", folder="p", stem=stem, kind="exposure",
                   files={"edf": f"p/{stem}.edf", "txt": f"p/{stem}.txt"}, poni_text=poni_text(),
                   calibration="#1 test")


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("root")
    write_exposure(root / "p", "gi_0001_2m", agbh_counts(), alpha=0.15)
    outcome = run_scan(root, _job("gi_0001_2m"), Settings(gi_npt=200))
    assert outcome.ok, outcome.error
    return root, [o.path for o in outcome.outputs]


def test_outputs_are_named_and_complete(reduced: tuple[Path, list[str]]) -> None:
    root, paths = reduced
    assert paths == [f"p/reduced/{n}" for n in output_names("gi_0001_2m", grazing=True)]
    for path in paths:
        assert (root / path).stat().st_size > 0
    assert not list((root / "p" / "reduced").glob(".*"))  # no temporary file left behind


def test_nxcansas_attributes_read_back_with_h5py(reduced: tuple[Path, list[str]]) -> None:
    root, _ = reduced
    with h5py.File(root / "p/reduced/gi_0001_2m.h5", "r") as h5:
        entry = h5["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["canSAS_class"] == "SASentry"
        assert entry["definition"][()].decode() == "NXcanSAS"
        data = entry[entry.attrs["default"]]
        assert data.attrs["canSAS_class"] == "SASdata" and data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "I" and data.attrs["I_axes"] == "Q"
        assert data["Q"].attrs["units"] == "1/nm" and data["I"].attrs["uncertainties"] == "Idev"
        q, i, idev = data["Q"][()], data["I"][()], data["Idev"][()]
        assert len(q) == len(i) == len(idev) == 2000
        peak = q[(q > 0.9) & (q < 1.25)][np.argmax(i[(q > 0.9) & (q < 1.25)])]
        assert abs(peak - AGBH_Q[0]) / AGBH_Q[0] < 0.005
        for name in ("I", "Q", "Idev"):  # reduced data must not be external links
            assert isinstance(data.get(name, getlink=True), h5py.HardLink)
        instrument = next(v for v in entry.values() if v.attrs.get("canSAS_class") == "SASinstrument")
        detector = next(v for v in instrument.values() if v.attrs.get("canSAS_class") == "SASdetector")
        assert detector["SDD"][()] == pytest.approx(1.0) and detector["SDD"].attrs["units"] == "m"
        assert "Wavelength" in entry["splash_reduction/poni"][()].decode()
        note = json.loads(entry["splash_reduction/data"][()])
        assert note["monitor"] == "Diode normalization" and note["exposure_s"] == 10.0
        assert {"pyFAI", "numpy", "h5py", "splash-flows"} <= set(note["software"])
        assert json.loads(entry["pyFAI/poni/data"][()])["dist"] == pytest.approx(1.0)
        qmap = entry["qmap"]
        assert qmap.attrs["NX_class"] == "NXdata" and qmap["I"].shape == (200, 200)
        assert qmap.attrs["incident_angle_deg"] == pytest.approx(0.15)


def test_dat_has_three_columns_and_a_commented_header(reduced: tuple[Path, list[str]]) -> None:
    root, _ = reduced
    path = root / "p/reduced/gi_0001_2m.dat"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("columns: q [q_nm^-1]  I" in line for line in header)
    assert any("calibration: #1 test" in line for line in header)
    data = np.loadtxt(path)
    assert data.shape == (2000, 3)


def test_pngs_are_pngs(reduced: tuple[Path, list[str]]) -> None:
    root, paths = reduced
    for path in paths:
        if path.endswith(".png"):
            assert (root / path).read_bytes()[:8] == PNG


def test_job_entry_point_reduces_a_manifest_and_reports_each_scan(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_exposure(tmp_path / "p", "ok_2m", agbh_counts())
    edf, _ = write_exposure(tmp_path / "p", "cut_2m", agbh_counts())
    edf.write_bytes(edf.read_bytes()[:40_000])
    manifest = tmp_path / "m.json"
    write_manifest(manifest, str(tmp_path), [_job("cut_2m"), _job("ok_2m")], Settings(npt=300))
    assert main([str(manifest)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "p/cut_2m" in err and "truncated" in err
    outcomes = read_results(manifest.with_suffix(".results.json"))
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[1].outputs and all(len(o.checksum) == 32 for o in outcomes[1].outputs)


def test_nxcansas_files_made_from_one_template_hold_each_frames_own_values(tmp_path: Path) -> None:
    """Every frame of a geometry starts from the same in-memory template: each file must still carry its own
    curve, names and times, and a frame written later must not change one written earlier."""
    counts = agbh_counts()
    write_exposure(tmp_path / "p", "first_2m", counts)
    write_exposure(tmp_path / "p", "second scan", counts * 3, diode=5220.0)
    settings = Settings(npt=300)
    first = run_scan(tmp_path, _job("first_2m"), settings)
    before = (tmp_path / "p/reduced/first_2m.h5").read_bytes()
    second = run_scan(tmp_path, _job("second scan"), settings)
    assert first.ok and second.ok, (first.error, second.error)
    assert (tmp_path / "p/reduced/first_2m.h5").read_bytes() == before
    curves = {}
    for stem, sample in (("first_2m", "first_2m"), ("second scan", "second_scan")):
        q, i, sigma = np.loadtxt(tmp_path / f"p/reduced/{stem}.dat", unpack=True)
        with h5py.File(tmp_path / f"p/reduced/{stem}.h5", "r") as h5:
            entry = h5["entry"]
            assert entry["run"][()].decode() == stem and entry["title"][()].decode() == f"7.3.3 {stem}"
            assert entry[sample].attrs["canSAS_class"] == "SASsample" and "sample" not in entry
            assert entry[f"{sample}/name"][()].decode() == sample
            assert json.loads(entry["splash_reduction/data"][()])["scan"] == stem
            data = entry["sasdata"]
            assert data.attrs["timestamp"] == entry["start_time"][()].decode()
            np.testing.assert_allclose(data["Q"][()], q, rtol=1e-7)
            np.testing.assert_allclose(data["I"][()], i, rtol=1e-7)
            np.testing.assert_allclose(data["Idev"][()], sigma, rtol=1e-7)
            curves[stem] = data["sum_signal"][()]
    np.testing.assert_allclose(curves["second scan"], curves["first_2m"] * 3, rtol=1e-6)
