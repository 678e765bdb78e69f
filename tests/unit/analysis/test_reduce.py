"""Reduction of single frames with pyFAI: calibrant peaks, normalisation, grazing incidence, hi/lo merges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splash_flows.analysis.reduce import (
    Frame,
    Integrators,
    Settings,
    load_hilo,
    load_single,
    merge_hilo,
    monitor_of,
    reduce_frame,
)
from splash_flows.beamlines.bl733.edf import write_edf
from splash_flows.beamlines.bl733.sidecar import parse_sidecar_text
from splash_flows.beamlines.bl733.simulator import render_sidecar
from splash_flows.errors import AnalysisError
from tests.unit.analysis.helpers import AGBH_Q, BEAM, DIST_M, PIXEL_M, SHAPE, agbh_counts, poni_text, write_exposure

#: Stated tolerance of a calibrant peak position: 0.5 % of q (2 bins of 2000 at these q).
PEAK_TOLERANCE = 0.005


def _peak(q: np.ndarray, i: np.ndarray, near: float, window: float = 0.15) -> float:
    sel = (q > near - window) & (q < near + window)
    return float(q[sel][np.argmax(i[sel])])


@pytest.fixture(scope="module")
def agbh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("agbh")
    write_exposure(folder, "AgBh_cal_0001_2m", agbh_counts())
    return folder


def test_agbh_frame_integrates_to_calibrant_peaks(agbh: Path) -> None:
    frame = load_single(agbh, "AgBh_cal_0001_2m.edf", "AgBh_cal_0001_2m.txt")
    red = reduce_frame(frame, poni_text(), Settings(beamstop_radius_mm=3.0), Integrators())
    assert red.unit == "q_nm^-1" and len(red.radial) == 2000
    for expected in AGBH_Q:
        found = _peak(red.radial, red.intensity, expected)
        assert abs(found - expected) / expected < PEAK_TOLERANCE, (expected, found)
    good = red.intensity > 0
    assert np.all(red.sigma[good] > 0) and np.all(np.isfinite(red.sigma))
    # Poisson: relative error ~ 1/sqrt(counts in the bin), far below 1 on a ring
    ring = np.argmin(np.abs(red.radial - AGBH_Q[0]))
    assert red.sigma[ring] / red.intensity[ring] < 0.05


def test_normalised_by_exposure_and_the_sidecars_monitor(tmp_path: Path) -> None:
    counts = agbh_counts(seconds=1.0)
    write_exposure(tmp_path, "a", counts, seconds=1.0, diode=1000.0)
    write_exposure(tmp_path, "b", counts, seconds=2.0, diode=2000.0)  # twice as long: twice the monitor counts
    write_exposure(tmp_path, "c", counts, seconds=1.0, diode=4000.0)  # four times the flux
    integrators = Integrators()
    poni = {s: poni_text() for s in "abc"}  # written at different times: same geometry, other comment lines
    out = {s: reduce_frame(load_single(tmp_path, f"{s}.edf", f"{s}.txt"), poni[s], Settings(), integrators)
           for s in "abc"}
    ring = np.argmin(np.abs(out["a"].radial - AGBH_Q[0]))
    assert out["b"].intensity[ring] == pytest.approx(out["a"].intensity[ring] / 2, rel=1e-9)
    assert out["c"].intensity[ring] == pytest.approx(out["a"].intensity[ring] / 4, rel=1e-9)
    assert out["a"].frame.monitor_name == "Diode normalization"
    assert integrators.built == 1  # one integrator for the one geometry, reused by every frame
    # a monitor that is a rate is multiplied by the exposure time
    rate = Settings(monitor_kind="rate")
    a = reduce_frame(load_single(tmp_path, "a.edf", "a.txt", rate), poni["a"], rate, integrators)
    b = reduce_frame(load_single(tmp_path, "b.edf", "b.txt", rate), poni["a"], rate, integrators)
    assert b.intensity[ring] == pytest.approx(a.intensity[ring] / 4, rel=1e-9)


def test_monitor_named_by_normalize_by() -> None:
    text = render_sidecar({"Normalize by": "I1"}, (401.0, 10440.0, 235561.0))
    assert monitor_of(parse_sidecar_text(text, source="x.txt")) == ("I1 normalization", 235561.0)
    text = render_sidecar({"Normalize by": "Izero"}, (401.0, 10440.0, 235561.0))
    assert monitor_of(parse_sidecar_text(text, source="x.txt")) == ("Izero", 401.0)
    for bad in ("Nothing", ""):
        text = render_sidecar({"Normalize by": bad}, (401.0, 10440.0, 235561.0))
        with pytest.raises(AnalysisError, match=r"x\.txt"):
            monitor_of(parse_sidecar_text(text, source="x.txt"))
    zero = render_sidecar({}, (401.0, 0.0, 235561.0))
    with pytest.raises(AnalysisError, match="cannot normalise"):
        monitor_of(parse_sidecar_text(zero, source="x.txt"))


def test_mask_covers_gaps_negative_pixels_and_beamstop() -> None:
    image = np.full(SHAPE, 100.0)
    image[10:20, :] = -1  # a module gap as the detector writes it
    frame = Frame(image=image, exposure_s=1.0, monitor_name="Diode normalization", monitor=1.0, alpha_deg=0.0,
                  merge="single", sources=["x.edf"])
    red = reduce_frame(frame, poni_text(), Settings(beamstop_radius_mm=5.0), Integrators())
    assert red.mask[10:20, :].all()
    row, col = int(BEAM[0]), int(BEAM[1])
    assert red.mask[row, col] and red.mask[row, col + int(4.9e-3 / PIXEL_M)]
    assert not red.mask[row, col + int(5.5e-3 / PIXEL_M)]
    good = red.intensity > 0
    assert np.allclose(red.intensity[good], red.intensity[good].mean(), rtol=0.02)  # flat in, flat out


def _gi_frame(alpha: float) -> Frame:
    image = np.ones(SHAPE)
    row, col = int(BEAM[0]) - 100, int(BEAM[1])
    image[row - 1:row + 2, col - 1:col + 2] += 5000.0  # a spot 100 px above the beam as the frame is displayed
    return Frame(image=image, exposure_s=1.0, monitor_name="Diode normalization", monitor=1.0, alpha_deg=alpha,
                 merge="single", sources=["gi.edf"])


@pytest.mark.parametrize("alpha", [0.12, 0.3])
def test_grazing_incidence_map_puts_a_known_feature_at_its_q_oop(alpha: float) -> None:
    settings = Settings(npt=500, beamstop_radius_mm=0.0, gi_npt=1500)
    red = reduce_frame(_gi_frame(alpha), poni_text(), settings, Integrators())
    assert red.gi is not None and red.gi.incident_angle_deg == alpha
    weights = np.nan_to_num(red.gi.intensity) - 10.0  # the flat background is ~1, the spot thousands
    weights[weights < 0] = 0
    q_oop = float((weights.sum(axis=1) * red.gi.q_oop).sum() / weights.sum())
    q_ip = float((weights.sum(axis=0) * red.gi.q_ip).sum() / weights.sum())
    k = 2 * np.pi / 0.12398  # nm^-1
    two_theta_v = np.arctan(100.0 * PIXEL_M / DIST_M)
    a = np.deg2rad(alpha)
    expected = k * (np.sin(two_theta_v - a) + np.sin(a))  # q_z = k (sin alpha_f + sin alpha_i)
    assert q_oop > 0  # above the beam is out of plane, upwards
    assert abs(q_oop - expected) / expected < 0.01, (q_oop, expected)
    assert abs(q_ip) < 0.01


def test_one_fibre_integrator_per_incident_angle_never_reused_across_angles() -> None:
    integrators = Integrators()
    poni = poni_text()
    first = integrators.fiber(poni, 0.12)
    assert integrators.fiber(poni, 0.12) is first
    other = integrators.fiber(poni, 0.2)
    assert other is not first
    settings = Settings(npt=200, beamstop_radius_mm=0.0, gi_npt=200)
    reduce_frame(_gi_frame(0.12), poni, settings, integrators)
    assert integrators.fiber(poni, 0.12) is first and first.incident_angle == pytest.approx(np.deg2rad(0.12))
    assert other.incident_angle in (0.0, pytest.approx(np.deg2rad(0.2)))


def _fresh_fiber_map(frame: Frame, poni: str, settings: Settings, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """The map pyFAI gives with a new, untouched ``FiberIntegrator`` of the geometry (nothing shared, nothing kept)."""
    from pyFAI.integrator.fiber import FiberIntegrator

    base = Integrators().azimuthal(poni)
    fi = FiberIntegrator(dist=base.dist, poni1=base.poni1, poni2=base.poni2, rot1=base.rot1, rot2=base.rot2,
                         rot3=base.rot3, detector=base.detector, wavelength=base.wavelength)
    res = fi.integrate2d_grazing_incidence(
        frame.image, npt_ip=settings.gi_npt, npt_oop=settings.gi_npt, incident_angle=frame.alpha_deg,
        tilt_angle=0.0, sample_orientation=settings.gi_sample_orientation, angle_unit="deg", mask=mask,
        method=("no", "histogram", "cython"), normalization_factor=frame.normalization)
    return np.asarray(res.intensity), np.asarray(res.inplane), np.asarray(res.outofplane)


@pytest.mark.parametrize("orientation", [3, 2])
def test_shared_geometry_gives_the_maps_of_a_fresh_fibre_integrator_bit_for_bit(orientation: int) -> None:
    """Positions and solid angles computed once per geometry and shared across angles: each angle's map equals,
    bit for bit, the one of a new ``FiberIntegrator`` that computes everything itself."""
    integrators = Integrators()
    poni = poni_text()
    settings = Settings(npt=300, beamstop_radius_mm=2.0, gi_npt=300, gi_sample_orientation=orientation)
    rng = np.random.default_rng(7)
    for alpha in (0.12, 0.3, 0.12, 0.17):  # a new angle, another, the first again (kept), a third
        frame = _gi_frame(alpha)
        frame.image = frame.image + rng.poisson(50.0, SHAPE)
        red = reduce_frame(frame, poni, settings, integrators)
        assert red.gi is not None
        intensity, q_ip, q_oop = _fresh_fiber_map(frame, poni, settings, red.mask)
        assert np.array_equal(red.gi.intensity, intensity, equal_nan=True)
        assert np.array_equal(red.gi.q_ip, q_ip) and np.array_equal(red.gi.q_oop, q_oop)
        fi = integrators.fiber(poni, alpha, orientation)
        # the first call kept what was prepared: no reset by pyFAI, the geometry's arrays are the shared ones
        assert fi._cached_array["solid_angle#3.0"] is integrators.azimuthal(poni)._cached_array["solid_angle#3.0"]
        assert fi.position_array(SHAPE) is integrators.positions(poni)
    assert integrators.built == 4  # one azimuthal integrator, three fibre integrators (0.12 was kept)


def test_a_prepared_geometry_reduces_to_the_numbers_of_a_fresh_one() -> None:
    """``Integrators.prepare`` (a pool worker's start-up) only fills caches earlier."""
    poni = poni_text()
    settings = Settings(npt=300, beamstop_radius_mm=2.0, gi_npt=200)
    prepared = Integrators()
    prepared.prepare(poni, settings)
    for alpha in (0.0, 0.2):
        a = reduce_frame(_gi_frame(alpha), poni, settings, prepared)
        b = reduce_frame(_gi_frame(alpha), poni, settings, Integrators())
        for x, y in ((a.radial, b.radial), (a.intensity, b.intensity), (a.sigma, b.sigma), (a.mask, b.mask)):
            assert np.array_equal(x, y, equal_nan=True)
        assert (a.gi is None) == (b.gi is None) == (alpha == 0.0)
        if a.gi is not None and b.gi is not None:
            assert np.array_equal(a.gi.intensity, b.gi.intensity, equal_nan=True)


def test_shared_positions_are_pyfais_and_read_only() -> None:
    integrators = Integrators()
    poni = poni_text()
    pos = integrators.positions(poni)
    assert integrators.positions(poni) is pos and not pos.flags.writeable
    assert np.array_equal(pos, Integrators().azimuthal(poni).position_array(SHAPE, corners=False))
    fi = integrators.fiber(poni, 0.2)
    corners = fi.position_array(SHAPE, corners=True)  # anything but the centres is pyFAI's own computation
    assert corners.shape == (*SHAPE, 4, 3)


def test_transmission_frame_has_no_map() -> None:
    red = reduce_frame(_gi_frame(0.0), poni_text(), Settings(npt=200), Integrators())
    assert red.gi is None


def test_own_hilo_merge_takes_saturated_pixels_from_lo() -> None:
    hi = np.array([[10.0, 2000.0, -1.0]])
    lo = np.array([[1.0, 150.0, -1.0]])
    merged, variance = merge_hilo(hi, lo, ratio=10.0, saturation=1000)
    assert merged.tolist() == [[10.0, 1500.0, -1.0]]
    assert variance.tolist() == [[10.0, 150.0 * 100.0, 0.0]]


def _hilo(folder: Path, *, gb: bool, gb_bytes: bytes | None = None) -> dict[str, str]:
    counts = agbh_counts(seconds=1.0)
    hi = np.minimum(counts * 10, 2000).astype(np.int32)
    write_exposure(folder, "s_hi_2m", hi, seconds=10.0, diode=10000.0)
    write_exposure(folder, "s_lo_2m", counts, seconds=1.0, diode=1000.0)
    files = {"hi_edf": "s_hi_2m.edf", "hi_txt": "s_hi_2m.txt", "lo_edf": "s_lo_2m.edf", "lo_txt": "s_lo_2m.txt"}
    if gb:
        data = gb_bytes if gb_bytes is not None else (counts * 10).astype("<f4").tobytes()
        (folder / "s_sfloat_2m.gb").write_bytes(data)
        files["gb"] = "s_sfloat_2m.gb"
    return files


def test_hilo_uses_the_beamline_gb_merge_when_present(tmp_path: Path) -> None:
    frame = load_hilo(tmp_path, _hilo(tmp_path, gb=True), Settings(saturation_counts=2000))
    assert frame.merge == "gb" and frame.exposure_s == 10.0 and frame.monitor == 10000.0
    assert frame.sources[0] == "s_sfloat_2m.gb"


def test_hilo_merges_itself_without_gb_or_with_a_bad_one(tmp_path: Path) -> None:
    own = load_hilo(tmp_path / "a", _hilo(tmp_path / "a", gb=False), Settings(saturation_counts=2000))
    assert own.merge == "own" and own.variance is not None
    assert any("no beamline .gb" in n for n in own.notes)
    bad = load_hilo(tmp_path / "b", _hilo(tmp_path / "b", gb=True, gb_bytes=b"\0" * 100),
                    Settings(saturation_counts=2000))
    assert bad.merge == "own" and any(".gb merge not used" in n for n in bad.notes)
    # the merge restores what saturation cut off: hi counts were capped at 2000, lo x ratio brings them back
    counts = agbh_counts(seconds=1.0)
    expected = counts * 10.0
    assert np.allclose(own.image, expected)


def test_truncated_frame_is_one_clear_error(tmp_path: Path) -> None:
    edf, _ = write_exposure(tmp_path, "t", agbh_counts())
    edf.write_bytes(edf.read_bytes()[:50_000])
    with pytest.raises(AnalysisError, match="truncated"):
        load_single(tmp_path, "t.edf", "t.txt")


def test_frame_of_another_detector_is_refused() -> None:
    frame = Frame(image=np.ones((10, 10)), exposure_s=1.0, monitor_name="Diode normalization", monitor=1.0,
                  alpha_deg=0.0, merge="single", sources=["x.edf"])
    with pytest.raises(AnalysisError, match="does not match"):
        reduce_frame(frame, poni_text(), Settings(), Integrators())


def test_edf_written_by_the_project_reader_is_what_fabio_reads(tmp_path: Path) -> None:
    """The reduction reads EDF with the project's reader (one reader in the project); fabio agrees with it."""
    import fabio

    data = agbh_counts()
    write_edf(tmp_path / "x.edf", data, {})
    assert np.array_equal(fabio.open(str(tmp_path / "x.edf")).data, data)
