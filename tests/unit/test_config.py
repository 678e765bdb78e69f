from __future__ import annotations

from pathlib import Path

import pytest

from splash_flows.config import default_config, load_config, load_config_file, redacted_dict
from splash_flows.errors import ConfigError

GOOD = """
ledger:
  url: postgresql://splash:${PGPASS}@db.example/splash
tiers:
  data733: {kind: local, root: ./data733}
  lamarr: {kind: local, root: /abs/lamarr}
  cfs: {kind: local, root: cfs}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_file_resolves_paths_and_secrets(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, GOOD), {"PGPASS": "hunter2"})
    assert cfg.tiers["data733"].root == tmp_path / "data733"
    assert cfg.tiers["lamarr"].root == Path("/abs/lamarr")
    assert cfg.ledger.url_value() == "postgresql://splash:hunter2@db.example/splash"
    shown = redacted_dict(cfg)
    assert "hunter2" not in repr(shown)
    assert shown["ledger"]["url"] == "postgresql://splash:***@db.example/splash"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg)


def test_missing_env_var_names_key_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as exc:
        load_config_file(path, {})
    assert str(path) in str(exc.value) and "ledger.url" in str(exc.value) and "PGPASS" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ledger: {url: 'sqlite:///x'}\ntiers: {data733: {kind: local}}\n", "tiers.data733.local.root"),
        ("ledger: {url: 'sqlite:///x'}\ntiers: {data733: {kind: ftp, root: x}}\n", "tiers.data733"),
        ("ledger: {url: 'sqlite:///x'}\ntiers: {data733: {kind: local, root: x}}\n", "move"),
        ("ledger: {url: 'sqlite:///x'}\ntiers: {}\nbogus: 1\n", "bogus"),
        ("tiers: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_files_fail_with_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config_file(path, {})
    msg = str(exc.value)
    assert needle in msg, msg
    assert str(path) in msg
    assert "\n" not in msg


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "absent.yaml", {})


def test_discovery_order(tmp_path: Path) -> None:
    explicit = write(tmp_path, GOOD)
    other = tmp_path / "other.yaml"
    other.write_text(GOOD.replace("cfs: {kind: local, root: cfs}", "cfs: {kind: local, root: elsewhere}"))
    env = {"PGPASS": "x", "SPLASH_FLOWS_CONFIG": str(other)}
    assert load_config(explicit, env).tiers["cfs"].root == tmp_path / "cfs"
    assert load_config(None, env).tiers["cfs"].root == tmp_path / "elsewhere"
    default = load_config(None, {})
    assert default.source_path is None
    assert default.ledger.url_value().endswith("var/default/ledger.db")


def test_default_has_all_733_tiers(tmp_path: Path) -> None:
    cfg = default_config(tmp_path)
    assert set(cfg.tiers) == {"data733", "lamarr", "cfs", "hpss", "hpc"}
    assert cfg.move.targets == ["lamarr", "cfs"]
    assert cfg.ledger.url_value() == f"sqlite:///{tmp_path.resolve() / 'ledger.db'}"
