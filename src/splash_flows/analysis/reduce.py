"""Reduce one 7.3.3 frame to I(q) (and, at grazing incidence, a q_ip / q_oop map) with pyFAI.

Plain functions and small classes, no Prefect, no ledger: the same code runs in the local process pool and in
the Slurm job at NERSC (``splash_flows.analysis.job``).

Per frame, and why:

- **Geometry** comes from the calibration's PONI text (energy, distance and beam centre are in no 7.3.3 header).
  ``Integrators`` builds one ``AzimuthalIntegrator`` per geometry and reuses it for every frame: pyFAI's first
  call builds its look-up tables (seconds on a 2M), later calls reuse them.
- **Grazing incidence** (``Sample Alpha Stage`` non-zero, see ``metadata.is_grazing_incidence``): the q_ip/q_oop
  map comes from pyFAI's ``FiberIntegrator.integrate2d_grazing_incidence`` with THAT frame's incident angle. One
  ``FiberIntegrator`` per (geometry, angle): an integrator is never reused across angles, so a cached table
  built for another angle can never give silently wrong q values. What does not depend on the angle is
  computed once per geometry and shared (``Integrators.fiber``): the pixel positions (pyFAI computes them
  again on every q_ip / q_oop array it builds) and the solid angles; the q_ip / q_oop arrays themselves are
  the new integrator's own. Same numbers as a fresh ``FiberIntegrator`` (tests compare them bit for bit).
- **Mask**: the detector's own module gaps (pyFAI's Pilatus definition), every pixel the frame marks negative
  (-1 gaps, -2 bad pixels), a disc of ``beamstop_radius_mm`` around the beam centre, and an optional mask file.
- **Normalisation**: by the flux the sample saw during the exposure, from the exposure time and the monitor the
  sidecar names in ``Normalize by:`` (one of its three leading numbers: Izero, Diode normalization, I1
  normalization). 7.3.3's monitors are counts integrated over the exposure (they scale with the exposure time),
  so the divisor is the monitor itself = exposure time x mean monitor rate (``monitor_kind: integrated``); a
  monitor that is a rate is multiplied by the exposure time (``monitor_kind: rate``). A frame whose monitor or
  exposure time is missing is not reduced (``AnalysisError``): an un-normalised curve would look right and
  compare wrongly.
- **Uncertainties**: Poisson (variance = counts), propagated by pyFAI through the integration; for our own hi/lo
  merge the variance of the pixels taken from ``lo`` is ``lo * ratio**2``, passed to pyFAI explicitly.
- **Hi/lo pairs** give one result per scan: the beamline's ``.gb`` merge when it is there and readable, else
  our own merge (``hi``, with its saturated pixels replaced by ``lo`` scaled by the ratio of the two
  normalisations); ``Frame.merge`` says which was used.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from splash_flows.beamlines.bl733.edf import read_edf_header, read_edf_image, read_gb_image
from splash_flows.beamlines.bl733.metadata import is_grazing_incidence
from splash_flows.beamlines.bl733.sidecar import LEADING_NAMES, Sidecar, read_sidecar
from splash_flows.errors import AnalysisError, MetadataError

if TYPE_CHECKING:
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.integrator.fiber import FiberIntegrator

    from splash_flows.config import AnalysisConfig

log = logging.getLogger(__name__)

Merge = Literal["single", "gb", "own"]
FloatArray = npt.NDArray[np.float64]

#: How many (geometry, angle) fibre integrators one process keeps (grazing scans of a series share angles).
FIBER_CACHE = 8
#: The calibrant whose rings the frame picture shows (the beamline calibrates with silver behenate).
CALIBRANT = "AgBh"


@dataclass(frozen=True)
class Settings:
    """Reduction parameters (from ``analysis`` in the configuration). Picklable: sent to worker processes and
    written into the Slurm job's manifest."""

    npt: int = 2000
    unit: str = "q_nm^-1"
    method: tuple[str, str, str] = ("no", "histogram", "cython")
    beamstop_radius_mm: float = 5.0
    mask_file: str | None = None
    saturation_counts: int = (1 << 20) - 1
    gi_npt: int = 500
    gi_sample_orientation: int = 3
    monitor_kind: str = "integrated"
    checksum: str = "xxh3_128"

    @classmethod
    def from_config(cls, analysis: AnalysisConfig, checksum: str = "xxh3_128") -> Settings:
        """The settings of an ``AnalysisConfig``."""
        return cls(npt=analysis.npt, unit=analysis.unit, method=tuple(analysis.method),  # type: ignore[arg-type]
                   beamstop_radius_mm=analysis.beamstop_radius_mm,
                   mask_file=str(analysis.mask_file) if analysis.mask_file else None,
                   saturation_counts=analysis.saturation_counts, gi_npt=analysis.gi_npt,
                   gi_sample_orientation=analysis.gi_sample_orientation, monitor_kind=analysis.monitor_kind,
                   checksum=checksum)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (job parameters in the catalogue, manifest of a Slurm job)."""
        out = asdict(self)
        out["method"] = list(self.method)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Inverse of ``as_dict``."""
        return cls(**{**data, "method": tuple(data["method"])})


@functools.lru_cache(maxsize=64)
def poni_key(poni_text: str) -> str:
    """A short stable identity of a geometry: the hash of its PONI values (comments, such as pyFAI's "Calibration
    done on <date>", and line order do not count). Remembered per text: every frame asks three times (integrator,
    mask, rings) for the same few calibrations."""
    try:
        values = sorted(_poni_dict(poni_text).items())
    except ValueError:
        values = [("text", poni_text)]
    return hashlib.sha256(repr(values).encode("utf-8")).hexdigest()[:16]


def load_poni(poni_text: str, *, label: str = "calibration") -> AzimuthalIntegrator:
    """An ``AzimuthalIntegrator`` from the text of a PONI file. Raises ``AnalysisError`` when pyFAI cannot read
    it or it lacks the wavelength (needed for q)."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.io.ponifile import PoniFile

    try:
        values = _poni_dict(poni_text)
        if "distance" not in values and "dist" not in values:
            raise ValueError("no Distance line")
        poni = PoniFile(values)
        ai = AzimuthalIntegrator()
        ai.auto_gc = False  # else pyFAI runs a full gc.collect() when it sets the geometry (0.1-0.4 s in a flow)
        ai._init_from_poni(poni)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise AnalysisError(f"not a readable PONI file: {type(exc).__name__}: {exc}", scan=label) from exc
    if not ai.wavelength:
        raise AnalysisError("the PONI has no wavelength, so q cannot be computed", scan=label)
    if ai.detector is None or ai.detector.shape is None:
        raise AnalysisError("the PONI names no detector with a known shape", scan=label)
    return ai


def _poni_dict(poni_text: str) -> dict[str, Any]:
    """The ``key: value`` lines of a PONI file as pyFAI's ``PoniFile`` reads them (comments skipped)."""
    out: dict[str, Any] = {}
    for line in poni_text.splitlines():
        text = line.strip()
        if not text or text.startswith("#") or ":" not in text:
            continue
        key, _, value = text.partition(":")
        out[key.strip().lower()] = value.strip()
    if not out:
        raise ValueError("no 'key: value' lines")
    return out


def poni_text_of(ai: AzimuthalIntegrator) -> str:
    """The PONI file text of an integrator's geometry, written by pyFAI itself."""
    import io

    from pyFAI.io.ponifile import PoniFile

    out = io.StringIO()
    PoniFile(ai).write(out)
    return out.getvalue()


@functools.cache
def _shared_geometry_fiber_class() -> Any:
    """pyFAI's ``FiberIntegrator`` whose pixel positions may come from an array shared by every integrator of the
    same geometry (``shared_positions``). pyFAI computes the positions again each time it builds a q_ip or q_oop
    array (its ``position_array`` says "not cached, generated on demand (costly)"), twice per new angle; they
    depend only on the geometry, which a fibre integrator here never changes after it is made."""
    from pyFAI.integrator.fiber import FiberIntegrator

    class SharedGeometryFiberIntegrator(FiberIntegrator):  # type: ignore[misc]
        shared_positions: npt.NDArray[np.float64] | None = None

        def position_array(self, shape: Any = None, corners: bool = False, dtype: Any = np.float64,
                           use_cython: bool = True, do_parallax: bool = True) -> Any:
            pos = self.shared_positions
            if (pos is not None and not corners and dtype is np.float64 and use_cython and do_parallax
                    and pos.shape[:2] == tuple(self.get_shape(shape))):
                return pos
            return super().position_array(shape, corners=corners, dtype=dtype, use_cython=use_cython,
                                          do_parallax=do_parallax)

    return SharedGeometryFiberIntegrator


class Integrators:
    """The integrators and masks of one process, built once per geometry (thread-safe).

    ``azimuthal(poni)`` is shared by every frame of that geometry; ``fiber(poni, alpha)`` is one per (geometry,
    incident angle, sample orientation), the last ``FIBER_CACHE`` kept; what does not depend on the angle (pixel
    positions, solid angles) is computed once per geometry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._azimuthal: dict[str, AzimuthalIntegrator] = {}
        self._fiber: OrderedDict[tuple[str, float, int], FiberIntegrator] = OrderedDict()
        self._masks: dict[tuple[str, float, str | None, tuple[int, int]], npt.NDArray[np.bool_]] = {}  # and rings
        self._positions: dict[str, npt.NDArray[np.float64]] = {}
        self.built = 0  # integrators built (tests check reuse)

    def prepare(self, poni_text: str, settings: Settings) -> None:
        """Build everything a geometry needs before its first frame: the integrator, its static mask, the
        calibrant's rings, the pixel positions the fibre integrators share, and pyFAI's own per-geometry arrays
        (its first ``integrate1d`` computes the q of every pixel: seconds on a 2M). A pool worker does this at
        start-up, in parallel with the others.

        In the order a first frame fills them (``reduce_frame``): pyFAI keeps ONE q array per integrator, and
        ``integrate1d`` computes it otherwise than ``qArray`` (which ``rings`` calls) does, 1e-7 apart; the q
        array of whichever runs first is the one every later frame is binned with. Integrating first keeps a
        prepared integrator's results equal, bit for bit, to those of one that was not prepared (tested)."""
        ai = self.azimuthal(poni_text)
        shape = tuple(ai.detector.shape)
        mask = self.static_mask(poni_text, settings, shape)
        ai.integrate1d(np.ones(shape, dtype=np.int32), settings.npt, unit=settings.unit, method=settings.method,
                       mask=np.array(mask), error_model="poisson", normalization_factor=1.0)  # pyFAI wants it writable
        self.rings(poni_text, shape)
        self.positions(poni_text)  # for the fibre integrators of grazing-incidence frames

    def azimuthal(self, poni_text: str) -> AzimuthalIntegrator:
        key = poni_key(poni_text)
        with self._lock:
            ai = self._azimuthal.get(key)
            if ai is None:
                ai = self._azimuthal[key] = load_poni(poni_text)
                self.built += 1
            return ai

    def fiber(self, poni_text: str, alpha_deg: float, sample_orientation: int = 3) -> FiberIntegrator:
        """The fibre integrator of this geometry at this incident angle (degrees) and sample orientation, made
        ready for ``integrate2d_grazing_incidence`` with those values: pyFAI's grazing parameters are set as that
        call sets them (so its first call does not reset the integrator), the pixel positions are this geometry's
        shared array and the solid angles its azimuthal integrator's. What depends on the angle (q_ip, q_oop) is
        computed by pyFAI in this integrator, as for a fresh one. A call with other grazing parameters resets it
        (pyFAI's own check) and computes its own solid angles again: slower, never wrong."""
        from pyFAI.units import ANGLE_UNITS, to_unit

        key = (poni_key(poni_text), float(alpha_deg), int(sample_orientation))
        with self._lock:
            fi = self._fiber.get(key)
            if fi is not None:
                self._fiber.move_to_end(key)
                return fi
        base = self.azimuthal(poni_text)
        shape = tuple(base.detector.shape)
        fi = _shared_geometry_fiber_class()(
            dist=base.dist, poni1=base.poni1, poni2=base.poni2, rot1=base.rot1, rot2=base.rot2, rot3=base.rot3,
            detector=base.detector, wavelength=base.wavelength)
        fi.auto_gc = False  # pyFAI would run a full gc.collect() at every reset: memory hygiene, no result
        fi.shared_positions = self.positions(poni_text)
        # the grazing parameters as integrate2d_grazing_incidence(angle_unit="deg", tilt_angle=0) converts them,
        # so that its first call finds them set and keeps what is cached below
        deg = to_unit("deg", ANGLE_UNITS)
        fi.reset_integrator(incident_angle=(float(alpha_deg) % deg.period) / deg.scale,
                            tilt_angle=(0.0 % deg.period) / deg.scale, sample_orientation=int(sample_orientation))
        solid, crc = base.solidAngleArray(shape, True, with_checksum=True)  # order 3, as integrate2d asks
        fi._cached_array.setdefault(f"solid_angle#{base._dssa_order}", solid)
        fi._cached_array.setdefault(f"solid_angle#{base._dssa_order}_crc", crc)
        with self._lock:
            self._fiber[key] = fi
            self.built += 1
            while len(self._fiber) > FIBER_CACHE:
                self._fiber.popitem(last=False)
        return fi

    def positions(self, poni_text: str) -> npt.NDArray[np.float64]:
        """The (z, y, x) position of every pixel centre of this geometry (pyFAI's ``position_array``, read-only),
        computed once: the fibre integrators of every angle use it (``fiber``)."""
        key = poni_key(poni_text)
        with self._lock:
            cached = self._positions.get(key)
        if cached is not None:
            return cached
        ai = self.azimuthal(poni_text)
        pos = np.asarray(ai.position_array(tuple(ai.detector.shape), corners=False), dtype=np.float64)
        pos.setflags(write=False)
        with self._lock:
            return self._positions.setdefault(key, pos)

    def rings(self, poni_text: str, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """Pixels within about a pixel of a ring of the calibrant (``CALIBRANT``), built once per geometry."""
        key = (poni_key(poni_text), -1.0, CALIBRANT, shape)
        with self._lock:
            cached = self._masks.get(key)
        if cached is not None:
            return cached
        from pyFAI.calibrant import get_calibrant

        ai = self.azimuthal(poni_text)
        q = np.asarray(ai.qArray(shape), dtype=np.float64)  # nm^-1
        step = np.hypot(*np.gradient(q))  # q span of one pixel
        on_ring = np.zeros(shape, dtype=bool)
        for d in get_calibrant(CALIBRANT).dspacing[:10]:  # d in Angstrom
            on_ring |= np.abs(q - 2 * np.pi / (d / 10.0)) < step
        on_ring.setflags(write=False)
        with self._lock:
            self._masks[key] = on_ring
        return on_ring

    def static_mask(self, poni_text: str, settings: Settings, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """Detector gaps + beamstop disc + mask file for this geometry (True = masked), built once."""
        key = (poni_key(poni_text), settings.beamstop_radius_mm, settings.mask_file, shape)
        with self._lock:
            cached = self._masks.get(key)
        if cached is not None:
            return cached
        ai = self.azimuthal(poni_text)
        mask = np.zeros(shape, dtype=bool)
        det_mask = ai.detector.mask
        if det_mask is not None and det_mask.shape == shape:
            mask |= np.asarray(det_mask, dtype=bool)
        if settings.beamstop_radius_mm > 0:
            fit = ai.getFit2D()
            rows = (np.arange(shape[0]) + 0.5 - fit["centerY"]) * ai.detector.pixel1 * 1e3
            cols = (np.arange(shape[1]) + 0.5 - fit["centerX"]) * ai.detector.pixel2 * 1e3
            mask |= np.hypot(rows[:, None], cols[None, :]) < settings.beamstop_radius_mm
        if settings.mask_file:
            mask |= _read_mask_file(Path(settings.mask_file), shape)
        mask.setflags(write=False)
        with self._lock:
            self._masks[key] = mask
        return mask


def _read_mask_file(path: Path, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    try:
        data = np.load(path) if path.suffix.lower() == ".npy" else read_edf_image(path)
    except (OSError, ValueError, MetadataError) as exc:
        raise AnalysisError(f"cannot read the mask file: {exc}", scan=str(path)) from exc
    if data.shape != shape:
        raise AnalysisError(f"mask file shape {data.shape} differs from the frames' {shape}", scan=str(path))
    return np.asarray(data != 0, dtype=bool)


# ---------------------------------------------------------------------------------------------- frames


@dataclass
class Frame:
    """One frame ready to integrate: pixels (the detector's own integer type for a single exposure -- pyFAI
    converts while it integrates, so a float copy of 2.5 M pixels per frame is not made; float for a merge),
    what normalises it, and where it came from."""

    image: npt.NDArray[Any]
    exposure_s: float
    monitor_name: str
    monitor: float
    alpha_deg: float | None
    merge: Merge
    sources: list[str]
    variance: FloatArray | None = None
    notes: list[str] = field(default_factory=list)
    monitor_kind: str = "integrated"

    @property
    def normalization(self) -> float:
        """The flux during the exposure, the divisor that makes frames comparable: the monitor counts (an
        integrating monitor already holds exposure time x rate), or exposure time x monitor for a rate."""
        return self.monitor if self.monitor_kind == "integrated" else self.exposure_s * self.monitor

    @property
    def grazing(self) -> bool:
        return is_grazing_incidence(self.alpha_deg)


def monitor_of(sidecar: Sidecar) -> tuple[str, float]:
    """The monitor the sidecar's ``Normalize by:`` names and its value (one of the three leading numbers).

    Raises ``AnalysisError`` when the key is absent, names no known monitor, or the value is not a positive
    number."""
    entry = sidecar.first("Normalize by")
    if entry is None or not str(entry.raw).strip():
        raise AnalysisError("the sidecar has no 'Normalize by:' naming the monitor", scan=sidecar.source)
    wanted = str(entry.raw).strip().lower()
    for index, name in enumerate(LEADING_NAMES):
        if name.lower() == wanted or name.lower().startswith(wanted):
            if index >= len(sidecar.leading):
                break
            value = sidecar.leading[index]
            if not math.isfinite(value) or value <= 0:
                raise AnalysisError(f"monitor {name!r} is {value!r}; cannot normalise", scan=sidecar.source)
            return name, float(value)
    raise AnalysisError(f"'Normalize by: {entry.raw}' names no monitor of this sidecar "
                        f"({', '.join(LEADING_NAMES)})", scan=sidecar.source)


def exposure_of(sidecar: Sidecar | None, edf_path: Path, label: str) -> float:
    """Exposure time: the sidecar's ``Exposure time s``, else the EDF header's ``count_time``."""
    if sidecar is not None and sidecar.exposure_time_s is not None and sidecar.exposure_time_s > 0:
        return float(sidecar.exposure_time_s)
    count_time = read_edf_header(edf_path, label=label).count_time_s
    if count_time is not None and count_time > 0:
        return count_time
    raise AnalysisError("no exposure time (neither 'Exposure time s' in the sidecar nor count_time in the EDF)",
                        scan=label)


def _sidecar(path: Path, label: str) -> Sidecar:
    try:
        return read_sidecar(path, label=label)
    except MetadataError as exc:
        raise AnalysisError(f"cannot read the sidecar: {exc}", scan=label) from exc


def _image(path: Path, label: str) -> npt.NDArray[Any]:
    """The pixels of an EDF in their own type (int32 for the Pilatus)."""
    try:
        return read_edf_image(path, label=label)
    except MetadataError as exc:
        raise AnalysisError(str(exc)) from exc


def load_single(root: Path, edf: str, txt: str, settings: Settings | None = None) -> Frame:
    """A single exposure: ``<stem>.edf`` normalised by its sidecar ``<stem>.txt``."""
    kind = (settings or Settings()).monitor_kind
    side = _sidecar(root / txt, txt)
    monitor_name, monitor = monitor_of(side)
    image = _image(root / edf, edf)
    return Frame(image=image, exposure_s=exposure_of(side, root / edf, edf), monitor_name=monitor_name,
                 monitor=monitor, alpha_deg=side.alpha_deg, merge="single", sources=[edf, txt], monitor_kind=kind)


def load_hilo(root: Path, files: dict[str, str], settings: Settings) -> Frame:
    """One frame of a hi/lo scan (``files``: roles ``hi_edf``, ``hi_txt``, ``lo_edf``, ``lo_txt``, ``gb``).

    The beamline's ``.gb`` merge is used when present and of the right size (it is on the scale of ``hi``, so it
    is normalised with ``hi``'s exposure and monitor); otherwise we merge: ``hi`` where it is below
    ``saturation_counts``, else ``lo * norm_hi / norm_lo`` (norm: see ``Frame.normalization``)."""
    if "hi_txt" not in files or "hi_edf" not in files:
        raise AnalysisError("a hi/lo scan without its hi frame and sidecar cannot be reduced")
    hi_side = _sidecar(root / files["hi_txt"], files["hi_txt"])
    monitor_name, hi_monitor = monitor_of(hi_side)
    hi_exposure = exposure_of(hi_side, root / files["hi_edf"], files["hi_edf"])
    notes: list[str] = []
    header = read_edf_header(root / files["hi_edf"], label=files["hi_edf"])
    if "gb" in files and header.shape is not None:
        try:
            gb = read_gb_image(root / files["gb"], header.shape, label=files["gb"]).astype(np.float64)
            return Frame(image=gb, exposure_s=hi_exposure, monitor_name=monitor_name, monitor=hi_monitor,
                         alpha_deg=hi_side.alpha_deg, merge="gb", monitor_kind=settings.monitor_kind,
                         sources=[files["gb"], files["hi_edf"], files["hi_txt"]])
        except MetadataError as exc:
            notes.append(f"beamline .gb merge not used: {exc}")
    elif "gb" not in files:
        notes.append("no beamline .gb merge: merged hi/lo ourselves")
    if "lo_txt" not in files or "lo_edf" not in files:
        raise AnalysisError("neither a usable .gb merge nor the lo frame and sidecar to merge hi/lo ourselves")
    lo_side = _sidecar(root / files["lo_txt"], files["lo_txt"])
    lo_name, lo_monitor = monitor_of(lo_side)
    if lo_name != monitor_name:
        raise AnalysisError(f"hi is normalised by {monitor_name!r}, lo by {lo_name!r}: cannot merge them")
    lo_exposure = exposure_of(lo_side, root / files["lo_edf"], files["lo_edf"])
    hi = _image(root / files["hi_edf"], files["hi_edf"]).astype(np.float64)
    lo = _image(root / files["lo_edf"], files["lo_edf"]).astype(np.float64)
    if hi.shape != lo.shape:
        raise AnalysisError(f"hi {hi.shape} and lo {lo.shape} frames differ in shape")
    hi_frame = Frame(image=hi, exposure_s=hi_exposure, monitor_name=monitor_name, monitor=hi_monitor,
                     alpha_deg=hi_side.alpha_deg, merge="own", sources=[], monitor_kind=settings.monitor_kind)
    lo_norm = lo_monitor if settings.monitor_kind == "integrated" else lo_exposure * lo_monitor
    merged, variance = merge_hilo(hi, lo, hi_frame.normalization / lo_norm, settings.saturation_counts)
    return Frame(image=merged, exposure_s=hi_exposure, monitor_name=monitor_name, monitor=hi_monitor,
                 alpha_deg=hi_side.alpha_deg, merge="own", variance=variance, notes=notes,
                 monitor_kind=settings.monitor_kind,
                 sources=[files["hi_edf"], files["hi_txt"], files["lo_edf"], files["lo_txt"]])


def merge_hilo(hi: FloatArray, lo: FloatArray, ratio: float, saturation: int) -> tuple[FloatArray, FloatArray]:
    """``hi`` with its saturated pixels (``>= saturation``) replaced by ``lo * ratio`` (ratio = norm_hi /
    norm_lo), and the Poisson variance of the result (``hi``, or ``lo * ratio**2`` where taken from ``lo``).
    Negative pixels (gaps) stay negative, so they are masked later."""
    saturated = hi >= saturation
    merged = hi.copy()
    merged[saturated] = lo[saturated] * ratio
    variance = np.clip(hi, 0.0, None)
    variance[saturated] = np.clip(lo[saturated], 0.0, None) * ratio * ratio
    return merged, variance


# ---------------------------------------------------------------------------------------------- integration


@dataclass
class GIMap:
    """A q_ip / q_oop map of a grazing-incidence frame (intensity[oop, ip])."""

    q_ip: FloatArray
    q_oop: FloatArray
    intensity: FloatArray
    incident_angle_deg: float
    sample_orientation: int
    unit_ip: str
    unit_oop: str


@dataclass
class Reduction:
    """The result of one frame: I(q) with its uncertainty, the map at grazing incidence, and the pyFAI result
    object (for the NXcanSAS writer)."""

    radial: FloatArray
    intensity: FloatArray
    sigma: FloatArray
    unit: str
    frame: Frame
    poni_text: str
    result: Any
    mask: npt.NDArray[np.bool_]
    gi: GIMap | None = None
    rings: npt.NDArray[np.bool_] | None = None  # pixels on the calibrant's rings, for the frame picture


def reduce_frame(frame: Frame, poni_text: str, settings: Settings, integrators: Integrators) -> Reduction:
    """Integrate one frame to I(q) (and its q_ip/q_oop map at grazing incidence). Raises ``AnalysisError``
    when the frame does not fit the calibration's detector."""
    ai = integrators.azimuthal(poni_text)
    shape = tuple(ai.detector.shape)
    if frame.image.shape != shape:
        raise AnalysisError(f"frame shape {frame.image.shape} does not match the calibration's detector "
                            f"{ai.detector.name} {shape}", scan=frame.sources[0])
    image = frame.image
    mask = integrators.static_mask(poni_text, settings, image.shape) | (image < 0)
    if image.dtype.kind == "f":  # a merge may hold NaN / inf; integer pixels cannot
        bad = ~np.isfinite(image)
        if bad.any():
            mask |= bad
            image = np.where(bad, 0.0, image)
    # masked pixels are left out by pyFAI (and zeroed by the frame picture), so the frame is passed as read
    kwargs: dict[str, Any] = {"variance": frame.variance} if frame.variance is not None else {
        "error_model": "poisson"}
    result = ai.integrate1d(image, settings.npt, unit=settings.unit, method=settings.method, mask=mask,
                            normalization_factor=frame.normalization, **kwargs)
    if result.sigma is None:
        raise AnalysisError("pyFAI returned no uncertainties", scan=frame.sources[0])
    reduction = Reduction(radial=np.asarray(result.radial, dtype=np.float64),
                          intensity=np.asarray(result.intensity, dtype=np.float64),
                          sigma=np.asarray(result.sigma, dtype=np.float64), unit=str(result.unit), frame=frame,
                          poni_text=poni_text, result=result, mask=mask)
    reduction.rings = integrators.rings(poni_text, shape)
    if frame.grazing and frame.alpha_deg is not None:
        reduction.gi = grazing_map(frame, image, mask, poni_text, settings, integrators)
    return reduction


def grazing_map(frame: Frame, image: npt.NDArray[Any], mask: npt.NDArray[np.bool_], poni_text: str, settings: Settings,
                integrators: Integrators) -> GIMap:
    """The q_ip / q_oop map of a grazing-incidence frame, with the fibre integrator of THIS frame's angle."""
    assert frame.alpha_deg is not None
    fi = integrators.fiber(poni_text, frame.alpha_deg, settings.gi_sample_orientation)
    res = fi.integrate2d_grazing_incidence(
        image, npt_ip=settings.gi_npt, npt_oop=settings.gi_npt, incident_angle=frame.alpha_deg, tilt_angle=0.0,
        sample_orientation=settings.gi_sample_orientation, angle_unit="deg", mask=mask,
        method=("no", "histogram", "cython"), normalization_factor=frame.normalization)
    return GIMap(q_ip=np.asarray(res.inplane, dtype=np.float64), q_oop=np.asarray(res.outofplane, dtype=np.float64),
                 intensity=np.asarray(res.intensity, dtype=np.float64), incident_angle_deg=float(frame.alpha_deg),
                 sample_orientation=settings.gi_sample_orientation, unit_ip=str(res.ip_unit),
                 unit_oop=str(res.oop_unit))
