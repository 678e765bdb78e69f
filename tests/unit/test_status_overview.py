"""``status``: totals, filters, late and refused files counted in SQL (both backends), and the 80-column layout."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from splash_flows.cli.catalog import short_pids
from splash_flows.cli.main import app
from splash_flows.cli.status import COPY_STATES, elide_path, parse_state, status_table
from splash_flows.ledger import CopyState, EventKind, Ledger, NewSource
from splash_flows.ledger import overview as ov
from splash_flows.ledger.store import FileStatus, migration_head

TARGETS = ("lamarr", "cfs")


def _fill(ledger: Ledger) -> None:
    """a/1..4: verified on both targets except a/3 (failed on cfs) and a/4 (no copy on cfs yet); b/5 verified
    everywhere then pruned on data733; one refused path twice, one refused then registered."""
    srcs = ledger.register_sources("data733", [NewSource(p, 10 * i, 0.0, "xxh3_128", f"c{i}") for i, p in
                                               enumerate(["a/1.edf", "a/2.edf", "a/3.edf", "a/4.edf", "b/5.edf"], 1)])
    by = {s.path: s for s in srcs}
    for tier in TARGETS:
        for s in srcs:
            if (s.path, tier) in {("a/3.edf", "cfs"), ("a/4.edf", "cfs")}:
                continue
            ledger.record_verified(s, tier, checksum=s.checksum, size=s.size, skipped=False)
    ledger.record_failed("a/3.edf", "cfs", "cfs:a/3.edf: disk full", source=by["a/3.edf"])
    ledger.record_failed("x/secret.edf", "data733", "export-controlled", kind=EventKind.REFUSED)
    ledger.record_failed("x/secret.edf", "data733", "export-controlled (again)", kind=EventKind.REFUSED)
    ledger.record_failed("a/1.edf", "data733", "missing then", kind=EventKind.REFUSED)
    from sqlalchemy import update

    from splash_flows.ledger.models import Copy

    with ledger.session() as sess:
        sess.execute(update(Copy).where(Copy.file_id == by["b/5.edf"].id, Copy.tier == "data733")
                     .values(state=CopyState.PRUNED))


def test_totals_filters_late_and_refused(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    _fill(ledger)
    whole = ov.totals(ledger)
    assert (whole.files, whole.bytes) == (5, 150)
    assert whole.tiers["cfs"] == {"verified": 3, "failed": 1}
    assert whole.tiers["data733"] == {"verified": 4, "pruned": 1}
    assert whole.copies_on("lamarr") == 5

    failed = ov.StatusFilter(states=((None, "failed"),))
    assert [r.path for r in ov.status_page(ledger, failed).rows] == ["a/3.edf"]
    assert ov.totals(ledger, failed).tiers["cfs"] == {"failed": 1}
    assert [r.path for r in ov.status_page(ledger, ov.StatusFilter(states=(("lamarr", "failed"),))).rows] == []
    assert [r.path for r in ov.status_page(ledger, ov.StatusFilter(prefix="b/")).rows] == ["b/5.edf"]
    assert ov.status_page(ledger, ov.StatusFilter(prefix="B/")).rows == []  # exact, even on SQLite

    page = ov.status_page(ledger, limit=2, after=("data733", "a/1.edf"))
    assert [r.path for r in page.rows] == ["a/2.edf", "a/3.edf"]
    assert page.rows[1].copies["cfs"].error == "cfs:a/3.edf: disk full"
    assert [r.path for p in ov.iter_status(ledger, chunk=2) for r in p.rows] == [
        "a/1.edf", "a/2.edf", "a/3.edf", "a/4.edf", "b/5.edf"]

    later = datetime.now(UTC) + timedelta(minutes=1)
    earlier = datetime.now(UTC) - timedelta(minutes=10)
    # a/3 failed on cfs, a/4 has no cfs copy: late; b/5 was pruned on data733 but is safe on both targets
    late = ov.StatusFilter(late_before=later, targets=TARGETS)
    assert [r.path for r in ov.status_page(ledger, late).rows] == ["a/3.edf", "a/4.edf"]
    assert ov.count_late(ledger, later, TARGETS) == 2
    assert ov.count_late(ledger, later, TARGETS, whole=whole) == 2
    assert ov.count_late(ledger, earlier, TARGETS, whole=whole) == 0

    refused = ov.refusals(ledger)
    assert [(r.path, r.reason, r.times) for r in refused] == [("x/secret.edf", "export-controlled (again)", 2)]
    assert ov.count_refused(ledger) == 1
    ledger.close()


def test_count_late_shortcuts_agree_with_the_full_query(ledger_url: str) -> None:
    """The fast paths of count_late (every copy row present / all safe) give what the per-file query gives."""
    ledger = Ledger.open(ledger_url)
    srcs = ledger.register_sources("data733", [NewSource(f"f{i}", 1, 0.0, "xxh3_128", "c") for i in range(4)])
    later = datetime.now(UTC) + timedelta(minutes=1)
    for step, src in enumerate(srcs):
        for tier in TARGETS:
            assert ov.count_late(ledger, later, TARGETS, whole=ov.totals(ledger)) == ov.count_late(
                ledger, later, TARGETS), (step, tier)
            ledger.record_failed(src.path, tier, "boom", source=src)
            assert ov.count_late(ledger, later, TARGETS, whole=ov.totals(ledger)) == ov.count_late(
                ledger, later, TARGETS)
            ledger.record_verified(src, tier, checksum="c", size=1, skipped=False)
    assert ov.count_late(ledger, later, TARGETS, whole=ov.totals(ledger)) == 0
    ledger.close()


def test_copy_states_listed_by_the_cli_are_the_ledgers() -> None:
    assert set(COPY_STATES) == {s.value for s in CopyState}
    assert set(ov.SAFE_STATES) | set(ov.UNSAFE_STATES) == set(CopyState)


def test_fast_migration_head_agrees_with_alembic(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}", upgrade=False)
    assert migration_head() == ledger.head_revision()
    ledger.close()


def test_fast_migration_head_is_none_when_unsure(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('revision = "a"\ndown_revision = None\n')
    (tmp_path / "b.py").write_text('revision = "b"\ndown_revision = "a"\n')
    assert migration_head(tmp_path) == "b"
    (tmp_path / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')  # two heads
    assert migration_head(tmp_path) is None
    (tmp_path / "d.py").write_text('revision = "d"\ndown_revision = ("b", "c")\n')  # merged
    assert migration_head(tmp_path) == "d"
    (tmp_path / "e.py").write_text("REVISION = compute()\n")
    assert migration_head(tmp_path) is None


@pytest.mark.parametrize("path,width,expected", [
    ("a/b.edf", 40, "a/b.edf"),
    ("ALS-00622/20261130/AgBh_0001_2m.edf", 30, "ALS-00…261130/AgBh_0001_2m.edf"),
    ("ALS-00622/20261130/AgBh_0001_2m.edf", 20, "…/AgBh_0001_2m.edf"),
    ("ALS-00622/20261130/AgBh_0001_2m.edf", 10, "AgBh_0001_2m.edf"),
    ("a_very_long_name_without_folder.edf", 10, "a_very_long_name_without_folder.edf"),
])
def test_elide_path_never_cuts_the_name(path: str, width: int, expected: str) -> None:
    out = elide_path(path, width)
    assert out == expected
    assert out.endswith(path.rsplit("/", 1)[-1])
    assert len(out) <= width or out == path.rsplit("/", 1)[-1]


def test_parse_state() -> None:
    assert parse_state("failed") == (None, "failed")
    assert parse_state("cfs:at_risk") == ("cfs", "at_risk")
    with pytest.raises(Exception, match="must be one of"):
        parse_state("broken")


def _plain(table: object, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_status_table_fits_80_columns_and_keeps_every_name() -> None:
    now = datetime.now(UTC)
    from splash_flows.ledger.store import CopyInfo

    ok = CopyInfo("verified", "c", now, None)
    rows = [FileStatus(f"ALS-00622/20261130/sample_with_a_long_name_{i:04d}_saxs_2m.edf", "data733", 9_900_000,
                       "xxh3_128", "c", now, {"cfs": ok, "data733": ok, "lamarr": CopyInfo("failed", None, None, "x")})
            for i in range(3)]
    text = _plain(status_table(rows, ["data733", "lamarr", "cfs"], {}, width=80), 80)
    assert max(len(line) for line in text.splitlines() if not line.startswith("ledger ")) <= 80
    for r in rows:
        assert r.path.rsplit("/", 1)[-1] in text
    assert "failed" in text and "…" in text


def test_file_names_are_shown_as_they_are_not_as_markup() -> None:
    # a name is text: "[sample]" is not a style tag and ":smile:" not an emoji (both were eaten before)
    from splash_flows.cli.status import refusals_table
    from splash_flows.ledger.reads import Refusal
    from splash_flows.ledger.store import CopyInfo

    now = datetime.now(UTC)
    names = ["ALS/[sample]_1.edf", "ALS/[bold red]x:smile:.edf"]
    rows = [FileStatus(n, "data733", 10, "xxh3_128", "c", now, {"lamarr": CopyInfo("verified", "c", now, None)})
            for n in names]
    text = _plain(status_table(rows, ["data733", "lamarr"], {}, width=80), 80)
    assert all(n in text for n in names)
    refused = _plain(refusals_table([Refusal("data733", names[0], "[dim]odd[/] :smile:", now, 1)]), 80)
    assert names[0] in refused and "[dim]odd[/] :smile:" in refused


def test_short_pids_are_unique_prefixes() -> None:
    pids = ["embedded/0123456789ab", "embedded/0123456799cd", "embedded/ffff0000aaaa"]
    short = short_pids(pids)
    assert short == {pids[0]: "012345678", pids[1]: "012345679", pids[2]: "ffff0000"}


def test_status_command_on_a_ledger(config_file: Path) -> None:
    from splash_flows.config import load_config_file

    cfg = load_config_file(config_file)
    ledger = Ledger.open(cfg.ledger.url_value())
    _fill(ledger)
    ledger.close()
    runner = CliRunner()
    env = {"COLUMNS": "80"}
    out = runner.invoke(app, ["--config", str(config_file), "status"], env=env)
    assert out.exit_code == 0, out.output
    text = out.output
    head, _, table = text.partition("files 1-5 of 5")
    assert "5 file(s)" in head and re.search(r"cfs\s+3\s+1", head) and "late: 0" in head
    assert "refused: 1 path(s) (--all lists them)" in head
    assert all(f"{n}.edf" in table for n in range(1, 6))
    assert max(len(line) for line in text.splitlines() if not line.startswith("ledger ")) <= 80
    out = runner.invoke(app, ["--config", str(config_file), "status", "--state", "cfs:failed", "--all"], env=env)
    assert out.exit_code == 0, out.output
    assert "a/3.edf" in out.output and "a/1.edf" not in out.output.split("refused path")[0]
    assert "x/secret.edf" in out.output and "export-controlled (again)" in out.output
    out = runner.invoke(app, ["--config", str(config_file), "status", "--late", "--late-after", "0", "--json"])
    assert [r["path"] for r in json.loads(out.stdout)] == ["a/3.edf", "a/4.edf"]
    rows = json.loads(runner.invoke(app, ["--config", str(config_file), "status", "--json"]).stdout)
    assert set(rows[0]) == {"path", "source_tier", "size", "checksum_alg", "checksum", "detected_at", "copies",
                            "catalogue"}
    assert len(rows) == 5
    out = runner.invoke(app, ["--config", str(config_file), "status", "--state", "nonsense"])
    assert out.exit_code == 2


def test_long_running_commands_log_prefect_polling_only_when_verbose() -> None:
    import logging

    from splash_flows.cli.common import configure_logging

    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level
    try:
        configure_logging(verbose=False)
        assert not httpx_logger.isEnabledFor(logging.INFO)  # "HTTP Request: POST .../flow_runs/filter" x2/s
        configure_logging(verbose=True)
        assert httpx_logger.isEnabledFor(logging.INFO)
    finally:
        httpx_logger.setLevel(before)


def test_the_config_up_writes_says_up(tmp_path: Path) -> None:
    from splash_flows.cli.demo import write_demo_config

    assert "`splash-flows up`" in write_demo_config(tmp_path, by="up").read_text().splitlines()[0]
    assert "`splash-flows demo`" in write_demo_config(tmp_path).read_text().splitlines()[0]
