"""Shared pieces of the analysis tests: a small detector geometry, frames and sidecars on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from splash_flows.beamlines.bl733.edf import write_edf
from splash_flows.beamlines.bl733.simulator import render_sidecar

WAVELENGTH_M = 1.2398e-10  # 10 keV
PIXEL_M = 172e-6
SHAPE = (800, 800)
BEAM = (420.0, 400.0)  # (row, column) of the beam in pixels
DIST_M = 1.0
#: q of the AgBh orders 1..3 at any wavelength: 2 pi / d, d = 58.38, 29.19, 19.46 Angstrom (in nm^-1).
AGBH_Q = (2 * np.pi / 5.838, 2 * np.pi / 2.919, 2 * np.pi / 1.946)


def integrator(shape: tuple[int, int] = SHAPE, beam: tuple[float, float] = BEAM):  # type: ignore[no-untyped-def]
    """A flat 172 um detector of ``shape`` at 2 m, beam at ``beam`` (pixels), 10 keV: a known geometry."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    detector = Detector(pixel1=PIXEL_M, pixel2=PIXEL_M, max_shape=shape)
    return AzimuthalIntegrator(dist=DIST_M, poni1=beam[0] * PIXEL_M, poni2=beam[1] * PIXEL_M, detector=detector,
                               wavelength=WAVELENGTH_M)


def poni_text(shape: tuple[int, int] = SHAPE, beam: tuple[float, float] = BEAM) -> str:
    from splash_flows.analysis.reduce import poni_text_of

    return poni_text_of(integrator(shape, beam))


def agbh_counts(seconds: float = 10.0, seed: int = 0) -> npt.NDArray[np.int32]:
    """pyFAI's synthetic AgBh calibration image for the known geometry, as Poisson counts."""
    from pyFAI.calibrant import get_calibrant

    calibrant = get_calibrant("AgBh")
    calibrant.wavelength = WAVELENGTH_M
    rings = np.asarray(calibrant.fake_calibration_image(integrator(), resolution=0.05), dtype=np.float64)
    rng = np.random.default_rng(seed)
    return rng.poisson((200.0 * rings + 5.0) * seconds).astype(np.int32)


def write_exposure(folder: Path, stem: str, counts: npt.NDArray[np.generic], *, seconds: float = 10.0,
                   alpha: float = 0.0, diode: float = 10440.0, normalize_by: str = "Diode",
                   date: str = "Mon Mar  2 10:00:00 2026") -> tuple[Path, Path]:
    """``<stem>.edf`` and ``<stem>.txt`` as the beamline writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    edf = folder / f"{stem}.edf"
    write_edf(edf, counts, {"HeaderID": "EH:000001:000000:000000", "Image": "1", "ByteOrder": "LowByteFirst",
                            "DataType": "SignedInteger", "Dim_1": "", "Dim_2": "", "Date": date,
                            "count_time": f"{seconds:.9f}"})
    overrides: dict[str, float | str] = {"Exposure time s": seconds, "Sample Alpha Stage": alpha,
                                         "Diode normalization": diode, "Normalize by": normalize_by}
    txt = folder / f"{stem}.txt"
    txt.write_text(render_sidecar(overrides, (401.0, diode, 235561.0)), encoding="ascii")
    return edf, txt
