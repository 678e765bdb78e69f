"""The FAKE SciCat server must enforce the rules of SCICAT.md, or the adapter tests prove nothing.

Each test sends raw HTTP (no adapter) and checks that the fake refuses or behaves as the real 4.5 does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.fakes.scicat_server import FakeSciCat, looks_like_js_date

PASSWORD = "pw"


@pytest.fixture
def fake() -> Iterator[FakeSciCat]:
    with FakeSciCat(users={"ingestor": PASSWORD, "admin": "root"}, pid_groups={"admin"}) as server:
        yield server


def client(fake: FakeSciCat, user: str = "ingestor", password: str = PASSWORD) -> httpx.Client:
    http = httpx.Client(base_url=fake.url)
    answer = http.post("/api/v3/auth/login", json={"username": user, "password": password})
    assert answer.status_code == 201
    http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return http


def dataset(**extra: Any) -> dict[str, Any]:
    return {
        "type": "raw",
        "datasetName": "n",
        "ownerGroup": "g",
        "contactEmail": "a@example.org",
        "sourceFolder": "/data/x/",
        "creationTime": "2024-05-01T12:00:00Z",
        **extra,
    }


def test_bearer_token_is_required_and_a_query_token_ignored(fake: FakeSciCat) -> None:
    http = client(fake)
    token = http.headers.pop("Authorization")[7:]
    assert http.get("/api/v4/datasets").status_code == 403  # v4: 403, not 401 (see below)
    assert http.get("/api/v4/datasets", params={"access_token": token}).status_code == 403
    assert http.get("/api/v3/auth/whoami", params={"access_token": token}).status_code == 401
    assert http.get("/api/v4/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_an_expired_or_invalid_token_is_403_on_v4_routes_and_401_on_v3(fake: FakeSciCat) -> None:
    """SCICAT.md, "Seen on a real ... 4.27": the v4 routes answer 403 "Forbidden resource" to a token that
    expired or is invalid; a client that logs in again only on 401 fails there."""
    http = client(fake)
    pid = http.post("/api/v4/datasets", json=dataset()).json()["pid"]
    block = {"datasetId": pid, "size": 1, "dataFileList": [{"path": "a", "size": 1, "time": "2024-05-01T00:00:00Z"}]}
    fake.expire_tokens()
    answers = {
        "GET v4 datasets": http.get("/api/v4/datasets"),
        "PATCH v4 dataset": http.patch(f"/api/v4/datasets/{quote(pid, safe='')}", json={"keywords": ["x"]}),
        "POST v4 origdatablocks": http.post("/api/v4/origdatablocks", json=block),
        "GET v3 whoami": http.get("/api/v3/auth/whoami"),
    }
    assert {k: a.status_code for k, a in answers.items()} == {
        "GET v4 datasets": 403, "PATCH v4 dataset": 403, "POST v4 origdatablocks": 403, "GET v3 whoami": 401}
    assert answers["GET v4 datasets"].json()["message"] == "Forbidden resource"
    http.headers["Authorization"] = "Bearer not-a-token-the-server-issued"
    assert http.get("/api/v4/datasets").status_code == 403
    assert fake.blocks_of(pid) == [] and fake.datasets[pid]["keywords"] == []  # nothing took effect


def test_metadata_keys_come_back_url_encoded_from_v4(fake: FakeSciCat) -> None:
    """v4 returns scientificMetadata keys URL-encoded as stored; writing back what was read encodes them twice."""
    http = client(fake)
    metadata = {"I1 normalization": 1.5, "ALS Proposal #": "ALS-11234", "plain_key": "x"}
    created = http.post("/api/v4/datasets", json=dataset(scientificMetadata=metadata)).json()
    expected = {"I1%20normalization": 1.5, "ALS%20Proposal%20%23": "ALS-11234", "plain_key": "x"}
    assert created["scientificMetadata"] == expected
    [listed] = http.get("/api/v4/datasets").json()
    assert listed["scientificMetadata"] == expected
    route = f"/api/v4/datasets/{quote(created['pid'], safe='')}"
    http.patch(route, json={"scientificMetadata": listed["scientificMetadata"]})
    [again] = http.get("/api/v4/datasets").json()
    assert "I1%2520normalization" in again["scientificMetadata"]  # the trap a client must not fall into


@pytest.fixture
def accounts() -> Iterator[FakeSciCat]:
    """ADMIN_GROUPS = admin; `privileged` may create datasets for any ownerGroup (CREATE_DATASET_PRIVILEGED_GROUPS)
    but is in no proposal group; `member` is in the group of proposal ALS-11111."""
    users = {"admin": "a", "privileged": "p", "member": "m"}
    groups = {"admin": {"admin"}, "privileged": {"proposal-ingest"}, "member": {"ALS-11111"}}
    with FakeSciCat(users=users, groups=groups, admin_groups={"admin"}, privileged_groups={"proposal-ingest"}) as f:
        yield f


def test_attaching_files_needs_an_admin_group_or_the_owner_group(accounts: FakeSciCat) -> None:
    """The 4.27 trap: an account may create a dataset and then be refused its file list (an empty dataset)."""
    fake = accounts

    def files(pid: str) -> dict[str, Any]:
        return {"datasetId": pid, "size": 1, "dataFileList": [{"path": "a", "size": 1, "time": "2024-05-01T00:00:00Z"}]}

    privileged, member, admin = client(fake, "privileged", "p"), client(fake, "member", "m"), client(fake, "admin", "a")
    pid = privileged.post("/api/v4/datasets", json=dataset(ownerGroup="ALS-11111")).json()["pid"]
    refused = privileged.post("/api/v4/origdatablocks", json=files(pid))
    assert refused.status_code == 403 and fake.blocks_of(pid) == []
    assert fake.datasets[pid]["size"] == 0  # what the real server left behind: an empty dataset
    assert privileged.patch(f"/api/v4/datasets/{quote(pid, safe='')}", json={"keywords": ["x"]}).status_code == 403
    assert member.post("/api/v4/origdatablocks", json=files(pid)).status_code == 201
    assert member.post("/api/v4/datasets", json=dataset(ownerGroup="ALS-22222")).status_code == 403
    other = admin.post("/api/v4/datasets", json=dataset(ownerGroup="ALS-22222")).json()["pid"]
    assert admin.post("/api/v4/origdatablocks", json=files(other)).status_code == 201
    # a non-admin lists only what its groups own or may access; the admin sees everything
    assert [d["pid"] for d in member.get("/api/v4/datasets").json()] == [pid]
    assert privileged.get("/api/v4/datasets").json() == []
    assert len(admin.get("/api/v4/datasets").json()) == 2
    assert [b["datasetId"] for b in member.get("/api/v4/origdatablocks").json()] == [pid]


def test_whoami_and_the_dataset_creation_authorization(accounts: FakeSciCat) -> None:
    http = client(accounts, "privileged", "p")
    me = http.get("/api/v3/auth/whoami").json()
    assert me == {"_id": "user-privileged", "username": "privileged", "email": "privileged@example.org",
                  "currentGroups": ["proposal-ingest"]}
    assert http.get(f"/api/v3/users/{me['_id']}/authorization/dataset/create").json() == {"authorization": True}
    assert http.get("/api/v3/users/user-member/authorization/dataset/create").status_code == 403


def test_unknown_and_missing_fields_are_400_and_recorded(fake: FakeSciCat) -> None:
    http = client(fake)
    unknown = http.post("/api/v4/datasets", json=dataset(principalInvestigator="v3 name"))
    assert unknown.status_code == 400
    assert unknown.json()["message"] == ["property principalInvestigator should not exist"]
    missing = http.post("/api/v4/datasets", json={k: v for k, v in dataset().items() if k != "datasetName"})
    assert missing.status_code == 400
    nested = http.post(
        "/api/v4/origdatablocks",
        json={
            "datasetId": "x",
            "size": 1,
            "dataFileList": [{"path": "a", "size": 1, "time": "2024-05-01T00:00:00Z", "md5": "?"}],
        },
    )
    assert nested.status_code == 400
    assert [v.kind for v in fake.violations] == ["schema", "schema", "schema"]


def test_server_rules_on_datasets(fake: FakeSciCat) -> None:
    http = client(fake)
    assert http.post("/api/v4/datasets", json=dataset(sourceFolderHost="bl733-data")).status_code == 400
    assert http.post("/api/v4/datasets", json=dataset(contactEmail="nobody")).status_code == 400
    assert http.post("/api/v4/datasets", json=dataset(creationTime="May 1st")).status_code == 400
    assert http.post("/api/v4/datasets", json=dataset(pid="my-own-pid")).status_code == 403
    admin = client(fake, "admin", "root")
    assert admin.post("/api/v4/datasets", json=dataset(pid="my-own-pid")).status_code == 201
    assert admin.post("/api/v4/datasets", json=dataset(pid="my-own-pid")).status_code == 409
    created = http.post(
        "/api/v4/datasets", json=dataset(scientificMetadata={"d": {"value": 3500, "unit": "mm"}})
    )
    assert created.status_code == 201
    body = created.json()
    assert body["pid"].startswith(fake.pid_prefix)
    assert body["sourceFolder"] == "/data/x"
    assert body["creationTime"] == "2024-05-01T12:00:00.000Z"
    assert body["scientificMetadata"]["d"] == {"value": 3500, "unit": "mm", "valueSI": 3.5, "unitSI": "m"}


def test_origdatablocks_are_not_unique_and_set_the_dataset_totals(fake: FakeSciCat) -> None:
    http = client(fake)
    pid = http.post("/api/v4/datasets", json=dataset()).json()["pid"]
    block = {
        "datasetId": pid,
        "size": 10,
        "chkAlg": "md5",
        "dataFileList": [{"path": "a", "size": 10, "time": "2024-05-01T00:00:00Z"}],
    }
    assert http.post("/api/v4/origdatablocks", json=block).status_code == 201
    assert http.post("/api/v4/origdatablocks", json=block).status_code == 201
    assert len(fake.blocks_of(pid)) == 2
    assert (fake.datasets[pid]["size"], fake.datasets[pid]["numberOfFiles"]) == (20, 2)


def test_the_date_filter_trap(fake: FakeSciCat) -> None:
    http = client(fake)
    http.post("/api/v4/datasets", json=dataset(creationLocation="/ALS/7.3.3"))

    def count(where: dict[str, Any]) -> int:
        return len(http.get("/api/v4/datasets", params={"filter": json.dumps({"where": where})}).json())

    assert count({"creationLocation": "/ALS/7.3.3"}) == 0  # read as 2003-07-03
    assert count({"creationLocation": {"$in": ["/ALS/7.3.3"]}}) == 1
    assert count({"creationLocation": {"$regex": "^/ALS/7\\.3\\.3$"}}) == 1
    assert count({"datasetName": "n"}) == 1  # not date-like: compared as a string
    assert count({"creationTime": "2024-05-01T12:00:00Z"}) == 1  # a date against a date field works


@pytest.mark.parametrize(
    ("text", "date_like"),
    [
        ("/ALS/7.3.3", True),
        ("2024-05-01", True),
        ("2024/05/01/lab6_0001", True),
        ("ingestor", False),
        ("lab6_standard", False),
    ],
)
def test_what_counts_as_a_javascript_date(text: str, date_like: bool) -> None:
    assert looks_like_js_date(text) is date_like


def test_faults_and_unknown_routes(fake: FakeSciCat) -> None:
    http = client(fake)
    fake.fail_next(1, 502)
    assert http.get("/api/v4/datasets").status_code == 502
    fake.drop_next(1)
    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/api/v4/datasets")
    assert http.get("/api/v4/datasets").status_code == 200
    assert http.get("/api/v5/datasets").status_code == 404
    assert http.post("/api/v3/datasets/some-pid/origdatablocks", json={}).status_code == 501
    assert [v.kind for v in fake.violations] == ["route", "unimplemented"]
