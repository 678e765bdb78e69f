"""Grouping tier-relative paths into scans: exposures, hi/lo sets with their .gb, exclusions, other files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splash_flows.beamlines.bl733.scans import classify, group_scans
from splash_flows.errors import PathEscapeError

HILO = [
    "u/p/d/s1_hi_2m.edf", "u/p/d/s1_hi_2m.txt", "u/p/d/s1_lo_2m.edf", "u/p/d/s1_lo_2m.txt",
    "u/p/d/s1_sfloat_2m.gb",
]


def test_exposure_pair_is_one_scan() -> None:
    [scan] = group_scans(["p/d/sample_scan_2m.txt", "p/d/sample_scan_2m.edf"])
    assert scan.key == "p/d/sample_scan_2m"
    assert (scan.folder, scan.stem, scan.kind, scan.catalogue) == ("p/d", "sample_scan_2m", "exposure", True)
    assert scan.paths == ["p/d/sample_scan_2m.edf", "p/d/sample_scan_2m.txt"]
    assert scan.detector == "2m"


def test_hi_lo_and_gb_are_one_scan_keyed_by_the_scan_stem() -> None:
    [scan] = group_scans(reversed(HILO))
    assert scan.key == "u/p/d/s1" and scan.kind == "hilo"
    assert scan.paths == sorted(HILO)
    assert [f.role for f in scan.by_role("hi")] == ["hi", "hi"]
    assert scan.by_role("merged")[0].path == "u/p/d/s1_sfloat_2m.gb"


def test_key_is_stable_across_batches() -> None:
    """Files of one scan arriving in different batches give the same key (idempotent ingest)."""
    keys = {group_scans([p])[0].key for p in HILO}
    assert keys == {"u/p/d/s1"}


def test_same_stem_in_other_folders_are_different_scans() -> None:
    scans = group_scans(["a/x_2m.edf", "b/x_2m.edf", "x_2m.edf"])
    assert [s.key for s in scans] == ["a/x_2m", "b/x_2m", "x_2m"]


@pytest.mark.parametrize(
    "name",
    ["autoexpose_0001_2m.edf", "AgBh_autoexpose_hi_2m.edf", "beamstop_test_3.txt", "BEAMSTOP_TEST.edf"],
)
def test_alignment_frames_are_not_catalogued(name: str) -> None:
    [scan] = group_scans([f"p/{name}"])
    assert scan.catalogue is False


def test_exclusion_list_is_configurable() -> None:
    assert group_scans(["p/autoexpose_2m.edf"], exclude=[])[0].catalogue is True
    assert group_scans(["p/blank_2m.edf"], exclude=["blank"])[0].catalogue is False


def test_other_files_are_single_file_scans_keyed_by_full_name() -> None:
    scans = group_scans(["p/cal.poni", "p/cal.edf", "p/README", "p/.hidden"])
    by_key = {s.key: s for s in scans}
    assert by_key["p/cal.poni"].kind == "other" and by_key["p/cal.poni"].catalogue
    assert by_key["p/cal"].kind == "exposure"  # never merged with cal.poni
    assert by_key["p/README"].files[0].ext == ""
    assert by_key["p/.hidden"].files[0].ext == ""


def test_extensions_are_case_insensitive_and_duplicates_collapse() -> None:
    [scan] = group_scans(["p/S_HI_2M.EDF", "p/S_HI_2M.EDF", "p/S_lo_2m.txt"])
    assert scan.key == "p/S" and len(scan.files) == 2 and scan.files[0].ext == "edf"


def test_plain_exposure_sharing_a_hilo_stem_joins_the_hilo_scan() -> None:
    [scan] = group_scans(["p/s1.edf", "p/s1_hi_2m.edf"])
    assert scan.kind == "hilo" and len(scan.files) == 2


def test_unknown_detector_token_is_a_plain_exposure() -> None:
    folder, stem, kind, f = classify("p/s_hi_9z.edf")
    assert (folder, stem, kind, f.role) == ("p", "s_hi_9z", "exposure", "single")
    assert classify("p/s_hi_9z.edf", detectors=["9z"])[2] == "hilo"


@pytest.mark.parametrize("bad", ["/abs/x.edf", "../x.edf", "a/../../x.edf", "a/"])
def test_paths_leaving_the_tier_are_refused(bad: str) -> None:
    with pytest.raises(PathEscapeError):
        group_scans([bad])


_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(st.lists(st.tuples(st.sampled_from(["", "a", "a/b"]), _name), max_size=20))
def test_every_path_lands_in_exactly_one_scan(items: list[tuple[str, str]]) -> None:
    paths = [f"{d}/{n}" if d else n for d, n in items]
    scans = group_scans(paths)
    grouped = [p for s in scans for p in s.paths]
    assert sorted(grouped) == sorted(set(paths))
    assert len({s.key for s in scans}) == len(scans)
    for s in scans:
        assert all(p.startswith(f"{s.folder}/") or not s.folder for p in s.paths)
