"""Configuration of globus tiers and the ``globus`` section; the shipped production example passes ``config check``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splash_flows.cli.main import app
from splash_flows.config import GlobusTierConfig, LocalTierConfig, load_config_file, redacted_dict
from splash_flows.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bl733-production.yaml"
DUMMY_ENV = {
    "SPLASH_LEDGER_PASSWORD": "dummy-ledger-password",
    "SPLASH_LEDGER_HOST": "ledger.example",
    "BL733_DATA733_COLLECTION_ID": "11111111-1111-4111-8111-111111111111",
    "BL733_LAMARR_COLLECTION_ID": "22222222-2222-4222-8222-222222222222",
    "NERSC_CFS_COLLECTION_ID": "33333333-3333-4333-8333-333333333333",
    "NERSC_SCRATCH_COLLECTION_ID": "55555555-5555-4555-8555-555555555555",
    "GLOBUS_CLIENT_ID": "44444444-4444-4444-8444-444444444444",
    "GLOBUS_CLIENT_SECRET": "dummy-client-secret-value",
}

BASE = """
ledger: {url: 'sqlite:///ledger.db'}
tiers:
  data733: {kind: local, root: ./data733}
  lamarr: {kind: local, root: ./lamarr}
  cfs: %s
"""
GOOD_GLOBUS = "globus: {client_id: 44444444-4444-4444-8444-444444444444, client_secret: '${SECRET}'}\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_production_example_passes_config_check() -> None:
    cfg = load_config_file(EXAMPLE, DUMMY_ENV)
    assert {n: t.kind for n, t in cfg.tiers.items()} == {"data733": "globus", "lamarr": "globus", "cfs": "globus",
                                                          "hpc": "globus"}
    data733 = cfg.tiers["data733"]
    assert isinstance(data733, GlobusTierConfig) and data733.local_root == Path("/data/733/raw")
    assert cfg.globus is not None and cfg.globus.client_secret.get_secret_value() == "dummy-client-secret-value"
    result = CliRunner().invoke(app, ["config", "check", "--config", str(EXAMPLE), "--json"], env=DUMMY_ENV)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["config"]
    assert shown["globus"]["client_secret"] == "***"
    assert shown["tiers"]["cfs"]["collection_id"] == DUMMY_ENV["NERSC_CFS_COLLECTION_ID"]
    assert "dummy-client-secret-value" not in result.stdout and "dummy-ledger-password" not in result.stdout


def test_production_example_names_a_missing_variable() -> None:
    env = {k: v for k, v in DUMMY_ENV.items() if k != "GLOBUS_CLIENT_SECRET"}
    with pytest.raises(ConfigError, match=r"globus\.client_secret: environment variable GLOBUS_CLIENT_SECRET"):
        load_config_file(EXAMPLE, env)


def test_globus_tier_fields_are_normalised(tmp_path: Path) -> None:
    tier = ("{kind: globus, collection_id: ' 33333333-3333-4333-8333-33333333333A ', root: '/global//cfs/./733/',"
            " local_root: mnt/cfs}")
    cfg = load_config_file(write(tmp_path, BASE % tier + GOOD_GLOBUS), {"SECRET": "s3cret"})
    cfs = cfg.tiers["cfs"]
    assert isinstance(cfs, GlobusTierConfig)
    assert cfs.collection_id == "33333333-3333-4333-8333-33333333333a"
    assert cfs.root == "/global/cfs/733" and cfs.local_root == tmp_path / "mnt" / "cfs"
    assert not cfs.data_access_scope
    assert isinstance(cfg.tiers["lamarr"], LocalTierConfig)
    assert "s3cret" not in repr(redacted_dict(cfg))


@pytest.mark.parametrize(("tier", "globus", "needle"), [
    ("{kind: globus, collection_id: not-a-uuid, root: /x}", GOOD_GLOBUS, "tiers.cfs.globus.collection_id"),
    ("{kind: globus, collection_id: 33333333-3333-4333-8333-333333333333, root: relative/x}", GOOD_GLOBUS,
     "must be an absolute path"),
    ("{kind: globus, collection_id: 33333333-3333-4333-8333-333333333333, root: /a/../b}", GOOD_GLOBUS, "'..'"),
    ("{kind: globus, collection_id: 33333333-3333-4333-8333-333333333333, root: /x}", "",
     "no `globus:` section"),
    ("{kind: globus, collection_id: 33333333-3333-4333-8333-333333333333, root: /x}",
     "globus: {client_id: 44444444-4444-4444-8444-444444444444, client_secret: x, transfer: {poll_max_s: 0.5}}\n",
     "poll_max_s must be >= poll_initial_s"),
    ("{kind: globus, collection_id: 33333333-3333-4333-8333-333333333333, root: /x, bogus: 1}", GOOD_GLOBUS,
     "tiers.cfs.globus.bogus"),
])
def test_bad_globus_config_fails_with_one_line(tmp_path: Path, tier: str, globus: str, needle: str) -> None:
    path = write(tmp_path, BASE % tier + globus)
    with pytest.raises(ConfigError) as exc:
        load_config_file(path, {"SECRET": "x"})
    assert needle in str(exc.value) and "\n" not in str(exc.value)
