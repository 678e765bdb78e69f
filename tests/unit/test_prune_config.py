"""Retention rules in the configuration: the 7.3.3 defaults and the validation of explicit rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from splash_flows.config import default_config, load_config_file
from splash_flows.errors import ConfigError
from splash_flows.services.prune import prune_order

BASE = """
ledger: {url: 'sqlite:///x.db'}
tiers:
  data733: {kind: local, root: d}
  lamarr: {kind: local, root: l}
  cfs: {kind: local, root: c}
  hpss: {kind: local, root: h}
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config_file(path, {})


def test_default_rules_for_733(tmp_path: Path) -> None:
    rules = default_config(tmp_path).retention.rules
    assert set(rules) == {"data733", "lamarr", "cfs"}
    assert rules["data733"].after_days == 180
    assert rules["data733"].require_all == ["cfs"] and rules["data733"].require_any == ["lamarr", "hpss"]
    assert rules["lamarr"].require_all == ["cfs", "hpss"]
    assert rules["cfs"].require_all == ["hpss"] and rules["cfs"].after_days > rules["data733"].after_days
    assert prune_order(rules) == ["data733", "lamarr", "cfs"]


def test_defaults_shrink_to_the_configured_tiers(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE.replace("  hpss: {kind: local, root: h}\n", ""))
    rules = cfg.retention.rules  # type: ignore[attr-defined]
    assert set(rules) == {"data733"}  # lamarr and cfs need hpss, which is not configured: never pruned
    assert rules["data733"].require_any == ["lamarr"]


def test_explicit_rules_are_taken_as_written(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + "retention:\n  rules:\n    data733: {after_days: 7, require_all: [cfs, lamarr]}\n")
    rules = cfg.retention.rules  # type: ignore[attr-defined]
    assert set(rules) == {"data733"} and rules["data733"].after_days == 7
    empty = load(tmp_path, BASE + "retention: {rules: {}}\n")
    assert empty.retention.rules == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("rules", "needle"),
    [
        ("nope: {after_days: 1, require_all: [cfs]}", "tier 'nope' is not in tiers"),
        ("data733: {after_days: 1, require_all: [tape]}", "requires tier 'tape'"),
        ("data733: {after_days: 1, require_any: [data733, cfs]}", "may not require the tier it prunes"),
        ("data733: {after_days: 1}", "at least one other tier"),
        ("data733: {after_days: -1, require_all: [cfs]}", "retention.rules.data733.after_days"),
        ("data733: {after_days: 1, require_all: [cfs], keep: 3}", "keep"),
    ],
)
def test_bad_rules_are_config_errors(tmp_path: Path, rules: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, BASE + f"retention:\n  rules:\n    {rules}\n")
    assert needle in str(exc.value) and "\n" not in str(exc.value)
