"""Test doubles for Globus (no network): a fake clock, canned-response helpers and a small fake Transfer service.

* ``FakeClock`` -- injectable sleep/monotonic/utcnow, so polling with backoff takes no real time.
* ``Canned`` -- helpers that register ``globus_sdk.testing`` canned responses (``load_response``) and
  ``RegisteredResponse`` objects for the routes the SDK ships none for (task, events, successful transfers, ls).
* ``FakeGlobus`` -- a stateful fake of the Transfer service on ``responses`` callbacks, for end-to-end tests
  (move service, flight check): each collection is backed by a local folder; a transfer task really copies the
  bytes between those folders with the semantics we rely on (checksum sync skips identical files, successful
  transfers lists only the files sent, submission ids de-duplicate), a delete task really deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import globus_sdk
import responses
from globus_sdk.testing import RegisteredResponse, load_response
from responses import matchers

TRANSFER = "https://transfer.api.globus.org/v0.10"
AUTH_TOKEN = "https://auth.globus.org/v2/oauth2/token"

SRC_COLLECTION = "a0000000-0000-4000-8000-000000000733"
LAMARR_COLLECTION = "b0000000-0000-4000-8000-00000000000a"
CFS_COLLECTION = "c0000000-0000-4000-8000-00000000000c"
CLIENT_ID = "d0000000-0000-4000-8000-0000000000d1"
CLIENT_SECRET = "not-a-real-secret-0123456789"


class FakeClock:
    """Time that passes only when something sleeps: ``sleep`` advances ``monotonic`` and ``utcnow``."""

    def __init__(self, start: datetime = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)) -> None:
        self.start = start
        self.t = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def monotonic(self) -> float:
        return self.t

    def utcnow(self) -> datetime:
        return self.start + timedelta(seconds=self.t)


def task_doc(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """A Transfer task document (the fields Globus returns for GET /task/<id>), overridable per test."""
    doc: dict[str, Any] = {
        "DATA_TYPE": "task", "task_id": task_id, "type": "TRANSFER", "status": status, "label": "splash-flows",
        "bytes_transferred": 0, "bytes_checksummed": 0, "files": 0, "files_transferred": 0, "files_skipped": 0,
        "directories": 0, "effective_bytes_per_second": 0, "faults": 0, "fatal_error": None, "is_ok": True,
        "nice_status": "OK" if status == "ACTIVE" else None, "request_time": "2026-03-01T12:00:00+00:00",
        "completion_time": None if status in ("ACTIVE", "INACTIVE") else "2026-03-01T12:00:05+00:00",
        "deadline": "2026-03-01T18:00:00+00:00", "subtasks_succeeded": 0, "subtasks_failed": 0,
        "subtasks_canceled": 0, "subtasks_expired": 0, "verify_checksum": True, "sync_level": 3,
    }
    doc.update(fields)
    return doc


def json_body(request: Any) -> dict[str, Any]:
    body = request.body
    if isinstance(body, bytes):
        body = body.decode()
    parsed: dict[str, Any] = json.loads(body)
    return parsed


class Canned:
    """Registers canned Globus responses on one ``responses.RequestsMock``."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps

    def token(self) -> None:
        load_response(globus_sdk.ConfidentialAppAuthClient.oauth2_client_credentials_tokens, requests_mock=self.rsps)

    def token_rejected(self) -> None:
        """Globus Auth answering 401 to the client-credentials grant (expired or revoked secret)."""
        RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", status=401,
                           json={"error": "invalid_client", "error_description": "Invalid client credentials",
                                 "errors": [{"status": "401", "code": "UNAUTHORIZED",
                                             "detail": "Invalid client credentials", "title": "Unauthorized"}]},
                           ).add(requests_mock=self.rsps)

    def submission_id(self) -> str:
        """The SDK's canned submission id (the same value each time it is asked)."""
        resp = load_response(globus_sdk.TransferClient.get_submission_id, requests_mock=self.rsps)
        return str(resp.metadata["submission_id"])

    def fresh_submission_ids(self) -> list[str]:
        """A new submission id per request (as Globus does); returns the list of ids handed out."""
        handed: list[str] = []

        def answer(request: Any) -> tuple[int, dict[str, str], str]:
            handed.append(str(uuid.uuid4()))
            return 200, {"Content-Type": "application/json"}, json.dumps({"value": handed[-1]})

        self.rsps.add_callback("GET", f"{TRANSFER}/submission_id", callback=answer)
        return handed

    def submit_transfer(self) -> str:
        """The SDK's canned 'Accepted' answer; returns its task id."""
        resp = load_response(globus_sdk.TransferClient.submit_transfer, requests_mock=self.rsps)
        return str(resp.metadata["task_id"])

    def submit_transfer_as(self, task_id: str, *, status: int = 202, code: str = "Accepted",
                           dest: str | None = None, json_data: dict[str, Any] | None = None) -> None:
        match = [matchers.json_params_matcher({"destination_endpoint": dest}, strict_match=False)] if dest else None
        data = json_data if json_data is not None else {
            "DATA_TYPE": "transfer_result", "code": code, "message": "The transfer has been accepted",
            "request_id": "req-" + task_id[:8], "resource": "/v0.10/transfer", "task_id": task_id,
            "submission_id": "ignored"}
        RegisteredResponse(service="transfer", method="POST", path="/v0.10/transfer", status=status, json=data,
                           match=match).add(requests_mock=self.rsps)

    def submit_delete(self) -> str:
        resp = load_response(globus_sdk.TransferClient.submit_delete, requests_mock=self.rsps)
        return str(resp.metadata["task_id"])

    def task(self, task_id: str, *docs: dict[str, Any]) -> None:
        """GET /task/<id> answers, in order (the last one repeats)."""
        for doc in docs:
            RegisteredResponse(service="transfer", path=f"/v0.10/task/{task_id}", json=doc).add(
                requests_mock=self.rsps)

    def task_error(self, task_id: str, status: int = 503) -> None:
        RegisteredResponse(service="transfer", path=f"/v0.10/task/{task_id}", status=status,
                           json={"code": "ServiceUnavailable", "message": "try again later",
                                 "request_id": "x"}).add(requests_mock=self.rsps)

    def successful(self, task_id: str, pairs: list[tuple[str, str]]) -> None:
        RegisteredResponse(service="transfer", path=f"/v0.10/task/{task_id}/successful_transfers", json={
            "DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None,
            "DATA": [{"DATA_TYPE": "successful_transfer", "source_path": s, "destination_path": d}
                     for s, d in pairs]}).add(requests_mock=self.rsps)

    def events(self, task_id: str, events: list[dict[str, Any]]) -> None:
        RegisteredResponse(service="transfer", path=f"/v0.10/task/{task_id}/event_list", json={
            "DATA_TYPE": "event_list", "limit": 20, "offset": 0, "total": len(events),
            "DATA": [{"DATA_TYPE": "event", **e} for e in events]}).add(requests_mock=self.rsps)

    def cancel(self, task_id: str) -> None:
        RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{task_id}/cancel", json={
            "DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled successfully.",
            "request_id": "c", "resource": f"/task/{task_id}/cancel"}).add(requests_mock=self.rsps)

    def ls(self, collection: str, path: str, entries: list[dict[str, Any]]) -> None:
        RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{collection}/ls", json={
            "DATA_TYPE": "file_list", "endpoint": collection, "path": path + "/", "length": len(entries),
            "total": len(entries), "DATA": [{"DATA_TYPE": "file", "type": "file", "permissions": "0644",
                                             "last_modified": "2026-03-01 11:00:00+00:00", **e} for e in entries]},
                           match=[matchers.query_param_matcher({"path": path}, strict_match=False)],
                           ).add(requests_mock=self.rsps)

    def calls(self, method: str, suffix: str) -> list[Any]:
        """Requests made to ``TRANSFER + suffix`` (query string ignored)."""
        return [c.request for c in self.rsps.calls
                if c.request.method == method and urlparse(c.request.url).path == urlparse(TRANSFER + suffix).path]


# ---------------------------------------------------------------------------------------------- stateful fake


@dataclass
class FakeTask:
    task_id: str
    kind: str  # TRANSFER | DELETE
    body: dict[str, Any]
    polls_left: int
    status: str = "ACTIVE"
    sent: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    fatal_error: dict[str, str] | None = None


class FakeGlobus:
    """A small Transfer service over local folders. ``collections`` maps a collection id to (root on the
    collection, local folder backing it). Failure switches: ``reject_secret``, ``consent_missing``,
    ``unreachable``, ``denied``."""

    def __init__(self, rsps: responses.RequestsMock, collections: dict[str, tuple[str, Path]], *,
                 polls_before_done: int = 1) -> None:
        self.rsps = rsps
        self.collections = collections
        self.polls_before_done = polls_before_done
        self.tasks: dict[str, FakeTask] = {}
        self.by_submission: dict[str, str] = {}
        self.submission_ids: list[str] = []
        self.reject_secret = False
        self.consent_missing: set[str] = set()
        self.unreachable: set[str] = set()
        self.denied: set[str] = set()
        self._register()

    # -------------------------------------------------------------------------------------- plumbing

    @staticmethod
    def _json(status: int, data: Any) -> tuple[int, dict[str, str], str]:
        return status, {"Content-Type": "application/json"}, json.dumps(data)

    def _register(self) -> None:
        r = self.rsps
        r.add_callback("POST", AUTH_TOKEN, callback=self._token)
        r.add_callback("GET", f"{TRANSFER}/task_list", callback=lambda req: self._json(
            200, {"DATA_TYPE": "task_list", "DATA": [], "length": 0, "limit": 1, "offset": 0, "total": 0}))
        r.add_callback("GET", f"{TRANSFER}/submission_id", callback=self._submission_id)
        r.add_callback("POST", f"{TRANSFER}/transfer", callback=self._submit)
        r.add_callback("POST", f"{TRANSFER}/delete", callback=self._submit)
        r.add_callback("GET", re.compile(rf"{re.escape(TRANSFER)}/task/[^/]+/successful_transfers"),
                       callback=self._successful)
        r.add_callback("GET", re.compile(rf"{re.escape(TRANSFER)}/task/[^/]+/event_list"), callback=self._events)
        r.add_callback("POST", re.compile(rf"{re.escape(TRANSFER)}/task/[^/]+/cancel"), callback=self._cancel)
        r.add_callback("GET", re.compile(rf"{re.escape(TRANSFER)}/task/[^/?]+(\?.*)?$"), callback=self._task)
        r.add_callback("GET", re.compile(rf"{re.escape(TRANSFER)}/operation/endpoint/[^/]+/ls"), callback=self._ls)
        r.add_callback("GET", re.compile(rf"{re.escape(TRANSFER)}/operation/endpoint/[^/]+/stat"),
                       callback=self._stat)

    def _token(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self.reject_secret:
            return self._json(401, {"error": "invalid_client", "error_description": "Invalid client credentials"})
        return self._json(200, {"access_token": "fake-transfer-token", "scope":
                                "urn:globus:auth:scope:transfer.api.globus.org:all", "expires_in": 172800,
                                "token_type": "Bearer", "resource_server": "transfer.api.globus.org",
                                "other_tokens": []})

    def _submission_id(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.submission_ids.append(str(uuid.uuid4()))
        return self._json(200, {"value": self.submission_ids[-1]})

    def local(self, collection: str, path: str) -> Path:
        root, folder = self.collections[collection]
        assert path == root or path.startswith(root.rstrip("/") + "/"), f"{path} outside {root}"
        return folder / path[len(root):].lstrip("/")

    def _collection_error(self, collection: str, path: str) -> tuple[int, dict[str, str], str] | None:
        if collection in self.consent_missing:
            return self._json(403, {
                "code": "ConsentRequired", "message": "Missing required data_access consent",
                "request_id": "consent1", "required_scopes": [
                    f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/"
                    f"{collection}/data_access]"]})
        if collection in self.unreachable:
            return self._json(502, {"code": "ExternalError.DirListingFailed.GCDisconnected",
                                    "message": f"The Globus Connect Server for {collection} is not connected",
                                    "request_id": "offline1"})
        if collection in self.denied:
            return self._json(403, {"code": "EndpointPermissionDenied",
                                    "message": f"Denied by endpoint: permission denied on {path}",
                                    "request_id": "denied1"})
        return None

    # -------------------------------------------------------------------------------------- operations

    def _entry(self, p: Path) -> dict[str, Any]:
        st = p.stat()
        return {"DATA_TYPE": "file", "name": p.name, "type": "dir" if p.is_dir() else "file", "size": st.st_size,
                "last_modified": datetime.fromtimestamp(int(st.st_mtime), UTC).strftime("%Y-%m-%d %H:%M:%S+00:00"),
                "permissions": "0644"}

    def _ls(self, request: Any) -> tuple[int, dict[str, str], str]:
        collection = request.path_url.split("/")[4]
        path = parse_qs(urlparse(request.url).query)["path"][0]
        error = self._collection_error(collection, path)
        if error is not None:
            return error
        folder = self.local(collection, path)
        if not folder.is_dir():
            return self._json(404, {"code": "ClientError.NotFound", "message": f"Directory '{path}' not found",
                                    "request_id": "nf"})
        entries = [self._entry(p) for p in sorted(folder.iterdir())]
        limit = int(parse_qs(urlparse(request.url).query).get("limit", ["100000"])[0])
        offset = int(parse_qs(urlparse(request.url).query).get("offset", ["0"])[0])
        page = entries[offset:offset + limit]
        return self._json(200, {"DATA_TYPE": "file_list", "DATA": page, "path": path, "endpoint": collection,
                                "length": len(page), "total": len(entries)})

    def _stat(self, request: Any) -> tuple[int, dict[str, str], str]:
        collection = request.path_url.split("/")[4]
        path = parse_qs(urlparse(request.url).query)["path"][0]
        error = self._collection_error(collection, path)
        if error is not None:
            return error
        p = self.local(collection, path)
        if not p.exists():
            return self._json(404, {"code": "NotFound", "message": f"Path not found: {path}", "request_id": "nf"})
        return self._json(200, self._entry(p))

    def _submit(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json_body(request)
        sid = body["submission_id"]
        kind = body["DATA_TYPE"].upper()
        if sid in self.by_submission:
            task_id = self.by_submission[sid]
            return self._json(200, {"DATA_TYPE": f"{body['DATA_TYPE']}_result", "code": "Duplicate",
                                    "task_id": task_id, "submission_id": sid, "message": "duplicate"})
        collections = [body["endpoint"]] if kind == "DELETE" else [body["source_endpoint"],
                                                                    body["destination_endpoint"]]
        for c in collections:
            error = self._collection_error(c, "/")
            if error is not None:
                return error
        task_id = str(uuid.uuid4())
        self.by_submission[sid] = task_id
        self.tasks[task_id] = FakeTask(task_id, kind, body, self.polls_before_done)
        return self._json(202, {"DATA_TYPE": f"{body['DATA_TYPE']}_result", "code": "Accepted",
                                "task_id": task_id, "submission_id": sid, "message": "accepted"})

    def _run(self, task: FakeTask) -> None:
        """Do the task's work, as Globus would by the time it reports it ended."""
        body = task.body
        if task.kind == "DELETE":
            for item in body["DATA"]:
                p = self.local(body["endpoint"], item["path"])
                if p.is_file():
                    p.unlink()
            task.status = "SUCCEEDED"
            return
        for item in body["DATA"]:
            src = self.local(body["source_endpoint"], item["source_path"])
            dst = self.local(body["destination_endpoint"], item["destination_path"])
            if not src.is_file():
                task.status = "ACTIVE"
                task.events.append({"code": "FILE_NOT_FOUND", "is_error": True, "time": "2026-03-01 12:00:01",
                                    "description": "file not found", "details": f"{item['source_path']}: "
                                    "No such file or directory"})
                continue
            data = src.read_bytes()
            if item.get("external_checksum") and hashlib.sha256(data).hexdigest() != item["external_checksum"]:
                task.fatal_error = {"code": "CHECKSUM_MISMATCH", "description": "external checksum mismatch"}
                task.status = "FAILED"
                return
            if dst.is_file() and dst.read_bytes() == data:
                continue  # sync_level checksum: identical, nothing sent
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            st = src.stat()
            os.utime(dst, (st.st_atime, st.st_mtime))
            task.sent.append((item["source_path"], item["destination_path"]))
            task.bytes += len(data)
        task.status = "ACTIVE" if task.events else "SUCCEEDED"

    def _task(self, request: Any) -> tuple[int, dict[str, str], str]:
        task = self.tasks[urlparse(request.url).path.rsplit("/", 1)[1]]
        if task.status == "ACTIVE" and task.polls_left > 0:
            task.polls_left -= 1
        elif task.status == "ACTIVE" and not task.events:
            self._run(task)
        faults = len(task.events)
        return self._json(200, task_doc(task.task_id, task.status, type=task.kind, faults=faults,
                                        bytes_transferred=task.bytes, files_transferred=len(task.sent),
                                        files=len(task.body["DATA"]), fatal_error=task.fatal_error,
                                        effective_bytes_per_second=task.bytes * 10))

    def _successful(self, request: Any) -> tuple[int, dict[str, str], str]:
        task = self.tasks[urlparse(request.url).path.split("/")[-2]]
        return self._json(200, {"DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None,
                                "DATA": [{"source_path": s, "destination_path": d} for s, d in task.sent]})

    def _events(self, request: Any) -> tuple[int, dict[str, str], str]:
        task = self.tasks[urlparse(request.url).path.split("/")[-2]]
        return self._json(200, {"DATA_TYPE": "event_list", "DATA": task.events, "total": len(task.events),
                                "limit": 20, "offset": 0})

    def _cancel(self, request: Any) -> tuple[int, dict[str, str], str]:
        task = self.tasks[urlparse(request.url).path.split("/")[-2]]
        task.status = "FAILED"
        task.fatal_error = {"code": "CANCELED", "description": "canceled"}
        return self._json(200, {"code": "Canceled", "message": "The task has been cancelled successfully."})

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        """The task documents submitted (``transfer`` or ``delete``), in order."""
        return [t.body for t in self.tasks.values() if t.kind == kind.upper()]


# ---------------------------------------------------------------------------------------------- configuration

ROOTS = {"data733": "/data733/raw", "lamarr": "/lamarr/733", "cfs": "/global/cfs/733"}
COLLECTIONS = {"data733": SRC_COLLECTION, "lamarr": LAMARR_COLLECTION, "cfs": CFS_COLLECTION}
ENV = {"GLOBUS_CLIENT_ID": CLIENT_ID, "GLOBUS_CLIENT_SECRET": CLIENT_SECRET}


def globus_config_data(site: Path, ledger_url: str, *, checksum: str = "xxh3_128", data733_mounted: bool = True,
                       transfer: dict[str, Any] | None = None,
                       flight_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 7.3.3 configuration whose three tiers are Globus collections (data733 also mounted at site/data733)."""
    tiers: dict[str, Any] = {
        name: {"kind": "globus", "collection_id": COLLECTIONS[name], "root": ROOTS[name]} for name in ROOTS}
    tiers["lamarr"]["data_access_scope"] = True
    if data733_mounted:
        tiers["data733"]["local_root"] = str(site / "data733")
    return {
        "checksum": checksum,
        "ledger": {"url": ledger_url},
        "tiers": tiers,
        "move": {"source": "data733", "targets": ["lamarr", "cfs"], "concurrency": 2},
        "globus": {
            "client_id": "${GLOBUS_CLIENT_ID}", "client_secret": "${GLOBUS_CLIENT_SECRET}",
            "transfer": {"http_retries": 0, "poll_initial_s": 1, "poll_max_s": 8, "inactivity_limit_s": 60,
                         **(transfer or {})},
            "flight_check": flight_check or {},
        },
    }


def fake_collections(site: Path) -> dict[str, tuple[str, Path]]:
    """The folders backing each fake collection: data733's is the same folder as its local_root mount."""
    out = {}
    for name, root in ROOTS.items():
        folder = site / ("data733" if name == "data733" else f"remote_{name}")
        folder.mkdir(parents=True, exist_ok=True)
        out[COLLECTIONS[name]] = (root, folder)
    return out


def make_context(config: Any, clock: FakeClock) -> Any:
    """A Context whose Globus session waits on ``clock`` (built by the production builder otherwise)."""
    from splash_flows.context import Context, build_globus_session
    from splash_flows.ledger import Ledger

    session = build_globus_session(config, sleep=clock.sleep, monotonic=clock.monotonic, utcnow=clock.utcnow)
    return Context(config=config, ledger=Ledger.open(config.ledger.url_value()), globus_session=session)
