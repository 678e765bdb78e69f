"""EDF header/image reading: the cheap header path, damage handling, dates in the beamline zone, fabio
interop."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import fabio
import numpy as np
import pytest
from bl733_helpers import put

from splash_flows.beamlines.bl733.edf import (
    edf_bytes,
    parse_ctime,
    read_edf_header,
    read_edf_image,
    read_gb_image,
    write_edf,
)
from splash_flows.errors import MetadataError

HEADER = {
    "HeaderID": "EH:000001:000000:000000",
    "Image": "1",
    "VersionNumber": "0.10",
    "Date": "Mon Mar 25 17:06:51 2024",
    "count_time": "10.000000000",
    "title": "# Pixel_size 172e-6 m x 172e-6 m",
    "run": "0",
}


def _frame() -> np.ndarray:
    return (np.arange(30 * 20, dtype=np.int32).reshape(30, 20) - 5)


def test_header_only_read_gives_keys_shape_dtype(tmp_path: Path) -> None:
    path = tmp_path / "a.edf"
    write_edf(path, _frame(), HEADER)
    h = read_edf_header(path)
    assert h.errors == []
    assert h.values["Date"] == "Mon Mar 25 17:06:51 2024"
    assert h.count_time_s == 10.0
    assert h.shape == (30, 20) and h.dtype == np.dtype("<i4")
    assert h.data_offset == 512 and h.expected_size == path.stat().st_size


class _CountingReader:
    """Wraps a binary file and counts the bytes read through it."""

    def __init__(self, fh: BinaryIO, counter: list[int]) -> None:
        self._fh, self._counter = fh, counter

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._counter.append(len(data))
        return data

    def fileno(self) -> int:
        return self._fh.fileno()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def test_header_read_does_not_touch_the_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full-size 2M file: reading its header reads a few KiB, not the ~9.9 MB of pixels."""
    path = tmp_path / "big.edf"
    write_edf(path, np.zeros((1679, 1475), np.int32), HEADER)
    counter: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        return _CountingReader(real_open(self, *args, **kwargs), counter)

    monkeypatch.setattr(Path, "open", counting_open)
    h = read_edf_header(path)
    assert h.shape == (1679, 1475) and h.errors == []
    assert 0 < sum(counter) <= 64 * 1024


def test_fabio_reads_what_we_write_and_we_read_what_fabio_writes(tmp_path: Path) -> None:
    ours = tmp_path / "ours.edf"
    write_edf(ours, _frame(), HEADER)
    img = fabio.open(str(ours))
    np.testing.assert_array_equal(img.data, _frame())
    assert img.header["Date"] == HEADER["Date"]

    theirs = tmp_path / "theirs.edf"
    fabio.edfimage.EdfImage(data=_frame(), header=dict(HEADER)).write(str(theirs))
    assert read_edf_header(theirs).errors == []
    np.testing.assert_array_equal(read_edf_image(theirs), _frame())


def test_truncated_edf_is_recorded_and_image_load_refuses(tmp_path: Path) -> None:
    data = edf_bytes(_frame(), HEADER)
    path = put(tmp_path, "t.edf", data[: len(data) - 100])
    h = read_edf_header(path, label="p/t.edf")
    assert h.values["Date"] == HEADER["Date"]  # header still read
    assert any("truncated" in e and "p/t.edf" in e for e in h.errors)
    with pytest.raises(MetadataError, match="truncated"):
        read_edf_image(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not an EDF"),
        (b"\x00\x01garbage" * 100, "not an EDF"),
        (b"{\nDim_1 = 4 ;\nDim_2 = 3 ;\nDataType = SignedInteger ;\n", "not closed"),
        (b"{\nDim_1 = four ;\nDim_2 = 3 ;\nDataType = SignedInteger ;\n}\n", "Dim_1/Dim_2"),
        (b"{\nDim_1 = 4 ;\nDim_2 = 3 ;\nDataType = Quaternion ;\n}\n", "DataType"),
        (b"{\nDim_1 = 4 ;\nDim_2 = 3 ;\nno equals sign here ;\n}\n", "not 'key = value"),
    ],
)
def test_corrupt_headers_are_recorded_not_raised(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = put(tmp_path, "c.edf", content)
    h = read_edf_header(path)
    assert any(fragment in e for e in h.errors), h.errors
    with pytest.raises(MetadataError):
        read_edf_image(path)


def test_unopenable_edf_raises_typed_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"gone\.edf"):
        read_edf_header(tmp_path / "gone.edf")


def test_ctime_in_the_beamline_zone() -> None:
    summer = parse_ctime("Mon Mar 25 17:06:51 2024")  # PDT
    assert summer.utcoffset() is not None
    assert summer.astimezone(UTC) == datetime(2024, 3, 26, 0, 6, 51, tzinfo=UTC)
    winter = parse_ctime("Fri Jan  5 09:00:00 2024")  # PST, ctime pads the day with a space
    assert winter.astimezone(UTC) == datetime(2024, 1, 5, 17, 0, tzinfo=UTC)
    assert parse_ctime("Mar 25 17:06:51 2024", "UTC") == datetime(2024, 3, 25, 17, 6, 51, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["", "yesterday", "Mon Foo 25 17:06:51 2024", "Mon Mar 25 17:06 2024"])
def test_ctime_rejects_non_dates(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ctime(bad)


def test_ctime_rejects_unknown_zone() -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_ctime("Mon Mar 25 17:06:51 2024", "Mars/Olympus_Mons")


def test_gb_shape_must_match(tmp_path: Path) -> None:
    frame = np.linspace(-1, 5, 12, dtype="<f4").reshape(3, 4)
    path = put(tmp_path, "x_sfloat_2m.gb", frame.tobytes())
    np.testing.assert_array_equal(read_gb_image(path, (3, 4)), frame)
    with pytest.raises(MetadataError, match="bytes"):
        read_gb_image(path)  # default 2M shape
