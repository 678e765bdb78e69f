"""Parse the ``.txt`` sidecar the 7.3.3 control system writes beside every image.

Layout (see ``shared/reference/bl733/sample_scan_2m.txt``)::

    401.000                 <- three bare numbers: Izero, Diode normalization, I1 normalization
    10440.000
    235561.000
    Izero: 401.000          <- "Key: value" lines (keys contain spaces, '#', parentheses)
    ...
    Motors: 64              <- section counter: the next 64 non-blank lines belong to "Motors"
    ...
    DIOs: 14
    ...
    AIs: 38
    ...
    !0                      <- end marker; without it the file is truncated

Rules this parser follows, and why:

- It never raises on content. A sidecar is evidence of an acquisition that already happened; a garbled line
  must not stop the scan from being moved and catalogued. Every problem is appended to ``Sidecar.errors``
  (each message names the file) and everything readable is kept.
- Duplicate keys are kept in order (``Izero`` is in the header and in AIs, ``M1 Pitch`` in Motors and AIs).
  ``entries`` is the full ordered list; ``as_dict()`` gives a flat view in which later occurrences get the
  section appended (``"Izero (AIs)"``) so nothing is overwritten.
- Values are floats where the text is a number (``NaN`` included) and strings otherwise; the raw text is kept
  too, because ids such as ``ALS Proposal #: 00622`` must never become ``622.0``.
- Counter lines (``Motors: N`` ...) are section markers, not entries. Blank lines are skipped and not counted.
- Lines after ``!0`` are still kept (with an error): losing data is worse than an odd file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from splash_flows.errors import MetadataError

#: Names of the three unnamed numbers at the top of a sidecar, in file order.
LEADING_NAMES: tuple[str, ...] = ("Izero", "Diode normalization", "I1 normalization")

#: Keys that announce a counted section (``Motors: 64``).
SECTION_KEYS: frozenset[str] = frozenset({"Motors", "DIOs", "AIs"})

#: Section name of the ``Key: value`` lines before the first counter.
HEADER_SECTION = "header"
#: Section name of lines that follow a completed section without a new counter (unexpected; recorded).
UNSECTIONED = "unsectioned"
#: Section name of lines after the ``!0`` end marker (unexpected; recorded).
TRAILER_SECTION = "after end marker"

END_MARKER = "!0"

#: Keys whose values are identifiers or text even when they look like numbers.
TEXT_KEYS: frozenset[str] = frozenset(
    {"ALS Proposal #", "ALS ESAF #", "PI", "Calibration image path", "Normalize by"}
)

KEY_PROPOSAL = "ALS Proposal #"
KEY_ESAF = "ALS ESAF #"
KEY_PI = "PI"
KEY_EXPOSURE = "Exposure time s"
KEY_ALPHA = "Sample Alpha Stage"

_NUMBER = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE
)
_COUNTER = re.compile(r"[0-9]+")  # ASCII digits only

Value = float | str


def parse_value(text: str) -> Value:
    """The float a value text denotes (``NaN`` -> nan), or the stripped text itself if it is not a number.

    Stricter than ``float()``: ``1_000`` or ``0x10`` stay text, because the control system never writes them.
    """
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    return stripped


@dataclass(frozen=True)
class SidecarEntry:
    """One ``Key: value`` line: its section, key, parsed value, raw value text and 1-based line number."""

    section: str
    key: str
    value: Value
    raw: str
    line: int


@dataclass
class Sidecar:
    """Everything read from one sidecar. Fields of interest are lifted out of ``entries`` for convenience;
    they are None when the key is absent or empty (an absent key is also recorded in ``errors`` only for
    the proposal, the one field the pipeline cannot do without)."""

    source: str
    leading: list[float] = field(default_factory=list)
    entries: list[SidecarEntry] = field(default_factory=list)
    sections: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    errors: list[str] = field(default_factory=list)
    proposal: str | None = None
    esaf: str | None = None
    pi: str | None = None
    exposure_time_s: float | None = None
    alpha_deg: float | None = None

    def first(self, key: str) -> SidecarEntry | None:
        """The first entry with this key (the header one for duplicated keys), or None."""
        for entry in self.entries:
            if entry.key == key:
                return entry
        return None

    def all(self, key: str) -> list[SidecarEntry]:
        """Every entry with this key, in file order."""
        return [entry for entry in self.entries if entry.key == key]

    def as_dict(self) -> dict[str, Value]:
        """Flat ``{key: value}`` view that keeps duplicates distinguishable (see :func:`unique_keys`)."""
        return {name: entry.value for name, entry in unique_keys(self.entries)}


def unique_keys(entries: list[SidecarEntry]) -> list[tuple[str, SidecarEntry]]:
    """Give every entry a distinct name: the key itself for its first occurrence, ``"key (Section)"`` for a
    later one, and ``"key (Section) 2"``, ``3`` ... if even that is taken (same key twice in one section)."""
    taken: set[str] = set()
    named: list[tuple[str, SidecarEntry]] = []
    for entry in entries:
        name = entry.key
        if name in taken:
            name = f"{entry.key} ({entry.section})"
            n = 2
            while name in taken:
                name = f"{entry.key} ({entry.section}) {n}"
                n += 1
        taken.add(name)
        named.append((name, entry))
    return named


def read_sidecar(path: Path, *, label: str | None = None) -> Sidecar:
    """Read and parse the sidecar at ``path``. ``label`` (default: the path) names the file in error messages;
    pass the tier-relative path so messages are meaningful everywhere.

    Raises ``MetadataError`` only if the file cannot be opened/read; bad content is recorded in ``errors``.
    """
    name = label if label is not None else str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"cannot read sidecar: {exc.strerror or exc}", path=name) from exc
    decode_error: str | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The control system writes ASCII; a stray byte should not lose the rest of the file.
        text = data.decode("latin-1")
        decode_error = f"{name}: not valid UTF-8 (byte {exc.start}); read as Latin-1"
    sidecar = parse_sidecar_text(text, source=name)
    if decode_error is not None:
        sidecar.errors.insert(0, decode_error)
    return sidecar


def parse_sidecar_text(text: str, *, source: str = "<text>") -> Sidecar:
    """Parse sidecar text. Never raises; problems are recorded in ``errors`` prefixed with ``source``."""
    sc = Sidecar(source=source)
    lines = text.splitlines()
    i = 0
    # 1. Leading bare numbers (up to three), skipping blank lines.
    while i < len(lines) and len(sc.leading) < len(LEADING_NAMES):
        stripped = lines[i].strip()
        if not stripped:
            i += 1
            continue
        value = parse_value(stripped)
        if ":" in stripped or not isinstance(value, float):
            break
        sc.leading.append(value)
        i += 1
    if len(sc.leading) < len(LEADING_NAMES):
        sc.errors.append(
            f"{source}: expected {len(LEADING_NAMES)} leading numbers "
            f"({', '.join(LEADING_NAMES)}), found {len(sc.leading)}"
        )

    section = HEADER_SECTION
    remaining = 0  # lines still owed to the current counted section
    trailer_reported = False
    for index in range(i, len(lines)):
        lineno = index + 1
        stripped = lines[index].strip()
        if not stripped:
            continue
        if stripped == END_MARKER and not sc.complete:
            if remaining > 0:
                sc.errors.append(
                    f"{source}: section {section} announced {sc.sections[section]} lines, "
                    f"{remaining} missing before the end marker"
                )
            sc.complete = True
            section, remaining = TRAILER_SECTION, 0
            continue
        key, sep, raw = stripped.partition(":")
        key, raw = key.strip(), raw.strip()
        if sep and key in SECTION_KEYS and _COUNTER.fullmatch(raw) and not sc.complete:
            if remaining > 0:
                sc.errors.append(
                    f"{source}: section {section} announced {sc.sections[section]} lines, "
                    f"only {sc.sections[section] - remaining} followed before {key}"
                )
            if key in sc.sections:
                sc.errors.append(f"{source}: line {lineno}: section {key} appears twice")
            section, remaining = key, int(raw)
            sc.sections[key] = remaining
            continue
        if sc.complete and not trailer_reported:
            trailer_reported = True
            sc.errors.append(f"{source}: content after the end marker {END_MARKER!r} (line {lineno}), kept")
        if section in SECTION_KEYS:
            if remaining > 0:
                remaining -= 1
            else:
                section = UNSECTIONED
                sc.errors.append(f"{source}: line {lineno}: more lines than the last section announced")
        if not sep:
            sc.errors.append(f"{source}: line {lineno}: not a 'Key: value' line: {stripped[:80]!r}")
            continue
        if not key:
            sc.errors.append(f"{source}: line {lineno}: empty key")
        parsed: Value = raw if key in TEXT_KEYS else parse_value(raw)
        sc.entries.append(SidecarEntry(section=section, key=key, value=parsed, raw=raw, line=lineno))

    if not sc.complete:
        if remaining > 0:
            sc.errors.append(
                f"{source}: section {section} announced {sc.sections[section]} lines, {remaining} missing"
            )
        sc.errors.append(
            f"{source}: truncated: no end marker {END_MARKER!r} ({len(sc.entries)} entries read and kept)"
        )
    _lift_fields(sc)
    return sc


def _lift_fields(sc: Sidecar) -> None:
    """Fill the convenience fields from the first occurrence of their keys."""
    sc.proposal = _text(sc, KEY_PROPOSAL)
    sc.esaf = _text(sc, KEY_ESAF)
    sc.pi = _text(sc, KEY_PI)
    sc.exposure_time_s = _number(sc, KEY_EXPOSURE)
    sc.alpha_deg = _number(sc, KEY_ALPHA)
    if sc.proposal is None:
        sc.errors.append(f"{sc.source}: no {KEY_PROPOSAL!r} value")


def _text(sc: Sidecar, key: str) -> str | None:
    entry = sc.first(key)
    if entry is None or not entry.raw:
        return None
    return entry.raw


def _number(sc: Sidecar, key: str) -> float | None:
    entry = sc.first(key)
    if entry is None:
        return None
    if isinstance(entry.value, float) and not math.isnan(entry.value):
        return entry.value
    if not (isinstance(entry.value, float) and math.isnan(entry.value)):
        sc.errors.append(f"{sc.source}: line {entry.line}: {key!r} is not a number: {entry.raw[:40]!r}")
    return None
