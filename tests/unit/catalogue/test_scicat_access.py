"""Access (issue 13 item 5): every SciCat dataset carries its proposal's group in ownerGroup/accessGroups and
nothing broader than configured -- on the dataset, its file list and its preview -- and the FAKE server, which
filters reads by group as a real one does, shows each proposal's data to that proposal (and beamline staff) only.

Simulated 7.3.3 scans of two proposals plus one whose proposal cannot be read are moved and catalogued by the
services (no Prefect) into the fake SciCat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import CatalogueRetryConfig, Config, DatasetConfig, SciCatCatalogueConfig
from splash_flows.context import build_context
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from tests.fakes.scicat_server import FakeSciCat, iter_violations

STAFF = "bl733-staff"
UNASSIGNED = "bl733-unassigned"
ACCOUNTS = {"ingestor": "i-pw", "alice": "a-pw", "bob": "b-pw", "carol": "c-pw", "staff": "s-pw"}
GROUPS = {"ingestor": {"ingestor", "admin"}, "alice": {"ALS-00622"}, "bob": {"ALS-11234"}, "carol": {"ALS-99999"},
          "staff": {STAFF}}


@pytest.fixture
def fake() -> Iterator[FakeSciCat]:
    with FakeSciCat(users=dict(ACCOUNTS), groups=GROUPS, admin_groups={"admin"}) as server:
        yield server
        assert not server.violations, "\n".join(iter_violations(server))


def site(sqlite_config: Config, fake: FakeSciCat) -> Config:
    scicat = SciCatCatalogueConfig(kind="scicat", url=fake.url, username="ingestor",
                                   password=SecretStr(ACCOUNTS["ingestor"]), admin_groups=["admin"],
                                   retry=CatalogueRetryConfig(max_attempts=2, backoff_base=0.0))
    dataset = DatasetConfig(contact_email="bl733@example.org", source_folder_host="bl733-data.als.example.org",
                            settle_seconds=0, beamline_group=STAFF, default_owner_group=UNASSIGNED)
    return sqlite_config.model_copy(update={"catalogue": scicat, "dataset": dataset})


def acquire(config: Config) -> list[str]:
    """Scans of ALS-00622 (one a hi/lo set) and of proposal 11234 (typed without its prefix), and one whose
    sidecar was lost."""
    root = Path(config.tiers["data733"].root)
    written = simulate_acquisitions(root, 2, small=True, hi_lo_every=2, proposal="ALS-00622", seed=1)
    written += simulate_acquisitions(root, 1, small=True, proposal="11234", seed=2)
    lost = simulate_acquisitions(root, 1, small=True, proposal="misc", seed=3)
    for path in [p for p in lost if p.suffix == ".txt"]:
        path.unlink()
    written += [p for p in lost if p.exists()]
    return [p.relative_to(root).as_posix() for p in written]


def as_account(fake: FakeSciCat, user: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=fake.url) as http:
        token = http.post("/api/v3/auth/login", json={"username": user, "password": ACCOUNTS[user]}).json()
        flt = {"where": {}, "limits": {"limit": 1000, "skip": 0}}
        answer = http.get("/api/v4/datasets", params={"filter": json.dumps(flt)},
                          headers={"Authorization": f"Bearer {token['access_token']}"})
    assert answer.status_code == 200
    rows: list[dict[str, Any]] = answer.json()
    return rows


def test_datasets_carry_their_proposal_group_and_nothing_broader(sqlite_config: Config, fake: FakeSciCat) -> None:
    config = site(sqlite_config, fake)
    ctx = build_context(config)
    try:
        paths = acquire(config)
        assert not move_files(ctx, paths).failures()
        report = catalogue_batch(ctx, paths)
    finally:
        ctx.close()
    assert not report.failed and not report.pending, report.describe()
    datasets = list(fake.datasets.values())
    by_group: dict[str, int] = {}
    for ds in datasets:
        folder = ds["scientificMetadata"]["splash_scan_key"].split("/")[0]
        expected = {"ALS-00622": "ALS-00622", "11234": "ALS-11234", "misc": UNASSIGNED}[folder]
        assert ds["ownerGroup"] == expected, ds["pid"]
        assert sorted(ds["accessGroups"]) == sorted({expected, STAFF}), ds["pid"]  # nothing broader than configured
        assert ds["isPublished"] is False and not ds.get("sharedWith")
        assert ds.get("proposalIds") == ([expected] if expected != UNASSIGNED else None)
        for block in fake.blocks_of(ds["pid"]):
            assert (block["ownerGroup"], sorted(block["accessGroups"])) == (expected, sorted(ds["accessGroups"]))
            assert block.get("isPublished") is False
        for att in [a for a in fake.attachments if a["relationships"][0]["targetId"] == ds["pid"]]:
            assert (att["ownerGroup"], sorted(att["accessGroups"])) == (expected, sorted(ds["accessGroups"]))
        by_group[expected] = by_group.get(expected, 0) + 1
    assert set(by_group) == {"ALS-00622", "ALS-11234", UNASSIGNED}
    assert len(fake.attachments) >= by_group["ALS-00622"]  # previews were attached, and checked above

    # what each account really sees (the server filters by group): its proposal's data, staff all, others none
    def seen(user: str) -> set[str]:
        return {d["ownerGroup"] for d in as_account(fake, user)}

    assert seen("alice") == {"ALS-00622"} and len(as_account(fake, "alice")) == by_group["ALS-00622"]
    assert seen("bob") == {"ALS-11234"}
    assert seen("carol") == set()
    assert len(as_account(fake, "staff")) == len(datasets)
