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


def test_flight_check_flow_checks_the_sfapi_key_too(prefect_harness: None, tmp_path: Path) -> None:
    """Without Globus tiers the flow still checks the other credentials: an SFAPI client past its expiry date
    fails the run, naming the check and what to do."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from splash_flows.config import default_config_data
    from splash_flows.flows.bl733.flight_check import flight_check_733

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = tmp_path / "key.pem"
    key.write_text(f"abcdefghijklm\n{pem}")
    key.chmod(0o600)
    data = default_config_data(tmp_path / "local")
    data["sfapi"] = {"key_file": str(key), "expires": "2020-01-01", "token_url": "http://127.0.0.1:9/token"}
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    state = flight_check_733(config_path=str(path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"sfapi expiry: FAILED: the client expired on 2020-01-01") as exc:
        state.result()
    assert "sfapi token: FAILED" in str(exc.value)
