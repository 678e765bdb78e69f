"""Outputs without pyFAI: the Pillow I(q) plot and frame picture, the .dat format, and write_all's all-or-nothing
durability (nothing under a final name unless every file of the scan was written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splash_flows.analysis import outputs
from splash_flows.analysis.reduce import Frame, Reduction, Settings
from splash_flows.errors import AnalysisError


def _reduction(n: int = 500, shape: tuple[int, int] = (64, 80)) -> Reduction:
    rng = np.random.default_rng(0)
    q = np.linspace(0.05, 5.0, n)
    i = 1.0 / q**2 + rng.random(n) * 0.01
    i[:3] = [0.0, -1.0, np.nan]  # not drawable on log axes: left out
    image = rng.poisson(100, shape).astype(np.float64)
    mask = np.zeros(shape, dtype=bool)
    mask[10:12, :] = True
    frame = Frame(image=image, exposure_s=1.0, monitor_name="Izero", monitor=1.0, alpha_deg=None, merge="single",
                  sources=["x.edf", "x.txt"])
    rings = np.zeros(shape, dtype=bool)
    rings[30, :] = True
    return Reduction(radial=q, intensity=i, sigma=np.sqrt(np.abs(np.nan_to_num(i))) * 0.01, unit="q_nm^-1",
                     frame=frame, poni_text="", result=None, mask=mask, rings=rings)


def test_iq_plot_is_a_png_of_the_stated_size(tmp_path: Path) -> None:
    path = tmp_path / "iq.png"
    outputs.plot_iq(path, _reduction(), title="x")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (480, 336)
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # something was drawn


def test_iq_plot_of_a_curve_without_positive_points_still_writes(tmp_path: Path) -> None:
    red = _reduction()
    red.intensity[:] = 0.0
    outputs.plot_iq(tmp_path / "iq.png", red, title="x")
    assert (tmp_path / "iq.png").read_bytes()[:4] == b"\x89PNG"


def test_log_ticks_are_decades_or_1_2_5() -> None:
    assert outputs._log_ticks(-2.0, 1.0) == [0.01, 0.1, 1.0, 10.0]
    assert outputs._log_ticks(-0.5, 0.5) == pytest.approx([0.5, 1.0, 2.0])


def test_frame_picture_downsamples_and_marks_mask_and_rings(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    outputs.plot_frame(path, _reduction(shape=(100, 160)), title="x", max_size=80)
    with Image.open(path) as img:
        assert img.size == (80, 50) and img.mode == "P"
        rgb = np.asarray(img.convert("RGB"))
    assert (rgb == [255, 255, 255]).all(axis=2).any() and (rgb == [178, 24, 43]).all(axis=2).any()


def test_dat_matches_numpy_savetxt_also_for_a_second_frame_of_the_geometry(tmp_path: Path) -> None:
    first = _reduction(n=20)
    second = _reduction(n=20)  # the same q axis (its text is made once), other intensities
    second.intensity = second.intensity * 3.0
    second.sigma = second.sigma * 0.5
    for k, red in enumerate((first, second)):
        outputs.write_dat(tmp_path / f"{k}.dat", red, stem="x", settings=Settings(), info={"calibration": "c"})
        text = (tmp_path / f"{k}.dat").read_text()
        reference = tmp_path / f"{k}_ref.dat"
        np.savetxt(reference, np.column_stack([red.radial, red.intensity, red.sigma]), fmt="%.8e",
                   header="\n".join(line[2:] for line in text.splitlines() if line.startswith("# ")), comments="# ")
        assert text == reference.read_text()


def test_iq_plot_from_the_kept_q_axis_has_the_pixels_of_one_drawn_whole(tmp_path: Path) -> None:
    red = _reduction()
    outputs._iq_q_axis.cache_clear()
    outputs.plot_iq(tmp_path / "fresh.png", red, title="x")  # q axis drawn for this plot
    outputs.plot_iq(tmp_path / "kept.png", red, title="x")  # q axis copied from the first
    assert outputs._iq_q_axis.cache_info().hits == 1
    assert (tmp_path / "fresh.png").read_bytes() == (tmp_path / "kept.png").read_bytes()
    good = (red.intensity > 0) & (red.radial > 0) & np.isfinite(red.intensity)
    lq = np.log10(red.radial[good])
    axis = np.asarray(outputs._iq_q_axis((480, 336), float(lq.min()), float(lq.max())))
    assert outputs._IQ_LINE not in axis and outputs._IQ_BAND not in axis  # the kept axis is never drawn on


def test_write_all_leaves_no_file_when_one_output_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "write_nxcansas", lambda path, *a, **k: Path(path).write_bytes(b"h5"))

    def broken(path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "plot_frame", broken)
    with pytest.raises(AnalysisError, match=r"x_frame\.png"):
        outputs.write_all(_reduction(), tmp_path / "out", "x", settings=Settings(), info={})
    assert list((tmp_path / "out").iterdir()) == []  # the .h5, .dat, _iq.png written first are not final either


def test_write_all_fsyncs_every_file_before_any_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "write_nxcansas", lambda path, *a, **k: Path(path).write_bytes(b"h5"))
    events: list[str] = []
    real_fsync, real_replace = outputs._fsync, outputs.os.replace
    monkeypatch.setattr(outputs, "_fsync", lambda p: (events.append("fsync"), real_fsync(p)))
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    paths = outputs.write_all(_reduction(), tmp_path, "x", settings=Settings(), info={})
    assert [p.name for p in paths] == outputs.output_names("x", grazing=False)
    assert events == ["fsync"] * 4 + ["rename"] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outputs.output_names("x", grazing=False))


def test_write_all_fsyncs_in_threads_kept_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(outputs, "write_nxcansas", lambda path, *a, **k: Path(path).write_bytes(b"h5"))
    monkeypatch.setattr(outputs, "_FSYNC_POOL", None)
    names: set[str] = set()
    real_fsync = outputs._fsync
    monkeypatch.setattr(outputs, "_fsync", lambda p: (names.add(threading.current_thread().name), real_fsync(p)))
    outputs.write_all(_reduction(), tmp_path / "a", "x", settings=Settings(), info={})
    pool = outputs._fsync_pool()
    outputs.write_all(_reduction(), tmp_path / "b", "x", settings=Settings(), info={})
    assert outputs._fsync_pool() is pool  # the same threads for every scan
    assert names and all(name.startswith("outputs-fsync") for name in names)
    monkeypatch.setattr(outputs.os, "getpid", lambda: -1)  # as in a forked child: the parent's pool has no threads
    assert outputs._fsync_pool() is not pool
    pool.shutdown()


def test_pool_workers_share_the_cores_between_their_openmp_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from splash_flows.analysis import worker_init

    assert worker_init.threads_per_worker(2, cores=2) == 1
    assert worker_init.threads_per_worker(2, cores=8) == 4
    assert worker_init.threads_per_worker(16, cores=2) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the operator's choice is kept
    monkeypatch.setattr(worker_init.os, "cpu_count", lambda: 4)
    worker_init.init_worker(2)
    assert worker_init.os.environ["OMP_NUM_THREADS"] == "2" and worker_init.os.environ["OPENBLAS_NUM_THREADS"] == "3"


def test_qmap_plot_draws_the_map_with_empty_bins_white(tmp_path: Path) -> None:
    from splash_flows.analysis.reduce import GIMap

    red = _reduction()
    q_ip, q_oop = np.linspace(-2.0, 2.0, 50), np.linspace(-0.5, 3.0, 40)
    intensity = np.exp(-np.hypot(*np.meshgrid(q_ip, q_oop)))
    intensity[:, :10] = 0.0  # no pixel in these bins
    intensity[0, 20] = np.nan
    red.gi = GIMap(q_ip=q_ip, q_oop=q_oop, intensity=intensity, incident_angle_deg=0.15, sample_orientation=3,
                   unit_ip="qip_nm^-1", unit_oop="qoop_nm^-1")
    path = tmp_path / "qmap.png"
    outputs.plot_qmap(path, red, title="x")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (480, 400)
        pixels = np.asarray(img.convert("RGB"))
    left, top, right, bottom = 64, 26, 480 - 92, 400 - 46
    inside = pixels[top + 5: bottom - 5, left + 2: right - 2]
    assert (inside[:, :30] == 255).all()  # the empty bins (first fifth of q_ip) are white
    assert len(np.unique(inside[:, 100:].reshape(-1, 3), axis=0)) > 20  # the rest is coloured by intensity


def test_linear_ticks_are_round_and_inside() -> None:
    assert outputs._linear_ticks(-2.0, 2.0) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert outputs._linear_ticks(-0.5, 3.0) == [0.0, 1.0, 2.0, 3.0]
    assert outputs._linear_ticks(0.0, 0.037) == [0.0, 0.01, 0.02, 0.03]
    assert outputs._linear_ticks(1.0, 1.0) == [1.0]


@pytest.mark.parametrize("factor", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_block_mean_with_mask_equals_the_mean_of_the_zeroed_frame(factor: int, dtype: type) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(-2, 1 << 20, (37, 50)).astype(dtype)
    mask = rng.random((37, 50)) < 0.2
    rows, cols = 37 // factor, 50 // factor
    zeroed = np.where(mask, 0, image)[: rows * factor, : cols * factor].astype(np.float64)
    reference = zeroed.reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    small = outputs._block_mean(image, factor, mask)
    assert small.dtype == np.float32 and small.shape == (rows, cols)
    np.testing.assert_allclose(small, reference, rtol=1e-6)
    np.testing.assert_allclose(outputs._block_mean(image, factor),
                               image[: rows * factor, : cols * factor].astype(np.float64)
                               .reshape(rows, factor, cols, factor).mean(axis=(1, 3)), rtol=1e-6)


def test_iq_band_spans_the_curve_plus_minus_sigma(tmp_path: Path) -> None:
    """The error band is painted (its colour present) and covers, at a column, the rows between I - sigma and
    I + sigma, so a wide sigma makes a tall band."""
    q = np.linspace(0.1, 10.0, 2000)
    frame = Frame(image=np.zeros((4, 4)), exposure_s=1.0, monitor_name="Izero", monitor=1.0, alpha_deg=None,
                  merge="single", sources=["x.edf"])

    def band_height(rel_sigma: float) -> int:
        i = np.full_like(q, 10.0)
        i[::2] = 1.0  # a range of a decade, so the y axis does not depend on sigma alone
        red = Reduction(radial=q, intensity=i, sigma=i * rel_sigma, unit="q_nm^-1", frame=frame, poni_text="",
                        result=None, mask=np.zeros((4, 4), dtype=bool))
        path = tmp_path / f"band{rel_sigma}.png"
        outputs.plot_iq(path, red, title="x")
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        column = rgb[:, rgb.shape[1] // 2]
        return int((column == outputs._BAND).all(axis=1).sum())

    assert band_height(0.5) > band_height(0.01) >= 0
    assert band_height(0.5) > 10


def test_iq_plot_is_a_palette_png_with_anti_aliased_text(tmp_path: Path) -> None:
    """The palette PNG keeps the plot's colours exact and its text anti-aliased (greys between black and white,
    not just the two)."""
    path = tmp_path / "iq.png"
    outputs.plot_iq(path, _reduction(), title="a title with letters")
    with Image.open(path) as img:
        assert img.mode == "P"
        rgb = np.asarray(img.convert("RGB"))
    colours = {tuple(int(c) for c in v) for v in np.unique(rgb.reshape(-1, 3), axis=0)}
    assert {outputs._LINE, outputs._GRID, (0, 0, 0), (255, 255, 255)} <= colours
    greys = {c for c in colours if c[0] == c[1] == c[2] and 0 < c[0] < 255 and c != outputs._GRID}
    assert len(greys) > 10
