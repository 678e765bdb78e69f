"""``flight_check_733`` in-process: Completed when Globus works, Failed (with every reason) when it does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
import yaml

from tests.fakes.globus import CFS_COLLECTION, ENV, FakeGlobus, fake_collections, globus_config_data

pytestmark = pytest.mark.prefect


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    return tmp_path / "site"


@pytest.fixture
def fake(site: Path) -> Iterator[FakeGlobus]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:  # Prefect's own client is httpx
        yield FakeGlobus(rsps, fake_collections(site))


@pytest.fixture
def config_file(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    data = globus_config_data(site, f"sqlite:///{site / 'ledger.db'}",
                              transfer={"poll_initial_s": 0.001, "poll_max_s": 0.001})
    path = site / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_flight_check_flow(prefect_harness: None, fake: FakeGlobus, config_file: Path) -> None:
    from splash_flows.flows.bl733.flight_check import flight_check_733

    state = flight_check_733(config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report["ok"] is True and len(report["checks"]) == 9

    fake.unreachable.add(CFS_COLLECTION)
    failed = flight_check_733(config_path=str(config_file), probe=False, return_state=True)
    assert failed.is_failed()
    with pytest.raises(Exception, match=r"list cfs: FAILED: .*GCDisconnected"):
        failed.result()
