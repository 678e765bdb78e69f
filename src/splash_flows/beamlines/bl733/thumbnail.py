"""PNG previews of 7.3.3 frames for the catalogue (EDF images and ``.gb`` float merges).

Scattering intensity spans ~6 decades, so a linear picture is black with one white dot. The recipe:

1. negative pixels (Pilatus module gaps are -1, bad pixels -2) and non-finite values -> 0;
2. block-mean downsample so the longer side is at most ``max_size`` (before any scaling: cheap, and averaging
   counts is physically meaningful, averaging logs is not);
3. ``log1p`` then a percentile stretch (``low_pct``..``high_pct``) to 0..255, so a few hot pixels do not wash
   out the rings;
4. a viridis (default) or grey colour map, encoded by Pillow.

No matplotlib: a 9-point viridis table interpolated to 256 entries is close enough for a thumbnail.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from splash_flows.beamlines.bl733.edf import PILATUS2M_SHAPE, read_edf_image, read_gb_image
from splash_flows.errors import MetadataError

Colormap = Literal["viridis", "gray"]

#: viridis sampled at 0, 1/8, ..., 1 (RGB 0-255).
_VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ],
    dtype=np.float64,
)


def _viridis_lut() -> npt.NDArray[np.uint8]:
    x = np.linspace(0.0, 1.0, 256)
    xp = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    channels = [np.interp(x, xp, _VIRIDIS_ANCHORS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


def block_mean(image: npt.NDArray[np.floating], max_size: int) -> npt.NDArray[np.float64]:
    """Downsample by an integer factor (mean of ``f x f`` blocks) so both sides are <= ``max_size``.

    The edges that do not fill a whole block are dropped (at most ``f - 1`` pixels), except when the image is
    smaller than a block, where it is kept whole.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    rows, cols = image.shape
    factor = max(1, -(-max(rows, cols) // max_size))
    if factor == 1:
        return image.astype(np.float64)
    r, c = max(rows // factor, 1), max(cols // factor, 1)
    fr, fc = min(factor, rows), min(factor, cols)
    trimmed = image[: r * fr, : c * fc].astype(np.float64)
    out: npt.NDArray[np.float64] = trimmed.reshape(r, fr, c, fc).mean(axis=(1, 3))
    return out


def scale_to_bytes(
    image: npt.NDArray[np.floating], low_pct: float = 1.0, high_pct: float = 99.5
) -> npt.NDArray[np.uint8]:
    """``log1p`` of the clipped non-negative values, stretched between two percentiles to 0..255."""
    logged = np.log1p(np.clip(np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None))
    lo, hi = np.percentile(logged, [low_pct, high_pct])
    if not hi > lo:
        hi = lo + 1.0
    scaled = (logged - lo) / (hi - lo)
    out: npt.NDArray[np.uint8] = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def load_frame(path: Path, *, gb_shape: tuple[int, int] = PILATUS2M_SHAPE) -> npt.NDArray[np.float64]:
    """Pixels of an ``.edf`` or ``.gb`` file as float64. Raises ``MetadataError`` for other extensions or
    unreadable files."""
    ext = path.suffix.lower()
    if ext == ".edf":
        return read_edf_image(path).astype(np.float64)
    if ext == ".gb":
        return read_gb_image(path, gb_shape).astype(np.float64)
    raise MetadataError(f"no thumbnail for {ext or 'extension-less'} files", path=str(path))


def thumbnail_png(
    path: Path,
    max_size: int = 256,
    *,
    colormap: Colormap = "viridis",
    gb_shape: tuple[int, int] = PILATUS2M_SHAPE,
) -> bytes:
    """A PNG preview of an EDF image or ``.gb`` frame whose longer side is at most ``max_size`` pixels.

    ``gb_shape`` is the (rows, columns) of a ``.gb`` file, which has no header (default: the Pilatus 2M).
    Raises ``MetadataError`` if the file cannot be read as an image; the caller decides whether a missing
    preview matters (it should not stop cataloguing).
    """
    small = block_mean(load_frame(path, gb_shape=gb_shape), max_size)
    return png_bytes(scale_to_bytes(small), colormap)


def png_bytes(grey: npt.NDArray[np.uint8], colormap: Colormap = "viridis") -> bytes:
    """Encode 8-bit intensities as a PNG, through the colour map."""
    if colormap == "viridis":
        picture = Image.fromarray(_viridis_lut()[grey])  # (h, w, 3) uint8 -> RGB
    else:
        picture = Image.fromarray(grey)  # (h, w) uint8 -> L
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()
