"""The SciCat adapter's own duties: login and re-login, retries and outages, refusals, the date-filter trap,
secrets, and idempotency across crashes. Against the FAKE SciCat server, or respx for transport errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from splash_flows.catalogue.scicat import LOGIN_ROUTE, WHOAMI_ROUTE, RetryPolicy, SciCatCatalogue
from splash_flows.errors import CatalogueError, CataloguePermissionError, CatalogueUnavailable
from tests.catalogue_samples import location, sample_doc
from tests.fakes.scicat_server import FakeSciCat, iter_violations

DATASETS = "/api/v4/datasets"
BLOCKS = "/api/v4/origdatablocks"
PASSWORD = "correct horse battery staple"


class Sleeps(list[float]):
    """An injected ``sleep`` that only remembers how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeSciCat]:
    with FakeSciCat(users={"ingestor": PASSWORD}) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def connect(
    fake: FakeSciCat, sleeps: Sleeps, *, attempts: int = 5, user: str = "ingestor", **kwargs: Any
) -> SciCatCatalogue:
    """The adapter as the fake's functional account, which is in ADMIN_GROUPS (as scicatlive sets it up)."""
    kwargs.setdefault("admin_groups", ("ingestor",))
    return SciCatCatalogue(
        fake.url, user, fake.users[user], retry=RetryPolicy(max_attempts=attempts), sleep=sleeps, **kwargs
    )


def assert_contract_kept(fake: FakeSciCat) -> None:
    assert not fake.violations, "\n".join(iter_violations(fake))


# ---------------------------------------------------------------------------------------------- login


def test_logs_in_again_when_the_token_has_expired(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    pid = catalogue.upsert(sample_doc())
    fake.expire_tokens()
    assert catalogue.get(pid).pid == pid
    assert fake.count("POST", LOGIN_ROUTE) == 2
    assert sleeps == []  # a 401 is not an outage
    assert_contract_kept(fake)


def test_renews_the_token_before_its_deadline(fake: FakeSciCat, sleeps: Sleeps) -> None:
    now = [1000.0]
    fake.token_ttl = 100.0
    catalogue = connect(fake, sleeps, clock=lambda: now[0])
    catalogue.find("2024/05/01/lab6_0001")
    now[0] += 95  # past expires_in minus the safety margin
    catalogue.find("2024/05/01/lab6_0001")
    assert fake.count("POST", LOGIN_ROUTE) == 2
    assert all(r.status != 401 for r in fake.requests)


def test_a_403_to_an_expired_token_on_the_v4_routes_logs_in_again(fake: FakeSciCat, sleeps: Sleeps) -> None:
    """A real 4.27 answers an expired token with 403 on /api/v4/datasets, PATCH /api/v4/datasets/{pid} and
    /api/v4/origdatablocks (issue 9 item 13): each of them logs in again once instead of failing the scan."""
    catalogue = connect(fake, sleeps)
    doc = sample_doc()
    catalogue.find(doc.scan_key)
    fake.expire_tokens()  # GET /api/v4/datasets
    pid = catalogue.upsert(doc)
    fake.expire_tokens()  # GET, then PATCH /api/v4/datasets/{pid}
    catalogue.add_location(pid, location("cfs"))
    fake.drop_next(1, method="POST", path=BLOCKS)  # a dataset left without its file list ...
    with pytest.raises(CatalogueUnavailable):
        connect(fake, sleeps, attempts=1).upsert(sample_doc("lab6_0002"))
    fake.expire_tokens()  # ... gets it, through a POST /api/v4/origdatablocks with an expired token
    later = catalogue.upsert(sample_doc("lab6_0002"))
    assert len(fake.blocks_of(later)) == 1
    assert [r.status for r in fake.requests if r.status == 403]  # the server did answer 403
    assert catalogue.get(pid).doc.locations == [location("cfs")]
    assert sleeps == []  # a 403 to an expired token is not an outage
    assert_contract_kept(fake)


def test_a_token_refused_after_a_fresh_login_is_a_catalogue_error(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    fake.reject_all_tokens = True
    with pytest.raises(CatalogueError, match="HTTP 403") as raised:
        catalogue.find("2024/05/01/lab6_0001")
    assert not isinstance(raised.value, CatalogueUnavailable)
    assert fake.count("POST", LOGIN_ROUTE) == 2  # the first login, then exactly one more
    assert sleeps == []


def test_a_wrong_password_is_a_catalogue_error(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = SciCatCatalogue(fake.url, "ingestor", "wrong password", sleep=sleeps)
    with pytest.raises(CatalogueError, match="login") as raised:
        catalogue.find("2024/05/01/lab6_0001")
    assert not isinstance(raised.value, CatalogueUnavailable)
    assert "wrong password" not in str(raised.value)


# ---------------------------------------------------------------------------------------------- retries


def test_retries_5xx_with_exponential_backoff_then_succeeds(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    fake.fail_next(3, 503)
    pid = catalogue.upsert(sample_doc())
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(fake.datasets) == 1
    assert len(fake.blocks_of(pid)) == 1


def test_an_outage_raises_catalogue_unavailable_after_bounded_attempts(
    fake: FakeSciCat, sleeps: Sleeps
) -> None:
    catalogue = connect(fake, sleeps, attempts=4)
    fake.fail_next(1000, 500)
    with pytest.raises(CatalogueUnavailable, match="gave up after 4 attempts"):
        catalogue.upsert(sample_doc())
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(fake.requests) == 4  # one request per attempt: the first (login) fails every time
    assert fake.datasets == {}


def test_a_refused_connection_is_an_outage(sleeps: Sleeps) -> None:
    with FakeSciCat() as gone:
        url = gone.url
    catalogue = SciCatCatalogue(url, "ingestor", PASSWORD, retry=RetryPolicy(max_attempts=3), sleep=sleeps)
    with pytest.raises(CatalogueUnavailable, match="ConnectError"):
        catalogue.find("2024/05/01/lab6_0001")
    assert sleeps == [0.5, 1.0]


def test_a_dropped_connection_is_retried(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    fake.drop_next(1, method="GET", path=DATASETS)
    assert catalogue.find("2024/05/01/lab6_0001") is None
    assert sleeps == [0.5]


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=6, backoff_base=1.0, backoff_max=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


LOGIN_ANSWER = {
    "access_token": "t0ken-from-respx",
    "id": "x",
    "expires_in": 3600,
    "ttl": 3600,
    "created": "2024-05-01T00:00:00.000Z",
    "userId": "u",
    "user": {},
}


@respx.mock(base_url="https://scicat.example.org", assert_all_called=True)
def test_read_timeouts_are_retried(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(LOGIN_ROUTE).respond(201, json=LOGIN_ANSWER)
    route = respx_mock.get(DATASETS).mock(
        side_effect=[
            httpx.ReadTimeout("read timed out"),
            httpx.ConnectTimeout("timed out"),
            httpx.Response(200, json=[]),
        ]
    )
    sleeps = Sleeps()
    catalogue = SciCatCatalogue("https://scicat.example.org", "ingestor", PASSWORD, sleep=sleeps)
    assert catalogue.find("2024/05/01/lab6_0001") is None
    assert route.call_count == 3
    assert sleeps == [0.5, 1.0]
    assert route.calls.last.request.headers["Authorization"] == "Bearer t0ken-from-respx"


@respx.mock(base_url="https://scicat.example.org")
def test_timeouts_every_time_are_an_outage(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(LOGIN_ROUTE).respond(201, json=LOGIN_ANSWER)
    respx_mock.get(DATASETS).mock(side_effect=httpx.ReadTimeout("read timed out"))
    sleeps = Sleeps()
    catalogue = SciCatCatalogue(
        "https://scicat.example.org", "ingestor", PASSWORD, retry=RetryPolicy(max_attempts=3), sleep=sleeps
    )
    with pytest.raises(CatalogueUnavailable, match="ReadTimeout"):
        catalogue.find("2024/05/01/lab6_0001")
    assert sleeps == [0.5, 1.0]


# ---------------------------------------------------------------------------------------------- refusals


def test_an_unknown_field_is_a_catalogue_error_naming_the_scan(fake: FakeSciCat, sleeps: Sleeps) -> None:
    # a server whose whitelist lacks a field we send, e.g. after a backend upgrade
    fake.forbidden_fields["POST /api/v4/datasets"] = {"keywords"}
    catalogue = connect(fake, sleeps)
    doc = sample_doc()
    with pytest.raises(CatalogueError) as raised:
        catalogue.upsert(doc)
    assert not isinstance(raised.value, CatalogueUnavailable)
    message = str(raised.value)
    assert doc.scan_key in message
    assert "HTTP 400" in message
    assert "property keywords should not exist" in message
    assert sleeps == []  # a refusal is not retried
    assert [v.detail for v in fake.violations] == ["property keywords should not exist"]


def test_a_host_that_is_not_url_like_is_refused_before_sending(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    with pytest.raises(CatalogueError, match="sourceFolderHost 'bl733-data' is not URL-like"):
        catalogue.upsert(sample_doc(source_folder_host="bl733-data"))
    assert fake.count("POST", DATASETS) == 0
    for host in ("bl733-data.als.example.org", "https://bl733-data.als.example.org", "131.243.73.10"):
        catalogue.upsert(sample_doc(f"scan_{len(fake.datasets)}", source_folder_host=host))
    assert len(fake.datasets) == 3
    assert_contract_kept(fake)


def test_the_server_rejects_a_host_without_a_domain(fake: FakeSciCat) -> None:
    """The rule above is the server's, not ours alone: the fake (like 4.5) refuses it too."""
    body = {
        "type": "raw",
        "datasetName": "n",
        "ownerGroup": "g",
        "contactEmail": "a@example.org",
        "sourceFolder": "/d",
        "creationTime": "2024-05-01T00:00:00Z",
        "sourceFolderHost": "bl733-data",
    }
    with httpx.Client(base_url=fake.url) as http:
        token = http.post(LOGIN_ROUTE, json={"username": "ingestor", "password": PASSWORD}).json()[
            "access_token"
        ]
        answer = http.post(DATASETS, json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 400


def test_metadata_keys_with_the_reserved_prefix_are_refused(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    with pytest.raises(CatalogueError, match="splash_scan_key"):
        catalogue.upsert(sample_doc(scientific_metadata={"splash_scan_key": "elsewhere"}))
    assert fake.requests == []


# ---------------------------------------------------------------------------------------------- queries


def _plain_string_conditions(where: Any) -> list[tuple[str, str]]:
    """(field, value) of every condition that compares a field with a bare string (the trap's prey)."""
    found: list[tuple[str, str]] = []
    if isinstance(where, dict):
        for key, cond in where.items():
            if key in ("$and", "$or"):
                for sub in cond:
                    found += _plain_string_conditions(sub)
            elif isinstance(cond, str):
                found.append((key, cond))
            elif isinstance(cond, dict) and isinstance(cond.get("$eq"), str):
                found.append((key, cond["$eq"]))
    return found


def test_find_is_not_caught_by_the_date_filter_trap(fake: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(fake, sleeps)
    doc = sample_doc()
    assert doc.creation_location == "/ALS/7.3.3"
    pid = catalogue.upsert(doc)
    found = catalogue.find(doc.scan_key)
    assert found is not None and found.pid == pid
    entries = catalogue.search(proposal="ALS-11234", text="2024/05/01/LAB6")  # date-like, sent as $regex
    assert [e.pid for e in entries] == [pid]
    # No filter the adapter sent compares a field with a bare string ...
    filters = [json.loads(r.query["filter"][0]) for r in fake.requests if "filter" in r.query]
    assert filters and all(_plain_string_conditions(f.get("where")) == [] for f in filters)
    # ... and the fake does spring the trap on one, as the real server does:
    with httpx.Client(base_url=fake.url) as http:
        token = http.post(LOGIN_ROUTE, json={"username": "ingestor", "password": PASSWORD}).json()[
            "access_token"
        ]
        plain = http.get(
            DATASETS,
            params={"filter": json.dumps({"where": {"creationLocation": "/ALS/7.3.3"}})},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert plain.json() == []


# ---------------------------------------------------------------------------------------------- secrets


def test_secrets_appear_in_no_log_record_and_no_error(
    fake: FakeSciCat, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    catalogue = connect(fake, sleeps, attempts=2)
    texts.append(repr(catalogue))
    pid = catalogue.upsert(sample_doc())
    fake.expire_tokens()
    catalogue.get(pid)
    fake.fail_next(2, 503)
    with pytest.raises(CatalogueUnavailable) as outage:
        catalogue.get(pid)
    fake.reject_all_tokens = True
    with pytest.raises(CatalogueError) as refused:
        catalogue.get(pid)
    with pytest.raises(CatalogueError) as bad_login:
        SciCatCatalogue(fake.url, "ingestor", "not-the-password-" + PASSWORD, sleep=sleeps).find("x")
    for raised in (outage, refused, bad_login):
        error: BaseException | None = raised.value
        while error is not None:  # the message and every chained cause
            texts.append(str(error))
            error = error.__cause__
    texts += [r.getMessage() for r in caplog.records]
    assert len(fake.issued_tokens) == 3  # first login, after expiry, the refused re-login
    assert any("logging in again" in t for t in texts)  # the log was captured at all
    for secret in (PASSWORD, *fake.issued_tokens):
        assert not [t for t in texts if secret in t]


# ---------------------------------------------------------------------------------------------- idempotency


def test_a_crash_between_dataset_and_file_list_is_repaired_by_the_rerun(
    fake: FakeSciCat, sleeps: Sleeps
) -> None:
    doc = sample_doc()
    fake.drop_next(1, method="POST", path=BLOCKS)  # the process "dies" while posting the file list
    with pytest.raises(CatalogueUnavailable):
        connect(fake, sleeps, attempts=1).upsert(doc)
    assert len(fake.datasets) == 1
    assert fake.origdatablocks == []
    pid = connect(fake, sleeps).upsert(doc)  # the re-run, a new process
    assert list(fake.datasets) == [pid]
    assert len(fake.blocks_of(pid)) == 1
    assert fake.datasets[pid]["numberOfFiles"] == 3
    assert fake.datasets[pid]["size"] == doc.size
    assert_contract_kept(fake)


def test_a_lost_answer_to_the_dataset_post_does_not_create_a_second(fake: FakeSciCat, sleeps: Sleeps) -> None:
    fake.drop_next(1, method="POST", path=DATASETS, after_processing=True)
    pid = connect(fake, sleeps).upsert(sample_doc())
    assert list(fake.datasets) == [pid]
    assert len(fake.blocks_of(pid)) == 1
    assert sleeps == [0.5]


def test_a_lost_answer_to_the_file_list_post_does_not_store_two(fake: FakeSciCat, sleeps: Sleeps) -> None:
    fake.drop_next(1, method="POST", path=BLOCKS, after_processing=True)
    pid = connect(fake, sleeps).upsert(sample_doc())
    assert len(fake.blocks_of(pid)) == 1
    assert fake.count("POST", BLOCKS) == 1


def test_a_dataset_without_files_gets_no_file_list(fake: FakeSciCat, sleeps: Sleeps) -> None:
    pid = connect(fake, sleeps).upsert(sample_doc(files=[]))
    assert fake.blocks_of(pid) == []
    assert_contract_kept(fake)


def test_the_server_adds_si_values_but_the_document_reads_back_unchanged(
    fake: FakeSciCat, sleeps: Sleeps
) -> None:
    catalogue = connect(fake, sleeps)
    doc = sample_doc()
    pid = catalogue.upsert(doc)
    assert fake.datasets[pid]["scientificMetadata"]["energy"]["unitSI"] == "kg m^2 / s^2"
    assert catalogue.get(pid).doc.scientific_metadata == doc.scientific_metadata


# ---------------------------------------------------------------------------------------------- permissions (item 14)


@pytest.fixture
def accounts() -> Iterator[FakeSciCat]:
    """ADMIN_GROUPS = admin. `limited` may create datasets for any ownerGroup (CREATE_DATASET_PRIVILEGED_GROUPS)
    but is in no proposal group: on a real 4.27 it creates datasets and is then refused their file lists."""
    users = {"admin": "a", "limited": "l", "member": "m"}
    groups = {"admin": {"admin"}, "limited": {"proposal-ingest"}, "member": {"als-11234"}}
    with FakeSciCat(users=users, groups=groups, admin_groups={"admin"}, privileged_groups={"proposal-ingest"}) as f:
        yield f


def test_an_account_that_cannot_attach_files_creates_nothing(accounts: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(accounts, sleeps, user="limited", admin_groups=())
    with pytest.raises(CataloguePermissionError) as raised:
        catalogue.upsert(sample_doc())
    message = str(raised.value)
    assert "\n" not in message
    for part in ("'limited'", "POST /api/v4/origdatablocks", "ownerGroup 'als-11234'", "ADMIN_GROUPS",
                 "catalogue.admin_groups", "proposal-ingest", "2024/05/01/lab6_0001", "nothing was created"):
        assert part in message
    assert accounts.datasets == {} and accounts.origdatablocks == []
    assert accounts.count("POST", DATASETS) == 0
    assert sleeps == []  # not an outage: an operator must act


def test_an_admin_group_or_the_owner_group_lets_the_account_attach_files(
    accounts: FakeSciCat, sleeps: Sleeps
) -> None:
    admin = connect(accounts, sleeps, user="admin", admin_groups=("admin",))
    pid = admin.upsert(sample_doc())
    assert len(accounts.blocks_of(pid)) == 1
    member = connect(accounts, sleeps, user="member", admin_groups=())
    other = member.upsert(sample_doc("lab6_0002"))  # ownerGroup als-11234 is one of its groups
    assert len(accounts.blocks_of(other)) == 1
    member.upsert(sample_doc("lab6_0003"))
    assert accounts.count("GET", WHOAMI_ROUTE) == 2  # asked once per account and ownerGroup, not per dataset
    # a group the account merely claims in admin_groups is not enough: it must really be in it
    with pytest.raises(CataloguePermissionError):
        connect(accounts, sleeps, user="limited", admin_groups=("admin",)).upsert(sample_doc("lab6_0004"))
    assert_contract_kept(accounts)


def test_the_account_and_what_it_may_do(accounts: FakeSciCat, sleeps: Sleeps) -> None:
    catalogue = connect(accounts, sleeps, user="limited", admin_groups=())
    account = catalogue.account()
    assert (account.username, account.user_id, account.groups) == ("limited", "user-limited", ("proposal-ingest",))
    assert catalogue.can_create_datasets(account) is True
    assert catalogue.attach_refusal("proposal-ingest", account) is None
    assert "ownerGroup 'ALS-99999'" in (catalogue.attach_refusal("ALS-99999", account) or "")


# ---------------------------------------------------------------------------------------------- encoded keys (item 15)


def test_url_encoded_metadata_keys_read_back_decoded_and_are_never_encoded_twice(
    fake: FakeSciCat, sleeps: Sleeps
) -> None:
    catalogue = connect(fake, sleeps)
    metadata = {"I1 normalization": 0.25, "ALS Proposal #": "ALS-11234", "Exposure time s": {"value": 1.0, "unit": "s"},
                "100% transmission?": True}
    doc = sample_doc(scientific_metadata=metadata)
    pid = catalogue.upsert(doc)
    stored = fake.datasets[pid]["scientificMetadata"]
    assert "I1%20normalization" in stored and "ALS%20Proposal%20%23" in stored  # as a real v4 keeps them
    keys = set(stored)
    assert catalogue.get(pid).doc.scientific_metadata == metadata
    catalogue.add_location(pid, location("cfs"))  # read, modify, write back
    catalogue.add_location(pid, location("lamarr"))
    assert set(fake.datasets[pid]["scientificMetadata"]) == keys  # "I1%2520normalization" would be a key twice encoded
    entry = catalogue.get(pid)
    assert entry.doc.scientific_metadata == metadata
    assert [e.doc.scientific_metadata for e in catalogue.search(text="lab6")] == [metadata]
    found = catalogue.find(doc.scan_key)
    assert found is not None and found.doc.scientific_metadata == metadata
    assert_contract_kept(fake)
