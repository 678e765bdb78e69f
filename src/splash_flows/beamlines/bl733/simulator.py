"""Write realistic 7.3.3 acquisitions to disk, for demos and tests (no beamline, no downloads).

What a simulated scan looks like:

- ``<data_root>/<proposal>/<YYYYMMDD>/<sample>_<HHMMSS>_<nnnn>_2m.edf`` + ``.txt`` (one exposure), or for
  every ``hi_lo_every``-th scan ``<scan>_hi_2m.edf/.txt``, ``<scan>_lo_2m.edf/.txt`` and
  ``<scan>_sfloat_2m.gb``; every ``autoexpose_every``-th scan is an ``autoexpose_...`` alignment frame instead
  (not to be catalogued). ``YYYYMMDD``/``HHMMSS`` are the local date/time at the beamline (``zone``) of
  ``when``.
- EDF: int32 little endian, 1475 x 1679 (``small=True``: 64 x 64), the header keys of ``DATA-FORMAT.md``,
  ``Date`` in ctime style, local time in ``zone``. Pixels: a silver-behenate (AgBh) ring pattern synthesised
  by pyFAI for a Pilatus 2M at 2 m and 10 keV, plus diffuse small-angle background, a beamstop shadow, module
  gaps at -1 and Poisson noise per scan.
- Sidecar: exactly the layout of the real sample (same keys, counters, number formats, ``!0`` at the end);
  the proposal, ESAF (``<proposal>-001``), PI, exposure time, counters, beam current and sample stage values
  vary per scan.
- Each file is written as ``.<name>.part`` in the same folder and renamed when complete, as a detector
  finishing a write would make it appear.

Deterministic: the same ``seed`` and ``when`` (and other arguments) give byte-identical files. With
``when=None`` the current time is used, so only names and dates change between runs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from splash_flows.beamlines.bl733._sidecar_template import SIDECAR_TEMPLATE
from splash_flows.beamlines.bl733.edf import DEFAULT_ZONE, PILATUS2M_SHAPE, beamline_zone, edf_bytes
from splash_flows.beamlines.bl733.sidecar import LEADING_NAMES, parse_sidecar_text

#: Frame shape with ``small=True``.
SMALL_SHAPE: tuple[int, int] = (64, 64)
#: Prefix/suffix of the temporary name a file has while being written.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".part"

_PIXEL_M = 172e-6
_WAVELENGTH_M = 1.2398e-10  # 10 keV
_DIST_M = 2.0  # AgBh orders 1..6 fit on the 2M with the beam a little below centre
_BEAM_FRACTION = (0.55, 0.5)  # beam centre as a fraction of (rows, columns)
_PILATUS_MAX = (1 << 20) - 1  # 20-bit counters saturate here
_SAMPLES = ("AgBh_cal", "PS-b-PMMA_film", "P3HT_anneal", "water_blank", "SiO2_np")
_EXPOSURES_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_OVERHEAD_S = 3.0  # between two exposures


@dataclass(frozen=True)
class _Frame:
    """Expected counts per second per pixel, and where the module gaps are."""

    rate: npt.NDArray[np.float64]
    gaps: npt.NDArray[np.bool_]


def simulated_integrator(small: bool = False) -> Any:
    """The pyFAI ``AzimuthalIntegrator`` of the simulated beamline: a Pilatus 2M (``small``: 64 x 64 coarse
    pixels over the same area) at 2 m, 10 keV, beam a little below the centre. Its PONI is the calibration that
    reduces simulated frames (``simulated_poni``); the demo records it with ``calibration add``."""
    import pyFAI  # imported here: pyFAI is slow to import and only the simulator needs it
    from pyFAI.detectors import Detector

    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:  # pyFAI < 2024.x
        from pyFAI.azimuthalIntegrator import AzimuthalIntegrator

    shape = SMALL_SHAPE if small else PILATUS2M_SHAPE
    if small:
        # same physical area as the 2M with coarse pixels, so the rings look alike
        p1 = _PIXEL_M * PILATUS2M_SHAPE[0] / shape[0]
        p2 = _PIXEL_M * PILATUS2M_SHAPE[1] / shape[1]
        detector = Detector(pixel1=p1, pixel2=p2, max_shape=shape)
    else:
        detector = pyFAI.detector_factory("Pilatus2M")
        p1 = p2 = _PIXEL_M
    poni1, poni2 = _BEAM_FRACTION[0] * shape[0] * p1, _BEAM_FRACTION[1] * shape[1] * p2
    return AzimuthalIntegrator(dist=_DIST_M, poni1=poni1, poni2=poni2, detector=detector,
                               wavelength=_WAVELENGTH_M)


def simulated_poni(small: bool = False) -> str:
    """The PONI file text of the simulated beamline's geometry (see ``simulated_integrator``)."""
    import io

    from pyFAI.io.ponifile import PoniFile

    out = io.StringIO()
    PoniFile(simulated_integrator(small)).write(out)
    return out.getvalue()


@functools.cache
def _agbh_frame(small: bool) -> _Frame:
    """Synthesise the AgBh pattern once per process (about 0.5 s for the full 2M) and cache it read-only."""
    from pyFAI.calibrant import get_calibrant

    shape = SMALL_SHAPE if small else PILATUS2M_SHAPE
    ai = simulated_integrator(small)
    p1, p2 = ai.detector.pixel1, ai.detector.pixel2
    poni1, poni2 = ai.poni1, ai.poni2
    if small:
        gaps = np.zeros(shape, dtype=bool)
        resolution = 0.3  # broader rings: thin ones alias on 4 mm pixels
    else:
        mask = ai.detector.mask
        gaps = np.zeros(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        resolution = 0.1
    calibrant = get_calibrant("AgBh")
    calibrant.wavelength = _WAVELENGTH_M
    rings = np.asarray(calibrant.fake_calibration_image(ai, resolution=resolution), dtype=np.float64)
    rows = (np.arange(shape[0]) + 0.5) * p1 - poni1
    cols = (np.arange(shape[1]) + 0.5) * p2 - poni2
    r_mm = np.hypot(rows[:, None], cols[None, :]) * 1e3
    diffuse = 2.0 + 400.0 / (1.0 + (r_mm / 8.0) ** 2)  # small-angle scattering falling off with q
    rate = 40.0 * rings + diffuse
    rate[r_mm < 4.0] = 0.02  # beamstop shadow
    rate.setflags(write=False)
    gaps.setflags(write=False)
    return _Frame(rate=rate, gaps=gaps)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder, then rename: readers never see a partial file."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}{TEMP_SUFFIX}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _counts(frame: _Frame, seconds: float, scale: float, rng: np.random.Generator) -> npt.NDArray[np.int32]:
    expected = frame.rate * (seconds * scale)
    counts = np.minimum(rng.poisson(expected), _PILATUS_MAX).astype(np.int32)
    counts[frame.gaps] = -1
    return counts


def _decimals(raw: str) -> int:
    return len(raw.split(".", 1)[1]) if "." in raw else 0


def render_sidecar(overrides: dict[str, float | str], leading: tuple[float, float, float]) -> str:
    """The template sidecar with the ``leading`` numbers and the values of ``overrides`` (every occurrence of
    a key) replaced, each number printed with the template's number of decimals. Everything else is kept."""
    template = parse_sidecar_text(SIDECAR_TEMPLATE)
    by_line = {entry.line: entry for entry in template.entries}
    lines = SIDECAR_TEMPLATE.splitlines()
    out: list[str] = []
    n_leading = 0
    for lineno, line in enumerate(lines, start=1):
        entry = by_line.get(lineno)
        if entry is None and n_leading < len(LEADING_NAMES) and ":" not in line and line.strip():
            out.append(f"{leading[n_leading]:.{_decimals(line.strip())}f}")
            n_leading += 1
        elif entry is not None and entry.key in overrides:
            value = overrides[entry.key]
            text = value if isinstance(value, str) else f"{value:.{_decimals(entry.raw)}f}"
            out.append(f"{entry.key}: {text}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def simulate_acquisitions(
    data_root: Path,
    n_scans: int,
    *,
    proposal: str = "ALS-00000",
    pi: str = "PIDemo",
    when: datetime | None = None,
    seed: int = 0,
    hi_lo_every: int = 0,
    small: bool = False,
    autoexpose_every: int = 0,
    zone: str = DEFAULT_ZONE,
    first_sample: str | None = None,
) -> list[Path]:
    """Write ``n_scans`` scans under ``data_root/<proposal>/<YYYYMMDD>/`` and return the written paths in
    write order (EDF, then its sidecar; for hi/lo sets hi, lo, then the ``.gb``).

    ``when`` is the start of the first exposure (naive = beamline local time; default now); the following
    scans start after the previous exposure plus a few seconds. ``hi_lo_every=k`` makes every k-th scan a
    hi/lo set (0 = never); ``autoexpose_every=k`` makes every k-th scan an alignment frame (0 = never; wins
    over hi/lo). ``first_sample`` names the first scan's sample (the demo makes it ``AgBh_cal``).
    """
    if n_scans < 0:
        raise ValueError(f"n_scans must be >= 0, got {n_scans}")
    tz = beamline_zone(zone)
    start = datetime.now(tz) if when is None else (when.replace(tzinfo=tz) if when.tzinfo is None else when)
    start = start.astimezone(tz)
    folder = data_root / proposal / f"{start:%Y%m%d}"
    folder.mkdir(parents=True, exist_ok=True)
    frame = _agbh_frame(small)
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    t_utc = start.astimezone(UTC)  # advance in UTC so a DST change between scans is handled
    for i in range(1, n_scans + 1):
        sample = _SAMPLES[int(rng.integers(len(_SAMPLES)))]
        if i == 1 and first_sample is not None:
            sample = first_sample  # drawn anyway, so the rest of the sequence does not change
        autoexpose = autoexpose_every > 0 and i % autoexpose_every == 0
        hilo = not autoexpose and hi_lo_every > 0 and i % hi_lo_every == 0
        base = f"{'autoexpose' if autoexpose else sample}_{start:%H%M%S}_{i:04d}"
        exposure = 0.5 if autoexpose else float(_EXPOSURES_S[int(rng.integers(len(_EXPOSURES_S)))])
        grazing = bool(rng.random() < 0.5)
        stage = {
            "Sample X Stage": float(rng.uniform(-90.0, -80.0)),
            "Sample Y Stage": float(rng.uniform(0.0, 10.0)),
            "Sample Alpha Stage": float(rng.uniform(0.1, 0.3)) if grazing else 0.0,
            "Sample Phi Stage": float(rng.normal(0.0, 0.05)),
            "Beam Current": float(rng.normal(500.0, 0.3)),
        }
        scale = float(rng.uniform(0.6, 1.4))  # sample scattering strength
        parts: list[tuple[str, float]] = (
            [("hi", exposure * 10.0), ("lo", exposure)] if hilo else [("", exposure)]
        )
        images: dict[str, npt.NDArray[np.int32]] = {}
        for part, seconds in parts:
            stem = f"{base}_{part}_2m" if part else f"{base}_2m"
            counts = _counts(frame, seconds, scale * stage["Beam Current"] / 500.0, rng)
            images[part] = counts
            izero = round(40.1 * seconds * float(rng.uniform(0.98, 1.02)))
            diode = round(1044.0 * seconds * float(rng.uniform(0.98, 1.02)))
            i1 = round(23556.1 * seconds * float(rng.uniform(0.98, 1.02)))
            header = {
                "HeaderID": "EH:000001:000000:000000",
                "Image": "1",
                "VersionNumber": "0.10",
                "ByteOrder": "LowByteFirst",
                "DataType": "SignedInteger",
                "Dim_1": "",
                "Dim_2": "",
                "Date": t_utc.astimezone(tz).replace(tzinfo=None).ctime(),
                "count_time": f"{seconds:.9f}",
                "title": "# Pixel_size 172e-6 m x 172e-6 m",
                "run": "0",
            }
            edf_path = folder / f"{stem}.edf"
            _write_atomic(edf_path, edf_bytes(counts, header))
            written.append(edf_path)
            overrides: dict[str, float | str] = {
                "Izero": float(izero),
                "Diode normalization": float(diode),
                "I1 normalization": float(i1),
                "I1": float(i1),
                "Exposure time s": seconds,
                "ALS Proposal #": proposal,
                "ALS ESAF #": f"{proposal}-001",
                "PI": pi,
                "GiSAXS Beamstop Counter": float(round(52.3 * seconds * 1000.0 * scale)),
                **stage,
            }
            txt_path = folder / f"{stem}.txt"
            _write_atomic(txt_path, render_sidecar(overrides, (izero, diode, i1)).encode("ascii"))
            written.append(txt_path)
            t_utc += timedelta(seconds=seconds + _OVERHEAD_S)
        if hilo:
            hi, lo = images["hi"], images["lo"]
            merged = hi.astype(np.float32)
            saturated = hi >= _PILATUS_MAX
            merged[saturated] = lo[saturated].astype(np.float32) * 10.0
            gb_path = folder / f"{base}_sfloat_2m.gb"
            _write_atomic(gb_path, merged.astype("<f4").tobytes())
            written.append(gb_path)
    return written
