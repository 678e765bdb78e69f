"""The FAKE SciCat server must enforce the rules of SCICAT.md, or the adapter tests prove nothing.

Each test sends raw HTTP (no adapter) and checks that the fake refuses or behaves as the real 4.5 does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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
    assert http.get("/api/v4/datasets").status_code == 401
    assert http.get("/api/v4/datasets", params={"access_token": token}).status_code == 401
    fake.expire_tokens()
    assert http.get("/api/v4/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 401


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
