"""Read (and write) the EDF images of the 7.3.3 Pilatus 2M, plus the header-less ``.gb`` float frames.

EDF = an ASCII header ``{ key = value ; ... }`` padded to a multiple of 512 bytes, then raw pixels.
A 2M frame is ~9.9 MB and cataloguing needs only the header, so :func:`read_edf_header` reads the first few
KiB and never the pixels. Corrupt or truncated content is recorded in ``EdfHeader.errors``; only a file that
cannot be opened raises ``MetadataError``. :func:`read_edf_image` raises ``MetadataError`` for anything it
cannot turn into an array, because there is no meaningful partial image.

This is a small reader for the uncompressed single-frame EDF the beamline writes, not a general EDF library
(``fabio`` is that; the tests check that fabio reads what :func:`write_edf` writes, and vice versa).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from splash_flows.errors import ConfigError, MetadataError

#: The beamline clock's zone: EDF ``Date`` values are local time there, without an offset.
DEFAULT_ZONE = "America/Los_Angeles"

#: Pilatus 2M frame shape as (rows, columns) = (Dim_2, Dim_1).
PILATUS2M_SHAPE: tuple[int, int] = (1679, 1475)

_BLOCK = 512
_FIRST_READ = 8 * _BLOCK
_MAX_HEADER = 1 << 20  # a header larger than 1 MiB is not a header

#: EDF ``DataType`` -> numpy kind+size (byte order added from ``ByteOrder``).
EDF_DTYPES: dict[str, str] = {
    "SignedByte": "i1",
    "UnsignedByte": "u1",
    "SignedShort": "i2",
    "UnsignedShort": "u2",
    "SignedInteger": "i4",
    "UnsignedInteger": "u4",
    "SignedLong": "i4",
    "UnsignedLong": "u4",
    "Signed64": "i8",
    "Unsigned64": "u8",
    "FloatValue": "f4",
    "Float": "f4",
    "FloatIEEE32": "f4",
    "DoubleValue": "f8",
    "Double": "f8",
    "DoubleIEEE64": "f8",
}
_BYTE_ORDERS = {"LowByteFirst": "<", "HighByteFirst": ">"}

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_WEEKDAYS = frozenset({"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"})


def beamline_zone(zone: str = DEFAULT_ZONE) -> ZoneInfo:
    """The ``ZoneInfo`` of a configured zone name. Raises ``ConfigError`` for an unknown name: the zone comes
    from configuration, and every timestamp would be wrong with a guessed one."""
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {zone!r} (an IANA name such as {DEFAULT_ZONE!r})") from exc


@dataclass
class EdfHeader:
    """The header of one EDF file.

    ``data_offset`` is where the pixels start; ``shape``/``dtype`` are None when the header does not say
    (recorded in ``errors``). ``file_size`` lets a caller see truncation without reading pixels.
    """

    source: str
    values: dict[str, str] = field(default_factory=dict)
    data_offset: int | None = None
    file_size: int = 0
    shape: tuple[int, int] | None = None
    dtype: np.dtype[np.generic] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def date(self) -> str | None:
        """The raw ``Date`` text (ctime style, beamline local time), or None."""
        return self.values.get("Date")

    @property
    def count_time_s(self) -> float | None:
        """``count_time`` in seconds, or None if absent or not a number."""
        text = self.values.get("count_time")
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            return None

    @property
    def expected_size(self) -> int | None:
        """Bytes the file must have for header + pixels, when the header says enough to know."""
        if self.data_offset is None or self.shape is None or self.dtype is None:
            return None
        return self.data_offset + self.shape[0] * self.shape[1] * self.dtype.itemsize


def parse_ctime(text: str, zone: str = DEFAULT_ZONE) -> datetime:
    """Parse a ctime-style date (``Mon Mar 25 17:06:51 2024``, local time in ``zone``) into an aware datetime.

    Locale-independent (does not use ``strptime``'s ``%a``/``%b``). The weekday is optional and not checked
    against the date, since it carries no information. During the autumn DST overlap the earlier instant
    is chosen (``fold=0``): the header has no offset to disambiguate. Raises ``ValueError`` if the text is not
    such a date or the zone is unknown.
    """
    parts = text.split()
    if parts and parts[0][:3] in _WEEKDAYS and len(parts) == 5:
        parts = parts[1:]
    if len(parts) != 4:
        raise ValueError(f"not a ctime date: {text!r}")
    month_name, day, clock, year = parts
    month = _MONTHS.get(month_name[:3].title())
    if month is None:
        raise ValueError(f"not a ctime date (month {month_name!r}): {text!r}")
    hms = clock.split(":")
    if len(hms) != 3:
        raise ValueError(f"not a ctime date (time {clock!r}): {text!r}")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {zone!r}") from exc
    seconds = float(hms[2])
    whole = int(seconds)
    return datetime(
        int(year), month, int(day), int(hms[0]), int(hms[1]), whole,
        round((seconds - whole) * 1_000_000), tzinfo=tz,
    )


def read_edf_header(path: Path, *, label: str | None = None) -> EdfHeader:
    """Read only the header block of an EDF file (a few KiB, never the pixels).

    Raises ``MetadataError`` if the file cannot be opened. A missing ``{``/``}``, bad lines, an unknown data
    type or a file shorter than header + pixels are recorded in ``errors``; whatever was parsed is returned.
    """
    name = label if label is not None else str(path)
    header = EdfHeader(source=name)
    try:
        with path.open("rb") as fh:
            header.file_size = os.fstat(fh.fileno()).st_size
            head = fh.read(_FIRST_READ)
            while b"}" not in head and len(head) < _MAX_HEADER:
                more = fh.read(_FIRST_READ)
                if not more:
                    break
                head += more
    except OSError as exc:
        raise MetadataError(f"cannot read EDF: {exc.strerror or exc}", path=name) from exc

    start = len(head) - len(head.lstrip())
    if not head[start:start + 1] == b"{":
        header.errors.append(f"{name}: not an EDF file (no '{{' header start)")
        return header
    end = head.find(b"}", start)
    if end < 0:
        header.errors.append(f"{name}: EDF header not closed by '}}' within {len(head)} bytes (truncated?)")
        end = len(head)
    else:
        offset = end + 1
        if head[offset:offset + 1] == b"\r":
            offset += 1
        if head[offset:offset + 1] == b"\n":
            offset += 1
        header.data_offset = offset
    text = head[start + 1:end].decode("latin-1")
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        line = line.removesuffix(";").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            header.errors.append(f"{name}: EDF header line is not 'key = value ;': {line[:80]!r}")
            continue
        header.values[key.strip()] = value.strip()
    _interpret(header)
    return header


def _interpret(header: EdfHeader) -> None:
    """Derive shape and dtype from the header values and check the file is long enough for its pixels."""
    name, values = header.source, header.values
    try:
        dim1, dim2 = int(values["Dim_1"]), int(values["Dim_2"])
        if dim1 <= 0 or dim2 <= 0:
            raise ValueError("non-positive dimension")
        header.shape = (dim2, dim1)
    except KeyError as exc:
        header.errors.append(f"{name}: EDF header has no {exc.args[0]}")
    except ValueError:
        header.errors.append(
            f"{name}: EDF Dim_1/Dim_2 not positive integers: {values.get('Dim_1')!r}/{values.get('Dim_2')!r}"
        )
    kind = EDF_DTYPES.get(values.get("DataType", ""))
    order = _BYTE_ORDERS.get(values.get("ByteOrder", "LowByteFirst"))
    if kind is None:
        header.errors.append(f"{name}: EDF DataType unknown or missing: {values.get('DataType')!r}")
    elif order is None:
        header.errors.append(f"{name}: EDF ByteOrder unknown: {values.get('ByteOrder')!r}")
    else:
        header.dtype = np.dtype(order + kind)
    if "Compression" in values and values["Compression"].lower() not in ("", "none"):
        header.errors.append(f"{name}: EDF compression {values['Compression']!r} is not supported")
    expected = header.expected_size
    if expected is not None and header.file_size < expected:
        header.errors.append(
            f"{name}: truncated EDF: {header.file_size} bytes, header + pixels need {expected}"
        )
    size_text = values.get("Size")
    if header.shape is not None and header.dtype is not None and size_text is not None:
        pixels = header.shape[0] * header.shape[1] * header.dtype.itemsize
        if size_text.strip() != str(pixels):
            header.errors.append(
                f"{name}: EDF Size {size_text!r} does not match Dim_1*Dim_2*itemsize={pixels}"
            )


def read_edf_image(path: Path, *, label: str | None = None) -> npt.NDArray[np.generic]:
    """Load the pixels of an EDF file as a (rows, columns) array in native byte order.

    Raises ``MetadataError`` if the file cannot be read, the header does not describe the pixels, or the file
    is shorter than its pixels.
    """
    name = label if label is not None else str(path)
    header = read_edf_header(path, label=name)
    expected = header.expected_size
    if expected is None or header.shape is None or header.dtype is None or header.data_offset is None:
        raise MetadataError("cannot load EDF pixels: " + "; ".join(header.errors), path=name)
    if header.file_size < expected:
        raise MetadataError(f"truncated EDF: {header.file_size} bytes, need {expected}", path=name)
    count = header.shape[0] * header.shape[1]
    try:
        data = np.fromfile(path, dtype=header.dtype, count=count, offset=header.data_offset)
    except OSError as exc:
        raise MetadataError(f"cannot read EDF pixels: {exc.strerror or exc}", path=name) from exc
    if data.size != count:
        raise MetadataError(f"truncated EDF: {data.size} of {count} pixels", path=name)
    return data.reshape(header.shape).astype(header.dtype.newbyteorder("="), copy=False)


def read_gb_image(
    path: Path, shape: tuple[int, int] = PILATUS2M_SHAPE, *, label: str | None = None
) -> npt.NDArray[np.float32]:
    """Load a ``.gb`` frame: raw little-endian float32, ``shape`` = (rows, columns), no header at all.

    Raises ``MetadataError`` if the file cannot be read or its size is not exactly ``rows*columns*4`` bytes
    (there is no header to tell a truncated file from a different shape, so the shape must be known).
    """
    name = label if label is not None else str(path)
    need = shape[0] * shape[1] * 4
    try:
        size = path.stat().st_size
        if size != need:
            raise MetadataError(
                f".gb frame has {size} bytes, a {shape[0]}x{shape[1]} float32 frame has {need}", path=name
            )
        data = np.fromfile(path, dtype="<f4", count=shape[0] * shape[1])
    except OSError as exc:
        raise MetadataError(f"cannot read .gb frame: {exc.strerror or exc}", path=name) from exc
    return data.reshape(shape).astype(np.float32, copy=False)


def format_edf_header(values: dict[str, str]) -> bytes:
    """Encode header values as an EDF header block: ``{\\n key = value ;\\n ... }\\n`` padded with spaces so
    the block is a multiple of 512 bytes (what the EDF convention and fabio expect)."""
    body = "{\n" + "".join(f"{key} = {value} ;\n" for key, value in values.items())
    raw = body.encode("latin-1")
    total = -(-(len(raw) + 2) // _BLOCK) * _BLOCK
    return raw + b" " * (total - len(raw) - 2) + b"}\n"


def edf_bytes(data: npt.NDArray[np.generic], header: dict[str, str]) -> bytes:
    """Encode ``data`` (2-D) as a single-frame little-endian EDF: ``header`` first, then the shape/type keys
    derived from the array (``ByteOrder``, ``DataType``, ``Dim_1``, ``Dim_2``, ``Size``; a key already in
    ``header`` keeps its position but gets the derived value), then the pixels.
    """
    if data.ndim != 2:
        raise ValueError(f"EDF data must be 2-D, got shape {data.shape}")
    little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    kind = f"{little.dtype.kind}{little.dtype.itemsize}"
    names = {v: k for k, v in reversed(EDF_DTYPES.items())}  # first name listed wins
    if kind not in names:
        raise ValueError(f"no EDF DataType for numpy dtype {data.dtype}")
    values = dict(header)
    values.update({
        "ByteOrder": "LowByteFirst",
        "DataType": names[kind],
        "Dim_1": str(data.shape[1]),
        "Dim_2": str(data.shape[0]),
        "Size": str(little.nbytes),
    })
    return format_edf_header(values) + little.tobytes()


def write_edf(path: Path, data: npt.NDArray[np.generic], header: dict[str, str]) -> None:
    """Write :func:`edf_bytes` to ``path`` directly (the caller handles temporary names)."""
    path.write_bytes(edf_bytes(data, header))
