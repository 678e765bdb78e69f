"""Credential preflight: the SFAPI key (file, mode, parse, token from NERSC mocked at the HTTP transport with
respx, expiry date), the SciCat account against the fake SciCat server, and ``splash-flows check`` as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx
import yaml
from authlib.jose import JsonWebKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from splash_flows.config import Config, SciCatCatalogueConfig, SfapiCredentialsConfig, default_config_data, parse_config
from splash_flows.errors import CredentialError
from splash_flows.monitoring.credentials import expiries, preflight
from splash_flows.sfapi import read_key, token
from tests.fakes.scicat_server import FakeSciCat
from tests.support.postgres import free_port

CLIENT_ID = "abcdefghijklm"  # 13 characters, as Iris makes them
TOKEN_URL = "https://oidc.example.invalid/c2id/token"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def pem() -> str:
    return _pem()


def pem_key(tmp_path: Path, pem: str, mode: int = 0o600, client_id: str = CLIENT_ID) -> Path:
    path = tmp_path / "sfapi-key.pem"
    path.write_text(f"{client_id}\n{pem}")
    path.chmod(mode)
    return path


def with_sfapi(config: Config, key: Path, expires: str | None) -> Config:
    creds = SfapiCredentialsConfig(key_file=key, expires=expires, token_url=TOKEN_URL)
    return config.model_copy(update={"sfapi": creds})


def test_a_pem_key_and_a_json_jwk_key_parse(tmp_path: Path, pem: str) -> None:
    found = read_key(pem_key(tmp_path, pem))
    assert (found.client_id, found.kind) == (CLIENT_ID, "PEM")
    assert "BEGIN" not in repr(found)  # the secret is never shown
    jwk = JsonWebKey.import_key(pem, {"kty": "RSA"}).as_dict(is_private=True)
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"client_id": CLIENT_ID, "secret": jwk}))
    path.chmod(0o600)
    found = read_key(path)
    assert (found.client_id, found.kind) == (CLIENT_ID, "JWK")


@pytest.mark.parametrize(("case", "message"), [
    ("mode", "mode is 644, must be 600 (run: chmod 600"),
    ("missing", "cannot read it"),
    ("garbled", "does not parse as PEM"),
    ("no-id", "no client id"),
])
def test_a_bad_key_is_one_clear_line(tmp_path: Path, pem: str, case: str, message: str) -> None:
    if case == "mode":
        path = pem_key(tmp_path, pem, mode=0o644)
    elif case == "missing":
        path = tmp_path / "nope.pem"
    elif case == "garbled":
        path = pem_key(tmp_path, pem.replace("A", "#", 5))
    else:
        path = pem_key(tmp_path, pem, client_id="short")
    with pytest.raises(CredentialError, match=message.replace("(", r"\(")):
        read_key(path)


def test_a_bare_pem_key_takes_its_id_from_the_configuration(tmp_path: Path, pem: str) -> None:
    path = tmp_path / "bare.pem"
    path.write_text(pem)
    path.chmod(0o600)
    with pytest.raises(CredentialError, match="no client id"):
        read_key(path)
    assert read_key(path, CLIENT_ID).client_id == CLIENT_ID


@respx.mock
def test_the_token_is_obtained_with_the_key(tmp_path: Path, pem: str) -> None:
    route = respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        200, json={"access_token": "tok-123", "token_type": "Bearer", "expires_in": 600}))
    cfg = SfapiCredentialsConfig(key_file=pem_key(tmp_path, pem), token_url=TOKEN_URL)
    assert token(cfg) == "tok-123"
    sent = route.calls.last.request.content.decode()
    assert "client_credentials" in sent and "client_assertion=" in sent  # private-key JWT, not a password


@respx.mock
def test_preflight_says_what_is_wrong_and_what_to_do(sqlite_config: Config, tmp_path: Path, pem: str) -> None:
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(401, json={"error": "invalid_client",
                                                                      "error_description": "client expired"}))
    soon = (NOW + timedelta(days=5)).strftime("%Y-%m-%d")
    report = preflight(with_sfapi(sqlite_config, pem_key(tmp_path, pem), soon), now=lambda: NOW)
    by = {c.name: c for c in report.checks}
    assert by["sfapi key"].ok and CLIENT_ID in by["sfapi key"].detail
    assert by["sfapi token"].ok is False and "invalid_client" in by["sfapi token"].detail
    assert "Iris" in (by["sfapi token"].hint or "")
    assert by["sfapi expiry"].ok is False and "in 5.5 days" in by["sfapi expiry"].detail
    assert not report.ok


@respx.mock
def test_preflight_passes_with_a_good_key_far_from_expiry(sqlite_config: Config, tmp_path: Path, pem: str) -> None:
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t", "token_type": "Bearer"}))
    config = with_sfapi(sqlite_config, pem_key(tmp_path, pem), "2027-03-01")
    report = preflight(config, now=lambda: NOW)
    assert report.ok, report.summary()
    assert [c.name for c in report.checks] == ["sfapi key", "sfapi token", "sfapi expiry"]
    assert "valid until 2027-03-01 23:59 UTC (91 days)" in report.checks[-1].detail
    (expiry,) = expiries(config)
    assert expiry.expires_at == datetime(2027, 3, 1, 23, 59, 59, tzinfo=UTC)


def test_expired_client_fails_without_asking_nersc_for_the_date(sqlite_config: Config, tmp_path: Path,
                                                                 pem: str) -> None:
    config = with_sfapi(sqlite_config, pem_key(tmp_path, pem), "2026-11-01")
    report = preflight(config, now=lambda: NOW, sfapi_token_fn=lambda cfg: "t")
    assert [c.ok for c in report.checks] == [True, True, False]
    assert "the client expired on 2026-11-01" in report.checks[-1].detail


def test_scicat_login_is_checked(sqlite_config: Config) -> None:
    with FakeSciCat() as fake:
        good = sqlite_config.model_copy(update={"catalogue": SciCatCatalogueConfig(
            kind="scicat", url=fake.url, username="ingestor", password=fake.users["ingestor"],
            admin_groups=["ingestor"])})
        ok = preflight(good)
        assert ok.ok and ok.checks[0].name == "scicat login", ok.summary()
        bad = good.model_copy(update={"catalogue": SciCatCatalogueConfig(
            kind="scicat", url=fake.url, username="ingestor", password="wrong", admin_groups=["ingestor"])})
        refused = preflight(bad)
        assert not refused.ok and refused.checks[0].ok is False
        assert "SCICAT_PASSWORD" in (refused.checks[0].hint or "")


def test_check_command_exits_1_naming_each_failed_check(tmp_path: Path, pem: str) -> None:
    data = default_config_data(tmp_path / "site")
    port = free_port()  # nothing listens there: NERSC "cannot be reached"
    data["sfapi"] = {"key_file": str(pem_key(tmp_path, pem)), "expires": "2099-01-01",
                     "token_url": f"http://127.0.0.1:{port}/token"}
    cfg = tmp_path / "splash.yaml"
    cfg.write_text(yaml.safe_dump(data))
    parse_config(data, source="t", base=tmp_path, environ={})  # valid as written
    proc = subprocess.run([sys.executable, "-m", "splash_flows", "--config", str(cfg), "check", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    by = {c["name"]: c for c in report["checks"]}
    assert by["sfapi key"]["ok"] and by["sfapi expiry"]["ok"]
    assert by["sfapi token"]["result"] == "FAILED" and "could not be reached" in by["sfapi token"]["detail"]
