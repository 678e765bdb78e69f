"""PNG previews of EDF and .gb frames: valid, bounded in size, log-scaled, refusing what is not an image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from bl733_helpers import put
from PIL import Image

from splash_flows.beamlines.bl733.edf import PILATUS2M_SHAPE, edf_bytes
from splash_flows.beamlines.bl733.thumbnail import block_mean, scale_to_bytes, thumbnail_png
from splash_flows.errors import MetadataError


def _rings(shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    rows, cols = np.indices(shape)
    r = np.hypot(rows - shape[0] * 0.55, cols - shape[1] * 0.5)
    out: npt.NDArray[np.float64] = 5.0 + 1e4 * np.exp(-r / 30.0) + 500.0 * (np.sin(r / 6.0) > 0.95)
    return out


def _open(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def test_full_size_edf_thumbnail_is_a_bounded_png(tmp_path: Path) -> None:
    frame = _rings(PILATUS2M_SHAPE).astype(np.int32)
    frame[:, 487:494] = -1  # a module gap
    path = put(tmp_path, "s_2m.edf", edf_bytes(frame, {"Date": "Mon Mar 25 17:06:51 2024"}))
    img = _open(thumbnail_png(path))
    assert max(img.size) <= 256 and img.mode == "RGB"
    assert img.size == (1475 // 7, 1679 // 7)  # block factor ceil(1679/256) = 7


def test_gb_thumbnail_and_grey_colormap(tmp_path: Path) -> None:
    frame = _rings(PILATUS2M_SHAPE).astype("<f4")
    frame[0, 0] = np.nan
    path = put(tmp_path, "s_sfloat_2m.gb", frame.tobytes())
    img = _open(thumbnail_png(path, max_size=100, colormap="gray"))
    assert max(img.size) <= 100 and img.mode == "L"


def test_small_gb_needs_its_shape(tmp_path: Path) -> None:
    path = put(tmp_path, "s_sfloat_2m.gb", _rings((64, 64)).astype("<f4").tobytes())
    assert _open(thumbnail_png(path, gb_shape=(64, 64))).size == (64, 64)
    with pytest.raises(MetadataError):
        thumbnail_png(path)


@pytest.mark.parametrize(("name", "data"), [("x.txt", b"1\n2\n"), ("x.edf", b"{\nDim_1 = 9 ;\n}\n")])
def test_not_an_image_raises_typed_error(tmp_path: Path, name: str, data: bytes) -> None:
    with pytest.raises(MetadataError):
        thumbnail_png(put(tmp_path, name, data))


def test_log_stretch_shows_faint_rings_next_to_a_bright_centre() -> None:
    """Linear scaling would put a 1e4-count centre at 255 and 5-count background at 0 with faint rings
    invisible; after log1p + percentile stretch the faint ring band is clearly above background."""
    img = np.full((100, 100), 5.0)
    img[40:60, 40:60] = 1e4  # bright centre: 4 % of the pixels, so it sets the upper percentile
    img[10:12, :] = 50.0  # faint ring band
    out = scale_to_bytes(img)
    assert out.dtype == np.uint8
    assert out[50, 50] == 255 and out[30, 0] == 0
    assert out[10, 0] > 50  # linear scaling would give (50 - 5) / 1e4 * 255 ~ 1


def test_block_mean_preserves_mean_and_bounds() -> None:
    img = np.arange(1679 * 1475, dtype=np.float64).reshape(1679, 1475)
    small = block_mean(img, 256)
    assert max(small.shape) <= 256
    assert small[0, 0] == pytest.approx(img[:7, :7].mean())
    assert block_mean(np.ones((3, 1000)), 10).shape == (1, 10)
    with pytest.raises(ValueError):
        block_mean(img, 0)
