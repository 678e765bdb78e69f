"""GlobusTier against canned Globus responses (globus_sdk.testing; no network): request bodies, per-file results,
task failures with Globus's own events, idempotent submission, deletes. Polling waits on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_sdk.testing import get_last_request, load_response

from splash_flows.config import Config, GlobusTierConfig, parse_config
from splash_flows.context import Context, build_tier
from splash_flows.errors import (
    DeleteError,
    GlobusAuthError,
    GlobusRequestRefused,
    GlobusServiceUnavailable,
    GlobusTaskError,
    TierError,
)
from splash_flows.ledger.transfers import TransferBatches
from splash_flows.services.move import is_transient
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.globus import GlobusTier
from splash_flows.tiers.local import LocalTier
from tests.fakes.globus import (
    CFS_COLLECTION,
    CLIENT_SECRET,
    ENV,
    Canned,
    FakeClock,
    globus_config_data,
    json_body,
    make_context,
    task_doc,
)

SRC = "/data733/raw/scan"
DST = "/global/cfs/733/scan"
ITEMS = [CopyItem("scan/a.edf", "sum-a", 100), CopyItem("scan/b.edf", "sum-b", 200), CopyItem("scan/c.edf", "sum-c", 7)]
LISTED = [{"name": "a.edf", "size": 100}, {"name": "b.edf", "size": 200}, {"name": "c.edf", "size": 7}]


def make_config(tmp_path: Path, **transfer: Any) -> Config:
    checksum = transfer.pop("checksum", "xxh3_128")
    data = globus_config_data(tmp_path / "site", f"sqlite:///{tmp_path / 'ledger.db'}", checksum=checksum,
                              transfer=transfer)
    return parse_config(data, source="<test>", base=tmp_path, environ=ENV)


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def canned(rsps: responses.RequestsMock) -> Canned:
    return Canned(rsps)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gctx(tmp_path: Path, clock: FakeClock) -> Iterator[Context]:
    ctx = make_context(make_config(tmp_path), clock)
    yield ctx
    ctx.close()


def tiers(ctx: Context) -> tuple[GlobusTier, GlobusTier]:
    src, dst = ctx.tier("data733"), ctx.tier("cfs")
    assert isinstance(src, GlobusTier) and isinstance(dst, GlobusTier)
    return src, dst


def batches(ctx: Context) -> TransferBatches:
    return TransferBatches(ctx.ledger)


# ---------------------------------------------------------------------------------------------- success


def test_success_sends_one_checksum_verified_task_and_records_it(gctx: Context, canned: Canned,
                                                                 clock: FakeClock) -> None:
    canned.token()
    sid = canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task(task_id, task_doc(task_id, "ACTIVE"), task_doc(task_id, "ACTIVE", bytes_transferred=100),
                task_doc(task_id, "SUCCEEDED", bytes_transferred=300, files_transferred=2, files_skipped=1,
                         effective_bytes_per_second=150, faults=0))
    canned.successful(task_id, [(f"{SRC}/a.edf", f"{DST}/a.edf"), (f"{SRC}/b.edf", f"{DST}/b.edf")])
    canned.ls(CFS_COLLECTION, DST, LISTED)
    src, dst = tiers(gctx)
    seen: list[tuple[str, int]] = []

    out = dst.copy_from(src, ITEMS, progress=lambda p, n: seen.append((p, n)))

    assert all(isinstance(o, CopyResult) for o in out)
    results = [o for o in out if isinstance(o, CopyResult)]
    assert [(r.path, r.size, r.skipped, r.checksum) for r in results] == [
        ("scan/a.edf", 100, False, "sum-a"), ("scan/b.edf", 200, False, "sum-b"), ("scan/c.edf", 7, True, "sum-c")]
    assert results[0].detail is not None and results[0].detail["globus_task_id"] == task_id
    assert results[0].detail["verified_by"] == "globus" and "xxh3_128" in results[0].detail["globus_checksum"]
    assert results[2].detail is not None and "already identical" in results[2].detail["transfer"]
    assert seen == [("scan/a.edf", 100), ("scan/b.edf", 200), ("scan/c.edf", 7)]
    assert clock.sleeps == [1.0, 1.5]  # polled with backoff, on the fake clock

    (submit,) = canned.calls("POST", "/transfer")
    body = json_body(submit)
    assert body["DATA_TYPE"] == "transfer"
    assert body["submission_id"] == sid
    assert body["source_endpoint"] == gctx.config.tiers["data733"].collection_id  # type: ignore[union-attr]
    assert body["destination_endpoint"] == CFS_COLLECTION
    assert body["sync_level"] == 3 and body["verify_checksum"] is True and body["preserve_timestamp"] is True
    assert body["notify_on_succeeded"] is False and body["notify_on_failed"] is False
    assert body["notify_on_inactive"] is False
    assert body["deadline"] == "2026-03-01T18:00:00+00:00"  # fake now + deadline_s (6 h)
    assert [(i["source_path"], i["destination_path"]) for i in body["DATA"]] == [
        (f"{SRC}/{n}", f"{DST}/{n}") for n in ("a.edf", "b.edf", "c.edf")]
    assert all("external_checksum" not in i for i in body["DATA"])  # xxh3_128 is not a Globus algorithm

    (batch,) = batches(gctx).recent()
    assert (batch.kind, batch.status, batch.globus_status, batch.task_id, batch.submission_id) == (
        "transfer", "succeeded", "SUCCEEDED", task_id, sid)
    assert (batch.bytes_transferred, batch.files_transferred, batch.files_skipped) == (300, 2, 1)
    assert (batch.effective_bytes_per_second, batch.items_ok, batch.items_failed) == (150.0, 3, 0)
    assert not batch.unfinished


def test_sha256_ledger_checksums_are_handed_to_globus(tmp_path: Path, canned: Canned, clock: FakeClock) -> None:
    ctx = make_context(make_config(tmp_path, checksum="sha256"), clock)
    try:
        canned.token()
        canned.submission_id()
        task_id = canned.submit_transfer()
        canned.task(task_id, task_doc(task_id, "SUCCEEDED"))
        canned.successful(task_id, [])
        canned.ls(CFS_COLLECTION, DST, LISTED)
        src, dst = tiers(ctx)
        out = dst.copy_from(src, ITEMS)
        assert all(isinstance(o, CopyResult) and o.skipped for o in out)
        body = json_body(canned.calls("POST", "/transfer")[0])
        assert [(i["external_checksum"], i["checksum_algorithm"]) for i in body["DATA"]] == [
            ("sum-a", "SHA256"), ("sum-b", "SHA256"), ("sum-c", "SHA256")]
        result = out[0]
        assert isinstance(result, CopyResult) and result.detail is not None
        assert "against the ledger's sha256" in result.detail["globus_checksum"]
    finally:
        ctx.close()


def test_a_batch_larger_than_the_cap_is_split_into_several_tasks(tmp_path: Path, canned: Canned,
                                                                 clock: FakeClock) -> None:
    ctx = make_context(make_config(tmp_path, max_files_per_task=2), clock)
    try:
        canned.token()
        sids = canned.fresh_submission_ids()
        task_ids = ["t-1", "t-2", "t-3"]
        for t in task_ids:
            canned.submit_transfer_as(t)
            canned.task(t, task_doc(t, "SUCCEEDED"))
            canned.successful(t, [])
        names = [f"f{i}.edf" for i in range(5)]
        canned.ls(CFS_COLLECTION, DST, [{"name": n, "size": 1} for n in names])
        src, dst = tiers(ctx)
        out = dst.copy_from(src, [CopyItem(f"scan/{n}", f"s{i}", 1) for i, n in enumerate(names)])
        assert all(isinstance(o, CopyResult) for o in out)
        bodies = [json_body(r) for r in canned.calls("POST", "/transfer")]
        assert [len(b["DATA"]) for b in bodies] == [2, 2, 1]
        assert [b["submission_id"] for b in bodies] == sids and len(set(sids)) == 3
        assert sorted(b.task_id or "" for b in batches(ctx).recent()) == task_ids
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------- failures


def test_failed_task_marks_only_the_files_it_did_not_transfer(gctx: Context, canned: Canned) -> None:
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task(task_id, task_doc(task_id, "FAILED", fatal_error={
        "code": "PERMISSION_DENIED", "description": "permission denied writing to the destination"}, faults=4))
    canned.successful(task_id, [(f"{SRC}/a.edf", f"{DST}/a.edf")])
    canned.events(task_id, [
        {"code": "PERMISSION_DENIED", "is_error": True, "time": "2026-03-01 12:00:03",
         "description": "permission denied", "details": "Error (transfer) Command: STOR /global/cfs/733/scan/b.edf"},
        {"code": "STARTED", "is_error": False, "time": "2026-03-01 12:00:00", "description": "started",
         "details": ""}])
    canned.ls(CFS_COLLECTION, DST, LISTED[:1])
    src, dst = tiers(gctx)

    out = dst.copy_from(src, ITEMS)

    assert isinstance(out[0], CopyResult) and not out[0].skipped
    for o, name in zip(out[1:], ("b.edf", "c.edf"), strict=True):
        assert isinstance(o, GlobusTaskError)
        assert o.task_id == task_id and o.status == "FAILED" and o.reason == "failed"
        assert o.path == f"scan/{name}" and o.tier == "cfs"
        assert str(o).startswith(f"cfs:scan/{name}: Globus task {task_id} FAILED (PERMISSION_DENIED")
        assert "not among the task's successful transfers" in str(o)
        assert "STOR /global/cfs/733/scan/b.edf" in str(o)  # Globus's own event details
        assert o.events[0]["code"] == "PERMISSION_DENIED"
        assert is_transient(o)  # a retry resubmits the missing files
    (batch,) = batches(gctx).recent()
    assert (batch.status, batch.items_ok, batch.items_failed, batch.faults) == ("failed", 1, 2, 4)
    assert batch.error is not None and "PERMISSION_DENIED" in batch.error


def test_deadline_reached_is_reported_as_such(gctx: Context, canned: Canned) -> None:
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task(task_id, task_doc(task_id, "FAILED", deadline="2026-03-01T18:00:00+00:00",
                                  completion_time="2026-03-01T18:00:00+00:00", nice_status=None))
    canned.successful(task_id, [])
    canned.events(task_id, [])
    src, dst = tiers(gctx)
    out = dst.copy_from(src, ITEMS[:1])
    (err,) = out
    assert isinstance(err, GlobusTaskError) and err.reason == "deadline"
    assert "FAILED at its deadline 2026-03-01T18:00:00+00:00" in str(err)
    assert batches(gctx).recent()[0].status == "failed"


def _until_cancelled(rsps: responses.RequestsMock, task_id: str, active: dict[str, Any]) -> None:
    """GET /task/<id>: ``active`` until a cancel request was made, then FAILED (as Globus does)."""
    import json

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        cancelled = any(c.request.method == "POST" and c.request.url.endswith(f"/task/{task_id}/cancel")
                        for c in rsps.calls)
        doc = task_doc(task_id, "FAILED", fatal_error={"code": "CANCELED", "description": "canceled"}) \
            if cancelled else active
        return 200, {"Content-Type": "application/json"}, json.dumps(doc)

    rsps.add_callback("GET", f"https://transfer.api.globus.org/v0.10/task/{task_id}", callback=answer)


def test_task_still_active_past_its_deadline_is_cancelled(tmp_path: Path, rsps: responses.RequestsMock,
                                                          canned: Canned, clock: FakeClock) -> None:
    ctx = make_context(make_config(tmp_path, deadline_s=3600, deadline_grace_s=600, poll_max_s=600), clock)
    try:
        canned.token()
        canned.submission_id()
        task_id = canned.submit_transfer()
        _until_cancelled(rsps, task_id, task_doc(task_id, "ACTIVE", nice_status="Queued"))
        canned.cancel(task_id)
        canned.successful(task_id, [])
        canned.events(task_id, [{"code": "QUEUED", "is_error": False, "time": "2026-03-01 12:00:00",
                                 "description": "queued", "details": "waiting for an active task slot"}])
        src, dst = tiers(ctx)
        (err,) = dst.copy_from(src, ITEMS[:1])
        assert isinstance(err, GlobusTaskError) and err.reason == "deadline"
        assert "still ACTIVE 600 s after its deadline" in str(err) and "cancelled" in str(err)
        assert "waiting for an active task slot" in str(err)
        assert clock.t > 3600 + 600
        assert len(canned.calls("POST", f"/task/{task_id}/cancel")) == 1
        (batch,) = batches(ctx).recent()
        assert (batch.status, batch.globus_status, batch.items_failed) == ("abandoned", "FAILED", 1)
    finally:
        ctx.close()


def test_permission_denied_faults_without_progress_are_cancelled_with_globus_details(
        gctx: Context, rsps: responses.RequestsMock, canned: Canned, clock: FakeClock) -> None:
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    _until_cancelled(rsps, task_id, task_doc(task_id, "ACTIVE", faults=3, nice_status="PERMISSION_DENIED"))
    canned.cancel(task_id)
    canned.successful(task_id, [])
    canned.events(task_id, [{"code": "PERMISSION_DENIED", "is_error": True, "time": "2026-03-01 12:00:02",
                             "description": "permission denied",
                             "details": "550 /global/cfs/733/scan: Permission denied"}])
    src, dst = tiers(gctx)
    out = dst.copy_from(src, ITEMS[:2])
    for err in out:
        assert isinstance(err, GlobusTaskError) and err.reason == "inactive"
        assert "3 fault(s) and no progress" in str(err) and "PERMISSION_DENIED" in str(err)
        assert "550 /global/cfs/733/scan: Permission denied" in str(err)
    assert 60 <= clock.t < 60 + 10  # gave up at the inactivity limit, not at the deadline
    assert batches(gctx).recent()[0].status == "abandoned"


def test_submission_refused_with_permission_denied(gctx: Context, canned: Canned) -> None:
    canned.token()
    canned.submission_id()
    canned.submit_transfer_as("never", status=403, json_data={
        "code": "PermissionDenied", "message": "You do not have permission to transfer to this collection",
        "request_id": "req403", "resource": "/v0.10/transfer"})
    src, dst = tiers(gctx)
    out = dst.copy_from(src, ITEMS)
    body = json_body(get_last_request(requests_mock=canned.rsps))  # the refused submission was the last request
    assert body["DATA_TYPE"] == "transfer" and body["verify_checksum"] is True and body["sync_level"] == 3
    assert len(body["DATA"]) == 3
    for err, item in zip(out, ITEMS, strict=True):
        assert isinstance(err, GlobusRequestRefused) and err.http_status == 403 and err.request_id == "req403"
        assert str(err).startswith(f"cfs:{item.path}: submit transfer task")
        assert "permission denied" in str(err) and "clients.auth.globus.org" in str(err)
        assert not is_transient(err)
    (batch,) = batches(gctx).recent()
    assert batch.status == "refused" and batch.task_id is None and not batch.unfinished


def test_expired_credentials_fail_every_item_without_submitting(gctx: Context, canned: Canned) -> None:
    canned.token_rejected()
    src, dst = tiers(gctx)
    out = dst.copy_from(src, ITEMS)
    for err in out:
        assert isinstance(err, GlobusAuthError) and err.http_status == 401
        assert "client secret is wrong, expired or revoked" in str(err)
        assert CLIENT_SECRET not in str(err)
        assert not is_transient(err)
    assert canned.calls("POST", "/transfer") == []
    assert batches(gctx).recent() == []  # nothing was submitted, so nothing is waiting to be resubmitted


# ---------------------------------------------------------------------------------------------- idempotency


def test_retried_submission_reuses_its_submission_id(gctx: Context, canned: Canned) -> None:
    """The first submit's answer is lost (503): the retry sends the same submission_id; Globus says Duplicate."""
    canned.token()
    sids = canned.fresh_submission_ids()
    canned.submit_transfer_as("lost", status=503, json_data={"code": "ServiceUnavailable",
                                                              "message": "try later", "request_id": "r503"})
    canned.submit_transfer_as("task-1", code="Duplicate")
    canned.task("task-1", task_doc("task-1", "SUCCEEDED"))
    canned.successful("task-1", [(f"{SRC}/a.edf", f"{DST}/a.edf")])
    canned.ls(CFS_COLLECTION, DST, LISTED)
    src, dst = tiers(gctx)

    first = dst.copy_from(src, ITEMS)
    assert all(isinstance(e, GlobusServiceUnavailable) and is_transient(e) for e in first)
    (pending,) = batches(gctx).recent()
    assert pending.status == "pending" and pending.submission_id == sids[0] and pending.task_id is None

    second = dst.copy_from(src, ITEMS)
    assert all(isinstance(r, CopyResult) for r in second)
    assert len(sids) == 1  # no second submission id was asked for
    bodies = [json_body(r) for r in canned.calls("POST", "/transfer")]
    assert [b["submission_id"] for b in bodies] == [sids[0], sids[0]]
    assert bodies[0] == bodies[1]  # the very same task document
    (done,) = batches(gctx).recent()
    assert (done.id, done.status, done.task_id) == (pending.id, "succeeded", "task-1")


def test_a_batch_with_a_known_task_is_polled_not_resubmitted(gctx: Context, canned: Canned) -> None:
    """Submitted, then polling failed (as after a crash): the next attempt polls the same task."""
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task_error(task_id, 503)
    canned.task(task_id, task_doc(task_id, "SUCCEEDED"))
    canned.successful(task_id, [])
    canned.ls(CFS_COLLECTION, DST, LISTED)
    src, dst = tiers(gctx)
    first = dst.copy_from(src, ITEMS)
    assert all(isinstance(e, GlobusServiceUnavailable) for e in first)
    assert batches(gctx).recent()[0].status == "submitted"
    second = dst.copy_from(src, ITEMS)
    assert all(isinstance(r, CopyResult) and r.skipped for r in second)
    assert len(canned.calls("POST", "/transfer")) == 1
    assert len(canned.calls("GET", "/submission_id")) == 1


def test_after_a_finished_batch_a_rerun_is_a_new_checksum_sync_task(gctx: Context, canned: Canned) -> None:
    canned.token()
    sids = canned.fresh_submission_ids()
    for t in ("t-a", "t-b"):
        canned.submit_transfer_as(t)
        canned.task(t, task_doc(t, "SUCCEEDED"))
        canned.successful(t, [])
    canned.ls(CFS_COLLECTION, DST, LISTED)
    src, dst = tiers(gctx)
    dst.copy_from(src, ITEMS)
    dst.copy_from(src, ITEMS)
    assert len(set(sids)) == 2
    assert [b.status for b in batches(gctx).recent()] == ["succeeded", "succeeded"]


# ---------------------------------------------------------------------------------------------- verify, delete


def test_verify_copies_is_a_checksum_sync_that_sends_nothing_when_identical(gctx: Context, canned: Canned) -> None:
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task(task_id, task_doc(task_id, "SUCCEEDED", files_skipped=3))
    canned.successful(task_id, [])
    canned.ls(CFS_COLLECTION, DST, LISTED)
    src, dst = tiers(gctx)
    out = dst.verify_copies(src, ITEMS)
    assert all(isinstance(r, CopyResult) and r.skipped for r in out)
    body = json_body(canned.calls("POST", "/transfer")[0])
    assert body["sync_level"] == 3 and body["verify_checksum"] is True
    assert batches(gctx).recent()[0].kind == "verify"


def test_delete_is_a_checked_delete_task(gctx: Context, canned: Canned) -> None:
    canned.token()
    sid = canned.submission_id()
    task_id = canned.submit_delete()
    canned.ls(CFS_COLLECTION, DST, LISTED[:2])  # c.edf is not there
    canned.task(task_id, task_doc(task_id, "SUCCEEDED", type="DELETE"))
    _, dst = tiers(gctx)
    out = dst.delete(["scan/a.edf", "scan/b.edf", "scan/c.edf", "../escape"])
    assert out[0] is None and out[1] is None
    assert isinstance(out[2], DeleteError) and "file not found" in str(out[2])
    assert isinstance(out[3], TierError) and "'..'" in str(out[3])
    body = json_body(canned.calls("POST", "/delete")[0])
    assert body["DATA_TYPE"] == "delete" and body["endpoint"] == CFS_COLLECTION and body["submission_id"] == sid
    assert [i["path"] for i in body["DATA"]] == [f"{DST}/a.edf", f"{DST}/b.edf"]
    assert body["recursive"] is False
    assert (body["notify_on_succeeded"], body["notify_on_failed"], body["notify_on_inactive"]) == (False,) * 3
    (batch,) = batches(gctx).recent()
    assert (batch.kind, batch.status, batch.items_ok) == ("delete", "succeeded", 2)


def test_failed_delete_reports_only_the_files_still_there(gctx: Context, canned: Canned) -> None:
    canned.token()
    canned.submission_id()
    task_id = canned.submit_delete()
    canned.ls(CFS_COLLECTION, DST, LISTED[:2])   # before: a and b
    canned.ls(CFS_COLLECTION, DST, LISTED[1:2])  # after: b is still there
    canned.task(task_id, task_doc(task_id, "FAILED", type="DELETE",
                                  fatal_error={"code": "PERMISSION_DENIED", "description": "cannot delete b.edf"}))
    canned.events(task_id, [{"code": "PERMISSION_DENIED", "is_error": True, "time": "t", "description": "denied",
                             "details": "rm b.edf: Permission denied"}])
    _, dst = tiers(gctx)
    a, b = dst.delete(["scan/a.edf", "scan/b.edf"])
    assert a is None
    assert isinstance(b, DeleteError) and "still there" in str(b) and "rm b.edf: Permission denied" in str(b)
    assert batches(gctx).recent()[0].items_failed == 1


# ---------------------------------------------------------------------------------------------- pairs, reads


def test_unsupported_pairs_and_missing_ledger_raise_clearly(gctx: Context, tmp_path: Path) -> None:
    _, dst = tiers(gctx)
    local = LocalTier("data733", tmp_path, "xxh3_128")
    with pytest.raises(TierError, match=r"cfs: cannot copy from data733 \(a local tier\): Globus moves data only"):
        dst.copy_from(local, ITEMS)
    bare = build_tier("cfs", gctx.config, globus=gctx.globus())  # no ledger
    src, _ = tiers(gctx)
    with pytest.raises(TierError, match="built without a ledger"):
        bare.copy_from(src, ITEMS)
    out = dst.copy_from(src, [CopyItem("x.edf", None, 1)])
    assert isinstance(out[0], TierError) and "no checksum" in str(out[0])


def test_stat_and_checksum_without_a_mount(gctx: Context, canned: Canned) -> None:
    stat = load_response(globus_sdk.TransferClient.operation_stat, requests_mock=canned.rsps)
    collection = stat.metadata["endpoint_id"]
    canned.token()
    cfg = GlobusTierConfig(collection_id=collection, root="/~/data")
    tier = GlobusTier("remote", cfg, "xxh3_128", gctx.globus())
    st = tier.stat("file1.txt")
    assert st is not None and (st.path, st.size) == ("file1.txt", 4)
    assert "path=%2F~%2Fdata%2Ffile1.txt" in (get_last_request(requests_mock=canned.rsps).url or "")  # type: ignore[union-attr]
    with pytest.raises(TierError, match="Globus has no API that returns a file's checksum"):
        tier.checksum("file1.txt")


@pytest.mark.parametrize(("case", "expect"), [("not_found", None), ("permission_denied", GlobusRequestRefused)])
def test_stat_not_found_and_denied(gctx: Context, canned: Canned, case: str, expect: type | None) -> None:
    collection = load_response(globus_sdk.TransferClient.operation_stat, case=case,
                               requests_mock=canned.rsps).metadata["endpoint_id"]
    canned.token()
    tier = GlobusTier("remote", GlobusTierConfig(collection_id=collection, root="/"), "xxh3_128", gctx.globus())
    if expect is None:
        assert tier.stat("foo") is None
    else:
        with pytest.raises(expect, match="remote:foo: stat /foo: permission denied"):
            tier.stat("foo")


def test_a_sent_file_is_recognised_by_its_source_path_too(gctx: Context, canned: Canned) -> None:
    """Globus may report a destination path in another form (e.g. home-relative); the source path still matches."""
    canned.token()
    canned.submission_id()
    task_id = canned.submit_transfer()
    canned.task(task_id, task_doc(task_id, "FAILED", fatal_error={"code": "FAULT", "description": "x"}))
    canned.successful(task_id, [(f"{SRC}/a.edf", "/~/elsewhere/a.edf")])
    canned.events(task_id, [])
    canned.ls(CFS_COLLECTION, DST, LISTED[:1])
    src, dst = tiers(gctx)
    a, b = dst.copy_from(src, ITEMS[:2])
    assert isinstance(a, CopyResult) and not a.skipped
    assert isinstance(b, GlobusTaskError)
