"""The data-safety queries, the page's JSON API and /metrics, on SQLite and on a real PostgreSQL server.

One ledger holds a file in every state the page distinguishes; the API and the metrics must agree with
``status --json`` (the same function the CLI prints) on every count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from splash_flows.cli.status import status_json
from splash_flows.config import Config
from splash_flows.ledger import EventKind, Ledger, NewSource, VerifiedCopy, safety
from splash_flows.ledger.analysis import record_analysis
from splash_flows.ledger.catalogue import CatalogueState, file_states, files_by_path, record_scan
from splash_flows.ledger.models import AnalysisState, Copy, CopyState, OutboxEntry, SourceFile
from splash_flows.monitoring.web import create_app

NOW = datetime.now(UTC)


def _new(path: str, size: int = 100) -> NewSource:
    return NewSource(path, size, 1.0, "xxh3_128", f"c-{path}")


@pytest.fixture
def ledger(config: Config) -> Iterator[Ledger]:
    """A ledger with: 3 safe files (one due for pruning, one catalogue-pending), one late (cfs failed, detected two
    hours ago), one in flight (nothing on cfs yet, just detected), one at risk, one in another proposal, and one
    pending outbox batch."""
    led = Ledger.open(config.ledger.url_value())
    paths = [f"ALS-00622/20260105/scan_{i}.edf" for i in range(6)] + ["ALS-00999/20260105/other.edf"]
    src = led.register_sources("data733", [_new(p, 100 + i) for i, p in enumerate(paths)])
    by = {s.path: s for s in src}
    safe_paths = [paths[0], paths[1], paths[2], paths[5], paths[6]]
    for tier in ("lamarr", "cfs"):
        led.record_verified_many(tier, [VerifiedCopy(by[p], by[p].checksum, by[p].size, False, {})
                                        for p in safe_paths])
    led.record_verified(by[paths[3]], "lamarr", checksum=by[paths[3]].checksum, size=103, skipped=False)
    led.record_failed(paths[3], "cfs", "cfs: No space left on device", source=by[paths[3]])
    led.record_verified(by[paths[4]], "lamarr", checksum=by[paths[4]].checksum, size=104, skipped=False)
    with led.session() as sess:
        sess.execute(update(SourceFile).where(SourceFile.path == paths[3])
                     .values(detected_at=NOW - timedelta(hours=2)))
        sess.execute(update(Copy).where(Copy.file_id == by[paths[0]].id, Copy.tier == "data733")
                     .values(prune_due_at=NOW - timedelta(days=1)))
        sess.execute(update(Copy).where(Copy.file_id == by[paths[5]].id, Copy.tier == "cfs")
                     .values(state=CopyState.AT_RISK))
        sess.add(OutboxEntry(idempotency_key="k1", deployment="dispatcher/run_733_dispatcher", paths=["x"],
                             state="pending", attempts=0))
    files = files_by_path(led, "data733", [paths[1]])
    record_scan(led, "data733", "ALS-00622/20260105/scan_1", CatalogueState.PENDING, files=list(files.values()),
                error="catalogue down")
    yield led
    led.close()


def test_overview_counts_each_state(ledger: Ledger, config: Config) -> None:
    ov = safety.overview(ledger, config)
    assert ov.files == 7 and ov.bytes == sum(100 + i for i in range(7))
    assert ov.copies["data733"] == {"verified": 7}
    assert ov.copies["lamarr"] == {"verified": 7}
    assert ov.copies["cfs"] == {"verified": 4, "failed": 1, "at_risk": 1}
    assert (ov.not_safe, ov.late, ov.at_risk, ov.failed, ov.due, ov.pending_catalogue) == (3, 1, 1, 1, 1, 1)
    assert ov.oldest_not_safe is not None and NOW - ov.oldest_not_safe > timedelta(minutes=110)
    assert ov.outbox == {"pending": 1}


def test_groups_per_proposal_and_day_and_paging(ledger: Ledger, config: Config) -> None:
    rows, total = safety.groups(ledger, config, days=14)
    assert total == 2
    by = {(r.proposal, r.day): r for r in rows}
    today = NOW.strftime("%Y-%m-%d")
    two_hours_ago = (NOW - timedelta(hours=2)).strftime("%Y-%m-%d")
    main = [r for r in rows if r.proposal == "ALS-00622"]
    assert sum(r.files for r in main) == 6
    assert sum(r.counts["late"] for r in main) == 1 and sum(r.counts["at_risk"] for r in main) == 1
    assert sum(r.counts["on:cfs"] for r in main) == 3 and sum(r.counts["safe"] for r in main) == 3
    assert sum(r.counts["pending_catalogue"] for r in main) == 1 and sum(r.counts["due"] for r in main) == 1
    other = by[("ALS-00999", today)]
    assert other.files == 1 and other.counts["safe"] == 1 and other.counts["archived"] == 0
    assert {r.day for r in rows} <= {today, two_hours_ago}
    page, total = safety.groups(ledger, config, days=14, limit=1, offset=1)
    assert total == 2 and len(page) == 1
    only, _ = safety.groups(ledger, config, days=14, proposal="ALS-00999")
    assert [r.proposal for r in only] == ["ALS-00999"]


def test_per_day_counts_equal_the_file_filters_for_every_flag(ledger: Ledger, config: Config) -> None:
    """The per-day table answers each flag from one pass over the window's copies; the file lists ask the same
    flag as an EXISTS probe per file. Both renderings of every flag (and of each tier's column) must agree, for
    files with and without a copy on a tier (in flight: no cfs row yet; stuck: no target row, detected 3 h ago)."""
    (stuck,) = ledger.register_sources("data733", [_new("ALS-00622/20260105/stuck.edf")])
    with ledger.session() as sess:
        sess.execute(update(SourceFile).where(SourceFile.id == stuck.id).values(detected_at=NOW - timedelta(hours=3)))
    rows, _ = safety.groups(ledger, config, days=14)
    assert sum(r.counts["late"] for r in rows) == 2
    for flag in [*(f"on:{t}" for t in config.tiers), *(f.name for f in safety.flags_for(config))]:
        listed = safety.list_files(ledger, config, flag=flag, limit=1000)
        negated = safety.list_files(ledger, config, flag=flag, negate=True, limit=1000)
        assert sum(r.counts[flag] for r in rows) == len(listed), flag
        assert len(listed) + len(negated) == sum(r.files for r in rows), flag


def test_file_lists_filter_by_flag_and_page_by_path(ledger: Ledger, config: Config) -> None:
    late = safety.list_files(ledger, config, flag="late")
    assert [f.path for f in late] == ["ALS-00622/20260105/scan_3.edf"]
    assert late[0].copies == {"cfs": "failed", "data733": "verified", "lamarr": "verified"}
    not_safe = safety.list_files(ledger, config, flag="safe", negate=True)
    assert [f.path[-10:] for f in not_safe] == ["scan_3.edf", "scan_4.edf", "scan_5.edf"]
    first = safety.list_files(ledger, config, proposal="ALS-00622", limit=4)
    rest = safety.list_files(ledger, config, proposal="ALS-00622", after=first[-1].path, limit=4)
    assert len(first) == 4 and len(rest) == 2 and first[-1].path < rest[0].path
    assert safety.list_files(ledger, config, flag="on:hpss") == []
    pending = safety.list_files(ledger, config, flag="pending_catalogue")
    assert [f.catalogue for f in pending] == ["pending_catalogue"] and pending[0].scan_id is not None


def test_file_detail_is_the_event_log(ledger: Ledger, config: Config) -> None:
    (late,) = safety.list_files(ledger, config, flag="late")
    detail = safety.file_detail(ledger, late.id)
    assert detail is not None
    assert [e["kind"] for e in detail["events"]] == [EventKind.DETECTED, EventKind.COPIED, EventKind.VERIFIED,
                                                     EventKind.FAILED]
    assert detail["events"][-1]["detail"]["reason"] == "cfs: No space left on device"
    assert safety.file_detail(ledger, 10**9) is None


def test_a_registered_flag_becomes_a_column_and_a_filter(ledger: Ledger, config: Config) -> None:
    flag = safety.Flag("big", "big", "over 104 bytes", lambda s: SourceFile.size > 104)
    safety.register_flag(flag)
    try:
        rows, _ = safety.groups(ledger, config, days=14)
        assert sum(r.counts["big"] for r in rows) == 2
        assert len(safety.list_files(ledger, config, flag="big")) == 2
    finally:
        safety._FLAGS.remove(flag)


def test_reduced_is_a_column_when_the_analysis_is_on(ledger: Ledger, config: Config) -> None:
    """The analysis records reduced scans; the page counts, per proposal and day, the files of those scans."""
    assert "reduced" not in {f.name for f in safety.flags_for(config)}  # analysis off: no column
    on = config.model_copy(update={"analysis": config.analysis.model_copy(update={"enabled": True})})
    assert "reduced" in {f.name for f in safety.flags_for(on)}
    rows, _ = safety.groups(ledger, on, days=14)
    assert sum(r.counts["reduced"] for r in rows) == 0
    record_analysis(ledger, "data733", "ALS-00622/20260105/scan_1", AnalysisState.REDUCED)
    record_analysis(ledger, "data733", "ALS-00622/20260105/scan_9", AnalysisState.REDUCED)  # no file of ours
    rows, _ = safety.groups(ledger, on, days=14)
    assert sum(r.counts["reduced"] for r in rows) == 1
    assert [f.path for f in safety.list_files(ledger, on, flag="reduced")] == ["ALS-00622/20260105/scan_1.edf"]
    record_analysis(ledger, "data733", "ALS-00622/20260105/scan_1", AnalysisState.FAILED, error="bad frame")
    assert safety.list_files(ledger, on, flag="reduced") == []


def _metrics(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_equal_status_json(ledger: Ledger, config: Config) -> None:
    client = TestClient(create_app(config, ledger, overview_ttl=0))
    m = _metrics(client)
    rows = status_json(ledger.status(), file_states(ledger))
    per_tier_state = Counter((tier, c["state"]) for r in rows for tier, c in r["copies"].items())
    scraped = {(dict(k)["tier"], dict(k)["state"]): int(v) for k, v in m["splash_copies"].items()}
    assert scraped == dict(per_tier_state)
    assert m["splash_files"][()] == len(rows)
    state = {dict(k)["state"]: int(v) for k, v in m["splash_files_state"].items()}
    assert state["at_risk"] == sum(1 for r in rows if any(c["state"] == "at_risk" for c in r["copies"].values()))
    assert state["pending_catalogue"] == sum(1 for r in rows if r["catalogue"]["state"] == "pending_catalogue")
    assert state["late"] == 1 and m["splash_backlog_age_seconds"][()] > 110 * 60
    assert m["splash_outbox_batches"][(("state", "pending"),)] == 1
    events = {tuple(v for _, v in k): int(v) for k, v in m["splash_events_total"].items()}
    assert events[("verified", "cfs")] == 5 and events[("failed", "cfs")] == 1
    assert m["splash_step_latency_seconds_count"][(("step", "detected_to_verified"), ("tier", "lamarr"))] == 7
    # counters keep counting between scrapes: two more failures are two more, nothing lost or counted twice
    src = ledger.get_source("data733", "ALS-00622/20260105/scan_4.edf")
    ledger.record_failed(src.path, "cfs", "timeout", source=src)  # type: ignore[union-attr]
    ledger.record_failed(src.path, "cfs", "timeout", source=src)  # type: ignore[union-attr]
    again = _metrics(client)
    assert again["splash_events_total"][(("kind", "failed"), ("tier", "cfs"))] == 3
    assert again["splash_events_total"][(("kind", "verified"), ("tier", "cfs"))] == 5
    # no restore drill has run yet: its time is 0 and its outcome is not exposed
    assert again["splash_last_restore_drill_timestamp_seconds"] == {(): 0.0}
    assert "splash_last_restore_drill_ok" not in again


def test_api_serves_overview_groups_files_and_history(ledger: Ledger, config: Config) -> None:
    client = TestClient(create_app(config, ledger, bind="127.0.0.1:1"))
    ov = client.get("/api/overview").json()
    assert ov["bind"] == "127.0.0.1:1" and ov["read_only"] and ov["late"] == 1
    assert [f["name"] for f in ov["flags"]][:3] == ["safe", "late", "at_risk"]
    groups = client.get("/api/groups", params={"days": 14}).json()
    assert groups["total"] == 2
    files = client.get("/api/files", params={"flag": "at_risk"}).json()["files"]
    assert [f["copies"]["cfs"] for f in files] == ["at_risk"]
    history = client.get(f"/api/files/{files[0]['id']}").json()
    assert history["path"] == files[0]["path"] and history["events"][0]["kind"] == "detected"
    assert client.get("/api/files", params={"flag": "nonsense"}).status_code == 400
    assert client.get("/api/files", params={"day": "yesterday"}).status_code == 400
    assert client.get("/api/files/999999").status_code == 404
    assert client.get("/api/alerts").json() == {"configured": 0, "messages": []}
    page = client.get("/")
    assert page.status_code == 200 and "data safety" in page.text
    assert client.post("/api/overview").status_code == 405  # read-only: nothing accepts a write


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_unsafe_files_are_found_below_the_newest_chunk(ledger: Ledger, config: Config, chunk: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_4 lacks its cfs row but is not the newest file: the search goes down chunk by chunk until the whole
    deficit is found, whatever the chunk size."""
    monkeypatch.setattr(safety, "SCAN_CHUNK", chunk)
    with ledger.session() as sess:
        ids = safety.unsafe_file_ids(sess, config)
    paths = {r.path.rsplit("/", 1)[1] for r in safety.list_files(ledger, config) if r.id in ids}
    assert paths == {"scan_3.edf", "scan_4.edf", "scan_5.edf"}
