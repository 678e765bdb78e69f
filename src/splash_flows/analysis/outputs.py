"""Write what a person and a program read after a reduction: NXcanSAS HDF5, a ``.dat`` and PNG plots.

- ``<stem>.h5``: NXcanSAS written by pyFAI's own ``save_NXcansas`` (SASentry / SASdata with ``I``, ``Q``,
  ``Idev``; the detector geometry; the PONI and integration parameters in the pyFAI NXprocess), to which we add
  a ``splash_reduction`` NXnote (monitor, exposure, merge, calibration, software versions, sources) and, at
  grazing incidence, an ``qmap`` NXdata with the q_ip / q_oop map. No external links: everything is in the file.
- ``<stem>.dat``: three columns q, I, sigma with a ``#`` header saying what they are and how they were made.
- ``<stem>_iq.png``: log-log I(q) with its error band (numpy + Pillow); ``<stem>_frame.png``: the frame on a
  log scale with the mask (red) and the calibrant's rings (white) overlaid (numpy + Pillow);
  ``<stem>_qmap.png``: the q_ip / q_oop map (grazing incidence only; numpy + Pillow).

Every file is written under a temporary name in the same folder, the scan's files are fsynced together, then
renamed, then the folder is fsynced: a reader (or the file watcher) never sees half a file under a final name.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from splash_flows.analysis.reduce import Reduction, Settings
from splash_flows.errors import AnalysisError

#: Software whose version goes into every output and the catalogue's usedSoftware.
SOFTWARE = ("splash-flows", "pyFAI", "numpy", "h5py", "Pillow", "fabio")


def software_versions() -> dict[str, str]:
    """Installed versions of the software that produced a reduction (a copy; looked up once per process:
    ``importlib.metadata.version`` parses each package's METADATA, ~10 ms a package, and was called three times
    per frame)."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def prepare() -> None:
    """Load once what writing outputs needs (h5py, Pillow's PNG encoder, the fonts, the palette, the software
    versions): a pool worker does it at start-up instead of on its first scan."""
    import h5py  # noqa: F401
    from PIL import Image, PngImagePlugin  # noqa: F401

    _font(12)
    _font(10)
    _frame_palette()
    software_versions()


def output_names(stem: str, grazing: bool) -> list[str]:
    """File names a reduction of scan ``stem`` writes (in its results folder)."""
    names = [f"{stem}.h5", f"{stem}.dat", f"{stem}_iq.png", f"{stem}_frame.png"]
    if grazing:
        names.append(f"{stem}_qmap.png")
    return names


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


_FSYNC_POOL: tuple[int, ThreadPoolExecutor] | None = None
_FSYNC_POOL_LOCK = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """The threads that fsync a scan's files together, one set per process (starting and joining four threads
    for every scan cost ~0.45 ms of CPU, a tenth of an I(q) plot). Made again in a forked child, whose copy
    of the parent's pool has no threads."""
    global _FSYNC_POOL
    with _FSYNC_POOL_LOCK:
        if _FSYNC_POOL is None or _FSYNC_POOL[0] != os.getpid():
            _FSYNC_POOL = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="outputs-fsync"))
        return _FSYNC_POOL[1]


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(reduction: Reduction, folder: Path, stem: str, *, settings: Settings, info: dict[str, Any]) -> list[Path]:
    """Write every output of one scan's reduction into ``folder`` (created if needed); return their paths.

    Durable together: every file is written under a temporary sibling name (``.<name>.part``), then all are
    fsynced (in threads, so the file system can commit them in one journal flush rather than one per file), then
    renamed to their final names, then the folder is fsynced once for the renames. A final name therefore never
    holds half a file, nor a file that a crash could lose; on any error the temporaries are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    names = output_names(stem, reduction.gi is not None)
    writers: list[Callable[[Path], None]] = [
        lambda p: write_nxcansas(p, reduction, stem=stem, settings=settings, info=info),
        lambda p: write_dat(p, reduction, stem=stem, settings=settings, info=info),
        lambda p: plot_iq(p, reduction, title=stem),
        lambda p: plot_frame(p, reduction, title=stem),
    ]
    if reduction.gi is not None:
        writers.append(lambda p: plot_qmap(p, reduction, title=stem))
    finals = [folder / name for name in names]
    temps = [path.with_name(f".{path.name}.part") for path in finals]
    step = names[0]
    try:
        for name, write, tmp in zip(names, writers, temps, strict=True):
            step = name
            write(tmp)
        step = "(fsync)"
        list(_fsync_pool().map(_fsync, temps))
        for name, tmp, final in zip(names, temps, finals, strict=True):
            step = name
            os.replace(tmp, final)
        _fsync_folder(folder)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise AnalysisError(f"cannot write {step}: {type(exc).__name__}: {exc}", scan=stem) from exc
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
    return finals


def write_nxcansas(path: Path, reduction: Reduction, *, stem: str, settings: Settings, info: dict[str, Any]) -> None:
    """NXcanSAS file of one I(q), plus our provenance note and, at grazing incidence, the map.

    The layout is pyFAI's ``save_NXcansas`` (same groups, names, attributes and values: SASentry, the pyFAI
    NXprocess with the PONI, SASinstrument / SASdetector / SASsource, SASdata with ``Q``, ``I``, ``Idev`` and
    pyFAI's sums; pyFAI's ``integrate`` collection of 12 fields is one JSON NXnote here), written with h5py in
    memory and to disk in one write: pyFAI's writer plus our second open cost ~190 ms a frame (bench/reduce.py),
    one small HDF5 write per dataset and attribute. Every object is laid out once per geometry and curve layout
    (``_static_image``, then ``_frame_template``); each frame opens a copy of that in-memory image and writes
    its values (``nxcansas_bytes``)."""
    path.write_bytes(nxcansas_bytes(reduction, stem=stem, settings=settings, info=info))


def nxcansas_bytes(reduction: Reduction, *, stem: str, settings: Settings, info: dict[str, Any]) -> bytes:
    """The NXcanSAS file of ``write_nxcansas`` as bytes.

    Every object of the file but the grazing-incidence map is laid out once per geometry and curve layout (an
    in-memory HDF5 image, ``_frame_template``: the groups, datasets and attributes, the datasets empty); a frame
    opens a copy of that image and only writes its values into the existing datasets -- eight strings, seven
    arrays, one attribute and the sample group's name -- instead of creating ~45 HDF5 objects (~0.2 ms each,
    bench/reduce.py). The file is the same, object for object and value for value."""
    import h5py

    frame, result = reduction.frame, reduction.result
    now = datetime.now(UTC).isoformat(timespec="seconds")
    note = {
        "scan": stem,
        "merge": frame.merge,
        "sources": frame.sources,
        "exposure_s": frame.exposure_s,
        "monitor": frame.monitor_name,
        "monitor_value": frame.monitor,
        "normalization_factor": frame.normalization,
        "incident_angle_deg": frame.alpha_deg,
        "notes": frame.notes,
        "settings": settings.as_dict(),
        "software": software_versions(),
        **info,
    }
    method = result.method.method._asdict() if result.method is not None else {}
    integrate = json.dumps({  # pyFAI's NXcollection of 12 fields, as one JSON note
        "polarization_factor": _or_none(result.polarization_factor),
        "normalization_factor": _or_none(result.normalization_factor),
        "has_mask_applied": bool(result.has_mask_applied),
        "has_dark_correction": bool(result.has_dark_correction),
        "has_flat_correction": bool(result.has_flat_correction),
        "has_solidangle_correction": bool(result.has_solidangle_correction),
        "metadata": result.metadata,
        "method_called": str(result.method_called),
        "compute_engine": str(result.compute_engine),
        "error_model": result.error_model.as_str() if result.error_model is not None else "None",
        "weighted_average": bool(result.weighted_average),
        "integration_method": method,
    }, indent=1, default=str)
    arrays = _curve_arrays(result)
    sample = _h5_name(stem)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(_frame_template(result, arrays))
    fid = h5py.h5f.open(b"nxcansas.h5", h5py.h5f.ACC_RDWR, fapl=fapl)
    # the values go in through h5py's low-level API: its high-level lookups and selections cost more than
    # the writes themselves here (~0.3 ms a dataset)
    text = h5py.string_dtype()
    for name, value in (("title", f"7.3.3 {stem}"), ("start_time", now), ("end_time", now), ("run", stem),
                        ("pyFAI/date", now), ("pyFAI/integrate/data", integrate),
                        ("splash_reduction/data", json.dumps(note, indent=1, default=str)),
                        ("splash_reduction/poni", reduction.poni_text), (f"{_SAMPLE}/name", sample)):
        h5py.h5d.open(fid, f"entry/{name}".encode()).write(h5py.h5s.ALL, h5py.h5s.ALL,
                                                            np.array(value, dtype=text))
    h5py.h5a.open(h5py.h5g.open(fid, b"entry/sasdata"), b"timestamp").write(np.array(now, dtype=text))
    for name, values in arrays:
        dataset = h5py.h5d.open(fid, f"entry/sasdata/{name}".encode())
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(values, dtype=dataset.dtype))
    if sample != _SAMPLE:
        h5py.h5g.open(fid, b"entry").move(_SAMPLE.encode(), sample.encode())
    with h5py.File(fid) as h5:
        entry = h5["entry"]
        if reduction.gi is not None:
            gi = reduction.gi
            qmap = entry.create_group("qmap")
            qmap.attrs.update({"NX_class": "NXdata", "signal": "I", "incident_angle_deg": gi.incident_angle_deg,
                               "sample_orientation": gi.sample_orientation})
            qmap.attrs["axes"] = ["q_oop", "q_ip"]
            qmap.create_dataset("I", data=gi.intensity, compression="gzip", compression_opts=1)
            qmap.create_dataset("q_ip", data=gi.q_ip).attrs["units"] = "1/nm"
            qmap.create_dataset("q_oop", data=gi.q_oop).attrs["units"] = "1/nm"
        h5.flush()
        image: bytes = h5.id.get_file_image()
    return image


#: The sample group's name in a frame template (renamed to the scan's name in each file).
_SAMPLE = "sample"

#: The curve's datasets in SASdata: name, the attribute of pyFAI's result holding it, its ``doc``.
_CURVE = (
    ("Q", "radial", None),
    ("I", "intensity", "weighted average of all pixels in a bin"),
    ("sum_signal", "sum_signal", "Sum of signal of all pixels in a bin"),
    ("sum_normalization", "sum_normalization", "sum of normalization of all pixels in a bin"),
    ("sum_normalization2", "sum_normalization2", "sum of normalization squared of all pixels"),
    ("count", "count", "Number of pixels contributing to each bin"),
    ("Idev", "sem", "standard error of the mean"),
    ("sum_variance", "sum_variance", "Propagated variance, prior to normalization"),
)


def _curve_arrays(result: Any) -> list[tuple[str, np.ndarray]]:
    """The curve's arrays present in pyFAI's ``result``, in ``_CURVE`` order (``Idev`` and ``sum_variance``
    only when the result has a variance)."""
    out: list[tuple[str, np.ndarray]] = []
    for name, attribute, _ in _CURVE:
        if name in ("Idev", "sum_variance") and result.sum_variance is None:
            continue
        values = getattr(result, attribute)
        if values is not None:
            out.append((name, np.asarray(values)))
    return out


#: Frame templates (``_frame_template``), per geometry and curve layout; a few kept per process.
_FRAME_TEMPLATES: dict[tuple[Any, ...], bytes] = {}


def _frame_template(result: Any, arrays: list[tuple[str, np.ndarray]]) -> bytes:
    """The NXcanSAS file of one frame with every per-frame value left empty: the geometry's static part
    (``_static_image``) plus the entry's strings, the pyFAI process's date and ``integrate`` note, the sample
    group, SASdata with its attributes and the curve's datasets (their shapes and types those of ``arrays``),
    and our provenance note. Made once per (geometry, unit, curve layout) and process."""
    import h5py

    unit = str(result.unit)
    key = (json.dumps(result.poni.as_dict(), sort_keys=True, default=str), unit, str(result.unit.label),
           tuple((name, values.dtype.str, values.shape) for name, values in arrays))
    cached = _FRAME_TEMPLATES.get(key)
    if cached is not None:
        return cached
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(_static_image(result.poni))
    with h5py.File(h5py.h5f.open(b"template.h5", h5py.h5f.ACC_RDWR, fapl=fapl)) as h5:
        entry = h5["entry"]
        for name in ("title", "start_time", "end_time", "run"):
            entry[name] = ""
        process = entry["pyFAI"]
        process["date"] = ""
        integrate = process.create_group("integrate")
        integrate.attrs["NX_class"] = "NXnote"
        integrate["format"] = "text/json"
        integrate["data"] = ""

        sample = entry.create_group(_SAMPLE)
        sample.attrs.update({"NX_class": "NXsample", "canSAS_class": "SASsample"})
        sample["name"] = ""

        data = entry.create_group("sasdata")
        data.attrs.update({"NX_class": "NXdata", "canSAS_class": "SASdata", "signal": "I", "I_axes": "Q",
                           "Q_indices": 0, "timestamp": ""})
        data.attrs["axes"] = ["Q"]
        docs = {name: doc for name, _, doc in _CURVE}
        names = {name for name, _ in arrays}
        for name, values in arrays:
            dataset = data.create_dataset(name, shape=values.shape, dtype=values.dtype)
            if name == "Q":
                dataset.attrs.update({"units": "1/" + unit.split("_")[-1].split("^")[0] if unit.startswith("q")
                                      else unit, "long_name": str(result.unit.label), "interpretation": "spectrum"})
            elif name in ("I", "Idev"):
                dataset.attrs.update({"units": "arbitrary", "doc": docs[name], "interpretation": "spectrum"})
                if name == "I" and "Idev" in names:
                    dataset.attrs["uncertainties"] = "Idev"
            else:
                dataset.attrs["doc"] = docs[name]

        grp = entry.create_group("splash_reduction")
        grp.attrs["NX_class"] = "NXnote"
        grp["type"] = "application/json"
        grp["data"] = ""
        grp["poni"] = ""
        h5.flush()
        image: bytes = h5.id.get_file_image()
    if len(_FRAME_TEMPLATES) >= 8:
        _FRAME_TEMPLATES.clear()
    _FRAME_TEMPLATES[key] = image
    return image


#: In-memory NXcanSAS images holding what every frame of one geometry shares (``_static_image``), per geometry.
_STATIC_IMAGES: dict[str, bytes] = {}


def _static_image(geometry: Any) -> bytes:
    """The part of the NXcanSAS file that depends only on the geometry ``geometry`` (pyFAI's ``PoniFile`` of the
    result) and the software: the entry's attributes, the pyFAI process with its PONI, the instrument, detector
    and source; an HDF5 file image, made once per geometry and process."""
    import h5py

    poni_json = json.dumps(geometry.as_dict(), indent=2, default=str)
    cached = _STATIC_IMAGES.get(poni_json)
    if cached is not None:
        return cached
    versions = software_versions()
    with h5py.File("static.h5", "w", driver="core", backing_store=False) as h5:
        h5.attrs["default"] = "entry"
        h5.attrs["creator"] = "splash-flows"
        entry = h5.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "canSAS_class": "SASentry", "version": "1.1",
                            "default": "sasdata"})
        entry["program_name"] = "pyFAI"
        entry["definition"] = "NXcanSAS"
        entry["definition"].attrs["version"] = "1.1"

        process = entry.create_group("pyFAI")
        process.attrs.update({"NX_class": "NXprocess", "canSAS_class": "SASprocess"})
        process["name"] = "Azimuthal integration"
        process["sequence_index"] = 1
        process["program"] = "pyFAI"
        process["version"] = versions.get("pyFAI", "?")
        poni = process.create_group("poni")
        poni.attrs["NX_class"] = "NXnote"
        poni["data"] = poni_json
        poni["format"] = "text/json"

        instrument = entry.create_group("ALS 7.3.3")
        instrument.attrs.update({"NX_class": "NXinstrument", "canSAS_class": "SASinstrument"})
        instrument["name"] = "ALS 7.3.3"
        detector_name = type(geometry.detector).__name__
        detector = instrument.create_group(detector_name)
        detector.attrs.update({"NX_class": "NXdetector", "canSAS_class": "SASdetector"})
        detector["name"] = detector_name
        detector["config"] = json.dumps(geometry.detector.get_config(), default=str)
        for name, value, unit in (
            ("SDD", geometry.dist, "m"), ("x_position", -geometry.poni2, "m"), ("y_position", -geometry.poni1, "m"),
            ("roll", -geometry.rot3, "rad"), ("pitch", -geometry.rot2, "rad"), ("yaw", -geometry.rot1, "rad"),
            ("x_pixel_size", geometry.detector.pixel2, "m"), ("y_pixel_size", geometry.detector.pixel1, "m"),
            ("beam_center_x", geometry.poni2, "m"),  # NX_LENGTH (pyFAI wrote pixels labelled "m")
            ("beam_center_y", geometry.poni1, "m"),
        ):
            detector.create_dataset(name, data=float(value)).attrs["units"] = unit
        source = instrument.create_group("Advanced Light Source")
        source.attrs.update({"NX_class": "NXsource", "canSAS_class": "SASsource"})
        source["type"] = "synchrotron"
        source["name"] = "Advanced Light Source"
        source["probe"] = "x-ray"
        if geometry.wavelength:
            source.create_dataset("incident_wavelength", data=float(geometry.wavelength * 1e10)).attrs["units"] = \
                "angstrom"
        h5.flush()
        image: bytes = h5.id.get_file_image()
    if len(_STATIC_IMAGES) >= 8:
        _STATIC_IMAGES.clear()
    _STATIC_IMAGES[poni_json] = image
    return image


def _or_none(value: Any) -> float | str:
    return float(value) if value is not None else "None"


def _h5_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text) or "sample"


def write_dat(path: Path, reduction: Reduction, *, stem: str, settings: Settings, info: dict[str, Any]) -> None:
    """Three columns q, I, sigma with a commented header."""
    frame = reduction.frame
    header = [
        f"{stem}: azimuthal integration of ALS 7.3.3 frame(s) {', '.join(frame.sources)}",
        f"merge: {frame.merge}; exposure {frame.exposure_s:g} s; normalised by {frame.normalization:g} (monitor "
        f"{frame.monitor_name} {frame.monitor:g}, {frame.monitor_kind})",
        f"method: pyFAI integrate1d {list(settings.method)}, npt {settings.npt}, Poisson errors",
        f"calibration: {info.get('calibration', '?')}",
        "software: " + ", ".join(f"{k} {v}" for k, v in software_versions().items()),
        f"columns: q [{reduction.unit}]  I [arb. units]  sigma [arb. units]",
    ]
    # What np.savetxt(fmt="%.8e", comments="# ") writes, formatted in one %-operation instead of a Python-level
    # loop of one write per row (savetxt: ~90 ms for 2000 rows in bench/reduce.py). The q column is the same for
    # every frame of a geometry: its text is made once (``_q_column``) and only I and sigma are formatted.
    n = len(reduction.radial)
    values: list[Any] = [None] * (3 * n)
    values[0::3] = _q_column(reduction.radial)
    values[1::3] = np.asarray(reduction.intensity, dtype=np.float64).tolist()
    values[2::3] = np.asarray(reduction.sigma, dtype=np.float64).tolist()
    rows = ("%s %.8e %.8e\n" * n) % tuple(values)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# " + "\n# ".join(header) + "\n" + rows)


#: The q column of ``.dat`` files as text, per q axis (a few kept per process).
_Q_COLUMNS: dict[bytes, list[str]] = {}


def _q_column(radial: np.ndarray) -> list[str]:
    """``"%.8e"`` of every q of ``radial``, made once per q axis (pyFAI gives every frame of a geometry the same
    bin centres): a third of the ``.dat``'s formatting."""
    values = np.asarray(radial, dtype=np.float64)
    key = values.tobytes()
    cached = _Q_COLUMNS.get(key)
    if cached is None:
        cached = (("%.8e\n" * len(values)) % tuple(values.tolist())).split("\n")[:-1]
        if len(_Q_COLUMNS) >= 8:
            _Q_COLUMNS.clear()
        _Q_COLUMNS[key] = cached
    return cached


#: Colours of the I(q) plot (matplotlib's default blue; its band at 30 % on white).
_LINE = (31, 119, 180)
_BAND = (188, 214, 233)
_GRID = (222, 222, 222)
_INK = (0, 0, 0)


@functools.cache
def _font(size: int) -> Any:
    """Pillow's default font at ``size`` (loaded once per process: FreeType parses it on every load)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):  # pragma: no cover - older Pillow: the bitmap font
        return ImageFont.load_default()


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values (log axis) between ``10**lo`` and ``10**hi``: the decades, plus 2x and 5x when the span is
    under two decades."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    mantissas = (1.0,) if hi - lo >= 2 else (1.0, 2.0, 5.0)
    return [m * 10.0**d for d in decades for m in mantissas if lo - 1e-9 <= math.log10(m * 10.0**d) <= hi + 1e-9]


def _tick_label(value: float) -> str:
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) < 1e-9 and not -2 <= exponent <= 3:
        return f"1e{round(exponent)}"
    return f"{value:g}"


def plot_iq(path: Path, reduction: Reduction, *, title: str, size: tuple[int, int] = (480, 336)) -> None:
    """Log-log I(q) with a one-sigma band, decade grid and tick labels, drawn with numpy + Pillow.

    matplotlib (Agg) cost ~300 ms a figure, more than the integration itself (bench/reduce.py); this costs a
    few ms. Points with I <= 0 or q <= 0 cannot be drawn on log axes and are left out, as matplotlib did."""
    good = (reduction.intensity > 0) & (reduction.radial > 0) & np.isfinite(reduction.intensity)
    q, i, s = reduction.radial[good], reduction.intensity[good], np.nan_to_num(reduction.sigma[good])
    height = size[1]
    left, top, right, bottom = _iq_frame(size)
    font, small = _font(12), _font(10)
    ink, grid, band_ink, line_ink = _IQ_BLACK, _IQ_GRID, _IQ_BAND, _IQ_LINE
    if q.size >= 2:
        lq = np.log10(q)
        lo_band = np.log10(np.clip(i - s, i * 1e-3, None))
        hi_band = np.log10(i + s)
        x0, x1 = float(lq.min()), float(lq.max())
        y0, y1 = float(lo_band.min()), float(hi_band.max())
        if x1 - x0 < 1e-9:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 0.5, y1 + 0.5
        pad = 0.03 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def px(lx: np.ndarray) -> np.ndarray:
            return left + (lx - x0) / (x1 - x0) * (right - left)

        def py(ly: np.ndarray) -> np.ndarray:
            return bottom - (ly - y0) / (y1 - y0) * (bottom - top)

        # the q axis (grid, ticks, labels: drawn first, on white) is the same for every frame of a geometry:
        # drawn once per q range, then copied
        img = _iq_q_axis(size, x0, x1).copy()
        draw = _iq_draw(img)
        for value in _log_ticks(y0, y1):
            y = float(py(np.array(math.log10(value))))
            draw.line([(left, y), (right, y)], fill=grid)
            draw.line([(left - 4, y), (left, y)], fill=ink)
            draw.text((left - 6, y), _tick_label(value), fill=ink, font=small, anchor="rm")
        xs = px(lq)
        band = np.concatenate([np.column_stack([xs, py(hi_band)]), np.column_stack([xs, py(lo_band)])[::-1]])
        draw.polygon(band.ravel().tolist(), fill=band_ink)  # flat x, y list: no per-point tuples
        draw.line(np.column_stack([xs, py(np.log10(i))]).ravel().tolist(), fill=line_ink, width=1)
    else:
        img = _iq_blank(size)
        draw = _iq_draw(img)
        draw.text(((left + right) / 2, (top + bottom) / 2), "no positive intensity to plot", fill=ink,
                  font=font, anchor="mm")
    draw.rectangle([left, top, right, bottom], outline=ink)
    draw.text(((left + right) / 2, height - 6), _UNIT_LABELS.get(reduction.unit, reduction.unit), fill=ink,
              font=font, anchor="mb")
    draw.text(((left + right) / 2, 6), f"{title} ({reduction.frame.merge})", fill=ink, font=font, anchor="mt")
    img.paste(_rotated_label("I (arb. units)", bottom - top, palette=True), (4, top))
    img.save(path, format="PNG", compress_level=1)


def _iq_frame(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Left, top, right, bottom of the I(q) plot's axes box in a picture of ``size``."""
    width, height = size
    return 70, 26, width - 14, height - 46


def _iq_blank(size: tuple[int, int]) -> Any:
    """An empty I(q) picture: white, on the plot's palette."""
    from PIL import Image

    img = Image.new("P", size, _IQ_WHITE)
    img.putpalette(_iq_palette())
    return img


def _iq_draw(img: Any) -> Any:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    draw.fontmode = "L"  # anti-aliased text: blending indices is blending greys on this palette
    return draw


@functools.lru_cache(maxsize=8)
def _iq_q_axis(size: tuple[int, int], x0: float, x1: float) -> Any:
    """The I(q) picture with only its q axis drawn (vertical grid lines, ticks and labels for log10 q from
    ``x0`` to ``x1``), made once per q range and process; never drawn on (``plot_iq`` draws on a copy). The
    same pixels as drawing it on every frame: it is drawn first, on white, in the same order."""
    left, top, right, bottom = _iq_frame(size)
    img = _iq_blank(size)
    draw = _iq_draw(img)
    small = _font(10)
    for value in _log_ticks(x0, x1):
        x = float(left + (np.array(math.log10(value)) - x0) / (x1 - x0) * (right - left))
        draw.line([(x, top), (x, bottom)], fill=_IQ_GRID)
        draw.line([(x, bottom), (x, bottom + 4)], fill=_IQ_BLACK)
        draw.text((x, bottom + 6), _tick_label(value), fill=_IQ_BLACK, font=small, anchor="mt")
    return img


#: Palette of the I(q) plot, an 8-bit palette PNG (an RGB one cost twice the CPU to encode: Pillow tries five
#: row filters on RGB, none on a palette): indices 0..127 a grey ramp from black to white, so that Pillow's
#: anti-aliased text (which blends index values on a palette image) blends greys, then the plot's colours.
_IQ_BLACK, _IQ_WHITE, _IQ_LINE, _IQ_BAND, _IQ_GRID = 0, 127, 128, 129, 130


@functools.cache
def _iq_palette() -> bytes:
    greys = np.rint(np.linspace(0, 255, _IQ_WHITE + 1)).astype(np.uint8).repeat(3).reshape(-1, 3)
    colours = np.array([_LINE, _BAND, _GRID], dtype=np.uint8)
    return np.concatenate([greys, colours]).tobytes()


_UNIT_LABELS = {"q_nm^-1": "q (1/nm)", "q_A^-1": "q (1/Å)", "2th_deg": "2θ (deg)", "r_mm": "r (mm)"}


def _block_mean(image: np.ndarray, factor: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``factor x factor`` blocks as float32, the pixels where ``mask`` is True counted as 0 (edges that
    fill no whole block dropped).

    Summed row by row of each block, then column by column, from strided views, one block-row of the frame
    converted to float32 at a time: no full-size copy of the frame (``np.where(mask, 0, image)`` allocated 10 MB
    a 2M frame) and no reshape-sum (~2x slower). Together: ~7 -> ~3.5 ms of CPU a 2M frame (bench/reduce.py)."""
    if factor == 1:
        return np.where(mask, 0, image).astype(np.float32) if mask is not None else image.astype(np.float32)
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    trimmed = image[: rows * factor, : cols * factor]
    held = mask[: rows * factor, : cols * factor] if mask is not None else None
    summed = trimmed[0::factor].astype(np.float32)
    if held is not None:
        np.copyto(summed, 0, where=held[0::factor])
    for k in range(1, factor):
        part = trimmed[k::factor].astype(np.float32)
        if held is not None:
            np.copyto(part, 0, where=held[k::factor])
        summed += part
    out = summed[:, 0::factor].copy()
    for k in range(1, factor):
        out += summed[:, k::factor]
    out /= np.float32(factor * factor)
    return out


#: Block-reduced ring pictures, per (ring mask, block factor): the rings are one array per geometry and process
#: (``Integrators.rings``), so reducing them for every frame (two passes over 2.5 M pixels) is done once.
_RING_BLOCKS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _ring_blocks(rings: np.ndarray, factor: int, rows: int, cols: int) -> np.ndarray:
    """Which ``factor x factor`` blocks a ring touches (a ring is a pixel or two wide)."""
    key = (id(rings), factor)
    cached = _RING_BLOCKS.get(key)
    if cached is not None and cached[0] is rings:
        return cached[1]
    trimmed = rings[: rows * factor, : cols * factor]
    blocks = np.asarray(trimmed.reshape(rows, factor, cols * factor).any(axis=1).reshape(rows, cols, factor)
                        .any(axis=2))
    if len(_RING_BLOCKS) >= 8:
        _RING_BLOCKS.clear()
    _RING_BLOCKS[key] = (rings, blocks)  # the array itself is kept, so its id cannot be reused meanwhile
    return blocks


#: Palette of the frame picture: 254 viridis levels, then the mask colour, then the rings' white.
_MASK_INDEX, _RING_INDEX = 254, 255


@functools.cache
def _frame_palette() -> bytes:
    from splash_flows.beamlines.bl733.thumbnail import _viridis_lut

    lut = _viridis_lut()[np.linspace(0, 255, _MASK_INDEX).round().astype(np.intp)]
    extra = np.array([[178, 24, 43], [255, 255, 255]], dtype=np.uint8)
    return np.concatenate([lut, extra]).astype(np.uint8).tobytes()


def plot_frame(path: Path, reduction: Reduction, *, title: str, max_size: int = 480) -> None:
    """The frame on a log scale (block-mean downsampled to at most ``max_size`` pixels a side), masked pixels in
    red, the calibrant's rings (``Reduction.rings``) in white. Drawn with numpy and Pillow on the downsampled
    picture only, as an 8-bit palette PNG (a third of the bytes of RGB to compress: bench/reduce.py measured
    388 ms a frame for the full-size RGB picture)."""
    from PIL import Image

    image, mask = reduction.frame.image, reduction.mask
    factor = max(1, -(-max(image.shape) // max_size))
    factor = max(1, min(factor, *image.shape))  # a side shorter than a block still gives one row/column
    small = _block_mean(image, factor, mask)  # masked pixels count as 0
    rows, cols = small.shape
    # log(1 + x), then a 1 %..99.8 % percentile stretch to the palette's 254 levels (the percentiles from every
    # other block of every other row: the stretch of a picture, a quarter of the sorting). np.log of float32 is
    # vectorised, np.log1p is not: 0.4 vs 2.8 ms a 2M frame's picture, values within 1e-6
    logged = np.maximum(small, np.float32(0.0))
    logged += np.float32(1.0)
    np.log(logged, out=logged)
    lo, hi = (float(v) for v in np.percentile(logged[::2, ::2], [1.0, 99.8]))
    if not hi > lo:
        hi = lo + 1.0
    scaled = (logged - lo) * np.float32((_MASK_INDEX - 1) / (hi - lo))
    index = np.rint(np.clip(scaled, 0.0, _MASK_INDEX - 1, out=scaled)).astype(np.uint8)
    centre = factor // 2  # the mask sampled at each block's centre
    index[mask[centre::factor, centre::factor][:rows, :cols]] = _MASK_INDEX
    if reduction.rings is not None:  # a ring is a pixel or two wide: kept where it touches a block
        index[_ring_blocks(reduction.rings, factor, rows, cols)] = _RING_INDEX
    picture = Image.frombytes("P", (cols, rows), np.ascontiguousarray(index).tobytes())
    picture.putpalette(_frame_palette())
    # Huffman coding only: a detector picture's noise leaves deflate's string matching little to find (+7 % of
    # bytes), and skipping it halves the encoding (~4 -> ~2 ms a 2M frame, bench/reduce.py)
    picture.save(path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)


def _linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) between ``lo`` and ``hi``, about ``target`` of them."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, target)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def plot_qmap(path: Path, reduction: Reduction, *, title: str, size: tuple[int, int] = (480, 400)) -> None:
    """The q_ip / q_oop map of a grazing-incidence frame: log colour scale (1 %..99.8 % of the positive
    values, viridis, empty bins white), q_oop up, q axes with round ticks, a colour bar in decades; drawn with
    numpy + Pillow (matplotlib cost ~285 ms of CPU a map, more than the map's integration)."""
    from PIL import Image, ImageDraw

    gi = reduction.gi
    assert gi is not None
    width, height = size
    left, top, right, bottom = 64, 26, width - 92, height - 46
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(12), _font(10)
    data = np.asarray(gi.intensity, dtype=np.float64)
    positive = np.isfinite(data) & (data > 0)
    if positive.any():
        vmin, vmax = (float(v) for v in np.percentile(data[positive], [1.0, 99.8]))
    else:
        vmin, vmax = 1e-6, 1.0
    vmin = max(vmin, 1e-12)
    vmax = max(vmax, vmin * 10)
    lmin, lmax = math.log10(vmin), math.log10(vmax)
    levels = (np.log10(np.where(positive, data, vmin)) - lmin) * ((_MASK_INDEX - 1) / (lmax - lmin))
    index = np.rint(np.clip(levels, 0, _MASK_INDEX - 1)).astype(np.uint8)
    index[~positive] = _RING_INDEX  # white: no pixel fell in that bin
    picture = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index[::-1]).tobytes())
    picture.putpalette(_frame_palette())
    img.paste(picture.convert("RGB").resize((right - left, bottom - top), Image.Resampling.NEAREST), (left, top))

    x0, x1 = float(gi.q_ip[0]), float(gi.q_ip[-1])
    y0, y1 = float(gi.q_oop[0]), float(gi.q_oop[-1])
    for value in _linear_ticks(min(x0, x1), max(x0, x1)):
        x = left + (value - x0) / ((x1 - x0) or 1.0) * (right - left)
        draw.line([(x, bottom), (x, bottom + 4)], fill=_INK)
        draw.text((x, bottom + 6), f"{value:g}", fill=_INK, font=small, anchor="mt")
    for value in _linear_ticks(min(y0, y1), max(y0, y1)):
        y = bottom - (value - y0) / ((y1 - y0) or 1.0) * (bottom - top)
        draw.line([(left - 4, y), (left, y)], fill=_INK)
        draw.text((left - 6, y), f"{value:g}", fill=_INK, font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=_INK)

    bar_left, bar_right = right + 14, right + 28  # the colour bar, its decades labelled
    ramp = np.linspace(_MASK_INDEX - 1, 0, bottom - top).round().astype(np.uint8)[:, None]
    ramp = ramp.repeat(bar_right - bar_left, axis=1)
    bar = Image.frombytes("P", (ramp.shape[1], ramp.shape[0]), np.ascontiguousarray(ramp).tobytes())
    bar.putpalette(_frame_palette())
    img.paste(bar.convert("RGB"), (bar_left, top))
    draw.rectangle([bar_left, top, bar_right, bottom], outline=_INK)
    for value in _log_ticks(lmin, lmax):
        y = bottom - (math.log10(value) - lmin) / (lmax - lmin) * (bottom - top)
        draw.line([(bar_right, y), (bar_right + 4, y)], fill=_INK)
        draw.text((bar_right + 6, y), _tick_label(value), fill=_INK, font=small, anchor="lm")

    draw.text(((left + right) / 2, height - 6), "q_ip (1/nm)", fill=_INK, font=font, anchor="mb")
    draw.text(((left + right) / 2, 6), f"{title}: incident angle {gi.incident_angle_deg:.3f}°", fill=_INK, font=font,
              anchor="mt")
    img.paste(_rotated_label("q_oop (1/nm)", bottom - top), (4, top))
    img.paste(_rotated_label("I (arb. units)", bottom - top), (width - 20, top))
    img.save(path, format="PNG", compress_level=1)


@functools.cache
def _rotated_label(text: str, length: int, palette: bool = False) -> Any:
    """A vertical axis label (drawn and rotated once per process), RGB or on the I(q) plot's palette."""
    from PIL import Image, ImageDraw

    if palette:
        label = Image.new("P", (length, 16), _IQ_WHITE)
        label.putpalette(_iq_palette())
        draw = ImageDraw.Draw(label)
        draw.fontmode = "L"
        draw.text((length / 2, 8), text, fill=_IQ_BLACK, font=_font(12), anchor="mm")
    else:
        label = Image.new("RGB", (length, 16), "white")
        ImageDraw.Draw(label).text((length / 2, 8), text, fill=_INK, font=_font(12), anchor="mm")
    return label.rotate(90, expand=True)


def read_dat(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, I, sigma of a ``.dat`` written by ``write_dat``."""
    data = np.loadtxt(path, comments="#", ndmin=2)
    return data[:, 0], data[:, 1], data[:, 2]


def peak_near(q: np.ndarray, intensity: np.ndarray, expected: float, window: float = 0.15) -> float:
    """The q of the highest point of ``intensity`` within ``expected +- window`` (the peak of a calibrant ring)."""
    sel = (q > expected - window) & (q < expected + window) & np.isfinite(intensity)
    if not sel.any():
        raise ValueError(f"no point of the curve within {expected} +- {window}")
    return float(q[sel][np.argmax(intensity[sel])])
