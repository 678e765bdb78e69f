"""The bundle planner: properties (hypothesis) and the beamline's naming and cycle rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from splash_flows.beamlines.bl733.cycles import UNASSIGNED, BeamCycle, beam_cycle, proposal_of_path
from splash_flows.services.archive.plan import (
    ArchivableFile,
    PlanLimits,
    htar_path_problem,
    packed_size,
    plan_bundles,
)

ZONE = "America/Los_Angeles"
BASE = datetime(2025, 1, 1, tzinfo=UTC)

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.é", min_size=1, max_size=80).filter(
    lambda s: s not in (".", ".."))
proposals = st.sampled_from(["00622", "ALS-01234", "notes"])


@st.composite
def files(draw: st.DrawFn) -> list[ArchivableFile]:
    n = draw(st.integers(0, 40))
    out = []
    for i in range(n):
        parts = [draw(proposals), *draw(st.lists(segment, min_size=0, max_size=3)), draw(segment)]
        size = draw(st.integers(0, 3000))
        when = BASE + timedelta(days=draw(st.integers(0, 800)), hours=draw(st.integers(0, 23)))
        out.append(ArchivableFile(i + 1, "/".join(parts), size, f"{i:032x}", when))
    unique = {f.path: f for f in out}
    return list(unique.values())


limits_st = st.builds(lambda target, extra, single: PlanLimits(target, target + extra + 20_480, single),
                      st.integers(1, 5000), st.integers(0, 5000), st.integers(1, 2000)).filter(
    lambda lim: lim.single_file_bytes <= lim.max_bytes // 2)


@settings(max_examples=80, deadline=None)
@given(files(), limits_st)
def test_every_file_exactly_once_no_bundle_over_cap_long_paths_alone(fs: list[ArchivableFile],
                                                                     limits: PlanLimits) -> None:
    plan = plan_bundles(fs, limits, zone=ZONE)
    seen = [m.file_id for b in plan.bundles for m in b.members]
    assert sorted(seen) == sorted(f.file_id for f in fs)  # exactly once, nothing dropped
    names = [b.name for b in plan.bundles]
    assert len(names) == len(set(names))
    for b in plan.bundles:
        assert b.packed_size <= limits.max_bytes or b.kind == "file"
        if b.kind == "tar":
            assert all(htar_path_problem(m.path) is None for m in b.members)
            assert all(m.size <= limits.single_file_bytes for m in b.members)
            assert b.size <= limits.target_bytes or len(b.members) == 1
            assert {proposal_of_path(m.path) for m in b.members} == {b.proposal}
            assert {str(beam_cycle(m.acquired_at, ZONE)) for m in b.members} == {b.cycle}
            assert b.name == f"{b.proposal}/{b.proposal}_{b.cycle}_part{b.part:03d}.tar"
        else:
            assert len(b.members) == 1 and b.why_alone


@settings(max_examples=60, deadline=None)
@given(files(), limits_st, st.randoms())
def test_deterministic_whatever_the_order(fs: list[ArchivableFile], limits: PlanLimits, rnd: object) -> None:
    shuffled = list(fs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan_bundles(fs, limits, zone=ZONE) == plan_bundles(shuffled, limits, zone=ZONE)


@settings(max_examples=60, deadline=None)
@given(files(), limits_st, st.data())
def test_replanning_the_rest_after_a_partial_record_never_reuses_a_name(fs: list[ArchivableFile],
                                                                        limits: PlanLimits,
                                                                        data: st.DataObject) -> None:
    """A crash after some bundles were recorded: re-planning the files not yet in a bundle (with numbering
    continued from the recorded parts) gives no second bundle for recorded files and no name twice."""
    first = plan_bundles(fs, limits, zone=ZONE)
    k = data.draw(st.integers(0, len(first.bundles)))
    recorded = first.bundles[:k]
    taken = {m.file_id for b in recorded for m in b.members}
    next_part: dict[tuple[str, str], int] = {}
    for b in recorded:
        if b.kind == "tar":
            next_part[(b.proposal, b.cycle)] = max(next_part.get((b.proposal, b.cycle), 1), b.part + 1)
    rest = plan_bundles([f for f in fs if f.file_id not in taken], limits, zone=ZONE, next_part=next_part)
    assert not {m.file_id for b in rest.bundles for m in b.members} & taken
    assert not {b.name for b in rest.bundles} & {b.name for b in recorded}
    # and re-planning with nothing left plans nothing
    assert plan_bundles([], limits, zone=ZONE).bundles == []


def test_htar_limits() -> None:
    assert htar_path_problem("a/" + "b" * 99) is None
    assert htar_path_problem("a/" + "b" * 100) is not None          # name part over 99 bytes
    assert htar_path_problem("p" * 154 + "/" + "n" * 99) is None     # exactly at both limits
    assert htar_path_problem("p" * 155 + "/" + "n" * 99) is not None
    assert htar_path_problem("é" * 50) is not None                   # 100 bytes in UTF-8, no '/'


def test_big_and_long_files_go_alone_and_names_follow_the_beamline() -> None:
    when = datetime(2026, 7, 16, 8, tzinfo=UTC)  # 01:00 on Jul 16 in California: cycle 2
    long_name = "ALS-00622/20260716/" + "x" * 120 + ".edf"
    fs = [ArchivableFile(1, "00622/20260716/a.edf", 10, "c1", when),
          ArchivableFile(2, "00622/20260716/big.edf", 500, "c2", when),
          ArchivableFile(3, long_name, 5, "c3", when),
          ArchivableFile(4, "00622/20260716/b.edf", 10, "c4", when - timedelta(hours=9))]  # Jul 15 local
    plan = plan_bundles(fs, PlanLimits(100, 100_000, 100), zone=ZONE)
    by_name = {b.name: b for b in plan.bundles}
    assert set(by_name) == {"ALS-00622/ALS-00622_2026-1_part001.tar", "ALS-00622/ALS-00622_2026-2_part001.tar",
                            "ALS-00622/ALS-00622_2026-2_files/00622/20260716/big.edf",
                            f"ALS-00622/ALS-00622_2026-2_files/{long_name}"}
    assert "threshold" in str(by_name["ALS-00622/ALS-00622_2026-2_files/00622/20260716/big.edf"].why_alone)
    assert "htar" in str(by_name[f"ALS-00622/ALS-00622_2026-2_files/{long_name}"].why_alone)
    again = plan_bundles(fs[:1], PlanLimits(100, 100_000, 100), zone=ZONE, next_part={("ALS-00622", "2026-2"): 4})
    assert again.bundles[0].name == "ALS-00622/ALS-00622_2026-2_part004.tar"


def test_cycles_and_proposals() -> None:
    assert beam_cycle(datetime(2026, 1, 1, 9, tzinfo=UTC), ZONE) == BeamCycle(2026, 1)
    assert beam_cycle(datetime(2026, 1, 1, 7, tzinfo=UTC), ZONE) == BeamCycle(2025, 2)  # Dec 31 local
    assert str(beam_cycle(datetime(2026, 12, 31, 12, tzinfo=UTC), ZONE)) == "2026-2"
    assert proposal_of_path("als-622/x/y.edf") == UNASSIGNED  # not 5 digits: not a proposal folder
    assert proposal_of_path("ALS-00622/x/y.edf") == "ALS-00622"
    assert proposal_of_path("y.edf") == UNASSIGNED


def test_packed_size_matches_tarfile(tmp_path: object) -> None:
    import io
    import tarfile

    sizes = [0, 1, 511, 512, 513, 10_000]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, s in enumerate(sizes):
            info = tarfile.TarInfo(f"f{i}")
            info.size = s
            tar.addfile(info, io.BytesIO(b"x" * s))
    assert len(buf.getvalue()) == packed_size(sizes)
