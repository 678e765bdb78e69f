"""``status`` at scale: keyset pages that add up to the whole ledger, per-tier totals, and batch writes that keep
the per-file semantics (a repeated or changed source in one batch, copies verified again)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import load_config_file
from splash_flows.ledger import Ledger, NewSource, VerifiedCopy
from splash_flows.ledger import overview as ov


def _fill(ledger: Ledger, n: int) -> None:
    recs = ledger.register_sources("data733", [NewSource(f"p/f{i:03d}.edf", i, float(i), "xxh3_128", f"{i:032x}")
                                               for i in range(n)])
    ledger.record_verified_many("lamarr", [VerifiedCopy(r, r.checksum, r.size, False) for r in recs[::2]])
    ledger.record_failed(recs[1].path, "cfs", "disk full", source=recs[1])


def test_pages_cover_the_ledger_once_in_path_order(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        _fill(ledger, 25)
        seen: list[str] = []
        after: tuple[str, str] | None = None
        while (page := ov.status_page(ledger, limit=7, after=after)).rows:
            seen += [r.path for r in page.rows]
            after = ov.next_cursor(page)
        assert seen == [r.path for r in ledger.status()] == sorted(seen) and len(seen) == 25
        first = ov.status_page(ledger, limit=2).rows
        assert first[0].copies["lamarr"].state == "verified" and first[1].copies["cfs"].state == "failed"
        assert ov.status_page(ledger, ov.StatusFilter(prefix="q/")).rows == []
        assert ov.totals(ledger).tiers == {"cfs": {"failed": 1}, "data733": {"verified": 25},
                                           "lamarr": {"verified": 13}}
    finally:
        ledger.close()


def test_batch_registration_keeps_per_file_semantics(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        a = NewSource("a.edf", 1, 1.0, "xxh3_128", "1" * 32)
        a2 = NewSource("a.edf", 2, 2.0, "xxh3_128", "2" * 32)
        first = ledger.register_sources("data733", [a, a])  # repeated in one batch: one row
        assert first[0] == first[1]
        ledger.record_verified_many("lamarr", [VerifiedCopy(first[0], a.checksum, 1, False)])
        ledger.record_verified_many("lamarr", [VerifiedCopy(first[0], a.checksum, 1, True)])  # again: update
        changed = ledger.register_sources("data733", [a2, NewSource("b.edf", 3, 3.0, "xxh3_128", "3" * 32)])
        assert changed[0].id == first[0].id and changed[0].checksum == "2" * 32
        rows = {r.path: r for r in ledger.status()}
        assert rows["a.edf"].copies["lamarr"].state == "stale"  # the source changed after it was verified
        assert ledger.counts()["files"] == 2 and ledger.counts()["copies"] == 3
        kinds = [e.kind for e in ledger.events(path="a.edf")]
        assert kinds == ["detected", "copied", "verified", "skipped", "source_changed"]
    finally:
        ledger.close()


def test_status_cli_pages_and_totals(config_file: Path) -> None:
    ledger = Ledger.open(load_config_file(config_file).ledger.url_value())
    try:
        _fill(ledger, 5)
        assert ov.totals(ledger).tiers == {"cfs": {"failed": 1}, "data733": {"verified": 5}, "lamarr": {"verified": 3}}
    finally:
        ledger.close()
    runner = CliRunner()
    page = runner.invoke(app, ["--config", str(config_file), "status", "--json", "--limit", "2",
                               "--after", "p/f000.edf"])
    assert page.exit_code == 0, page.output
    assert '"p/f001.edf"' in page.output and '"p/f002.edf"' in page.output and "f003" not in page.output
    # the table prints where the next page starts; following it walks the ledger once, in order
    seen: list[str] = []
    args = ["--config", str(config_file), "status", "--limit", "2"]
    for _ in range(5):
        out = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert out.exit_code == 0, out.output
        rows = [line for line in out.output.splitlines() if "after" not in line]  # not the title, not the hint
        seen += [w for line in rows for w in line.split() if w.startswith("p/f")]
        hint = [line for line in out.output.splitlines() if line.startswith("next page: --after ")]
        if not hint:
            break
        args = ["--config", str(config_file), "status", "--limit", "2", "--after", hint[0].split("--after ", 1)[1]]
    assert seen == [f"p/f{i:03d}.edf" for i in range(5)]


def test_after_names_a_tier_only_when_it_is_a_known_other_tier() -> None:
    from splash_flows.cli.status import parse_cursor

    tiers = ["data733", "lamarr", "cfs"]
    assert parse_cursor("", "data733", tiers) is None
    assert parse_cursor("a/b.edf", "data733", tiers) == ("data733", "a/b.edf")
    assert parse_cursor("lamarr:a/b.edf", "data733", tiers) == ("lamarr", "a/b.edf")
    assert parse_cursor("odd:name.edf", "data733", tiers) == ("data733", "odd:name.edf")
    assert parse_cursor("data733:x.edf", "data733", tiers) == ("data733", "data733:x.edf")
