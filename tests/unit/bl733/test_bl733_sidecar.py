"""The sidecar parser against the real sample layout and against damaged or arbitrary text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bl733_helpers import SAMPLE_SIDECAR
from hypothesis import given, settings
from hypothesis import strategies as st

from splash_flows.beamlines.bl733.sidecar import (
    HEADER_SECTION,
    SECTION_KEYS,
    parse_sidecar_text,
    parse_value,
    read_sidecar,
    unique_keys,
)
from splash_flows.errors import MetadataError, SplashFlowsError


def test_sample_fields_counters_and_leading_numbers() -> None:
    sc = read_sidecar(SAMPLE_SIDECAR)
    assert sc.errors == []
    assert sc.complete
    assert sc.leading == [401.0, 10440.0, 235561.0]
    assert sc.sections == {"Motors": 64, "DIOs": 14, "AIs": 38}
    assert (sc.proposal, sc.esaf, sc.pi) == ("00622", "00622-001", "PILastname")
    assert sc.exposure_time_s == 10.0
    assert sc.alpha_deg == pytest.approx(0.130909)
    # 9 header lines + every line each counter announced
    assert [sum(e.section == s for e in sc.entries) for s in (HEADER_SECTION, "Motors", "DIOs", "AIs")] == [
        9, 64, 14, 38,
    ]


def test_counted_sections_assign_the_following_lines() -> None:
    sc = read_sidecar(SAMPLE_SIDECAR)
    section_of = {e.key: e.section for e in sc.entries}
    assert section_of["Sample X Stage"] == "Motors"  # first line after "Motors: 64"
    assert section_of["EPOS2"] == "Motors"  # 64th
    assert section_of["SAXS Protector"] == "DIOs"
    assert section_of["Slit Bottom Good"] == "DIOs"  # 14th
    assert section_of["TC"] == "AIs"  # last before !0
    assert section_of["Calibration image path"] == HEADER_SECTION


def test_duplicate_keys_are_kept_not_overwritten() -> None:
    sc = read_sidecar(SAMPLE_SIDECAR)
    assert [(e.section, e.value) for e in sc.all("Izero")] == [(HEADER_SECTION, 401.0), ("AIs", 401.0)]
    assert [(e.section, e.value) for e in sc.all("M1 Pitch")] == [("Motors", 0.202033), ("AIs", 0.202057)]
    xtal = sc.all("Xtal2 Pico 1")
    assert [e.section for e in xtal] == ["Motors", "AIs"]
    assert xtal[0].value == 0.0 and math.isnan(float(xtal[1].value))
    d = sc.as_dict()
    assert d["M1 Pitch"] == 0.202033 and d["M1 Pitch (AIs)"] == 0.202057
    assert d["Izero (AIs)"] == 401.0
    assert len(d) == len(sc.entries)  # nothing lost in the flat view


def test_same_key_twice_in_one_section_gets_a_counter() -> None:
    entries = parse_sidecar_text("1\n2\n3\nA: 1\nA: 2\nA: 3\n!0\n").entries
    assert [name for name, _ in unique_keys(entries)] == ["A", "A (header)", "A (header) 2"]


def test_values_nan_text_and_ids() -> None:
    sc = read_sidecar(SAMPLE_SIDECAR)
    d = sc.as_dict()
    assert isinstance(d["Pyro"], float) and math.isnan(d["Pyro"])
    assert d["Normalize by"] == "Diode"
    assert d["Calibration image path"] == "/spot733-data/raw/userdata"
    assert d["ALS Proposal #"] == "00622"  # an id, never 622.0
    assert d["ABS(Vertical Beam Position)"] != d["ABS(Vertical Beam Position)"]  # NaN
    assert parse_value(" -1.5e3 ") == -1500.0
    assert parse_value("1_000") == "1_000"
    assert parse_value("") == ""


def test_truncated_sidecar_keeps_what_was_read(sample_text: str) -> None:
    cut = "\n".join(sample_text.splitlines()[:50]) + "\n"  # inside the Motors section, no !0
    sc = parse_sidecar_text(cut, source="x/trunc.txt")
    assert not sc.complete
    assert len(sc.entries) == 50 - 3 - 1  # minus leading numbers and the Motors counter
    assert sc.proposal == "00622"
    assert any("truncated" in e and "x/trunc.txt" in e for e in sc.errors)
    assert any("Motors" in e and "missing" in e for e in sc.errors)


def test_short_section_and_extra_lines_are_recorded() -> None:
    sc = parse_sidecar_text("1\n2\n3\nMotors: 3\nA: 1\nAIs: 1\nB: 2\nC: 3\n!0\n", source="s")
    assert [(e.section, e.key) for e in sc.entries] == [
        ("Motors", "A"), ("AIs", "B"), ("unsectioned", "C"),
    ]
    assert any("Motors announced 3 lines, only 1" in e for e in sc.errors)
    assert any("more lines than the last section announced" in e for e in sc.errors)


def test_missing_leading_numbers_and_content_after_end() -> None:
    sc = parse_sidecar_text("ALS Proposal #: 1\n!0\nlate: 5\n", source="s")
    assert sc.leading == []
    assert any("leading numbers" in e for e in sc.errors)
    assert sc.complete and sc.entries[-1].key == "late"
    assert any("after the end marker" in e for e in sc.errors)


def test_unreadable_sidecar_raises_typed_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(MetadataError, match=r"nope\.txt") as info:
        read_sidecar(missing, label="p/nope.txt")
    assert isinstance(info.value, SplashFlowsError)
    assert info.value.path == "p/nope.txt"


def test_non_utf8_bytes_are_read_as_latin1(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"1\n2\n3\nPI: M\xfcller\n!0\n")
    sc = read_sidecar(path)
    assert sc.pi == "Müller"
    assert any("UTF-8" in e for e in sc.errors)


_line = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(["Motors", "AIs", "DIOs", "Izero", "PI", "A b#(c)"]),
              st.one_of(st.integers(0, 5).map(str), st.text(max_size=10), st.just("NaN"))),
    st.sampled_from(["!0", "401.000", "", "NaN"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=30))
def test_parser_never_raises_and_keeps_every_key_line(lines: list[str]) -> None:
    text = "\n".join(lines)
    sc = parse_sidecar_text(text, source="h")  # must not raise
    # every non-blank "k: v" line is an entry, except section counters before the first !0 and the leading
    # bare numbers (which never contain ':')
    expected: list[str] = []
    ended = False
    for raw in text.splitlines():
        s = raw.strip()
        if s == "!0" and not ended:
            ended = True
            continue
        key, sep, value = s.partition(":")
        if not sep:
            continue
        if not ended and key.strip() in SECTION_KEYS and value.strip().isdigit() and value.strip().isascii():
            continue
        expected.append(key.strip())
    assert [e.key for e in sc.entries] == expected
    assert sc.complete == ended
    assert all(e.startswith("h: ") for e in sc.errors)
