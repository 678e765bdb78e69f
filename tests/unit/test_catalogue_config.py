"""The ``catalogue`` and ``dataset`` configuration sections, and how the context builds the catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from splash_flows.catalogue.embedded import EmbeddedCatalogue
from splash_flows.catalogue.scicat import SciCatCatalogue
from splash_flows.config import (
    EmbeddedCatalogueConfig,
    SciCatCatalogueConfig,
    default_config,
    load_config_file,
    redacted_dict,
)
from splash_flows.context import build_catalogue, build_context
from splash_flows.errors import ConfigError

TIERS = "tiers: {data733: {root: a}, lamarr: {root: b}, cfs: {root: c}}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_the_embedded_default_and_a_config_without_the_section_catalogue_beside_the_ledger(tmp_path: Path) -> None:
    cfg = default_config(tmp_path / "root")
    assert isinstance(cfg.catalogue, EmbeddedCatalogueConfig)
    assert cfg.catalogue_path() == (tmp_path / "root" / "catalogue.db").resolve()
    legacy = load_config_file(write(tmp_path, "ledger: {url: 'sqlite:///var/ledger.db'}\n" + TIERS), environ={})
    assert legacy.catalogue.kind == "embedded" and legacy.catalogue_path() == tmp_path / "var" / "catalogue.db"
    assert legacy.dataset.exclude_stems == ["autoexpose", "beamstop_test"] and legacy.archive_tier_name() == "cfs"
    assert legacy.download_tiers() == ["lamarr", "cfs", "data733"]


def test_a_relative_embedded_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, "ledger: {url: 'sqlite:///l.db'}\n" + TIERS
                                 + "catalogue: {kind: embedded, path: cat/c.db, download_tiers: [cfs]}\n"), environ={})
    assert cfg.catalogue_path() == tmp_path / "cat" / "c.db"
    assert cfg.download_tiers() == ["cfs"]


def test_a_postgres_ledger_needs_an_explicit_embedded_path_when_the_catalogue_is_used(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, "ledger: {url: 'postgresql://u@h/db'}\n" + TIERS), environ={})
    with pytest.raises(ConfigError, match=r"catalogue\.path is required"):
        cfg.catalogue_path()


def test_scicat_password_comes_from_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    text = ("ledger: {url: 'sqlite:///l.db'}\n" + TIERS
            + "catalogue: {kind: scicat, url: 'https://scicat.example.org', username: ingestor,"
              " password: '${SCICAT_PW}', retry: {max_attempts: 3}}\n"
            + "dataset: {contact_email: bl733@example.org, archive_tier: lamarr}\n")
    cfg = load_config_file(write(tmp_path, text), environ={"SCICAT_PW": "s3cr3t-pw"})
    assert isinstance(cfg.catalogue, SciCatCatalogueConfig)
    assert cfg.catalogue.password.get_secret_value() == "s3cr3t-pw" and cfg.catalogue.retry.max_attempts == 3
    assert "s3cr3t-pw" not in str(redacted_dict(cfg)) and cfg.archive_tier_name() == "lamarr"
    catalogue = build_catalogue(cfg)
    try:
        assert isinstance(catalogue, SciCatCatalogue) and "s3cr3t-pw" not in repr(catalogue)
    finally:
        catalogue.close()


@pytest.mark.parametrize(("extra", "message"), [
    ("catalogue: {kind: scicat, url: 'https://x.org', username: u, password: p}\n", "contact_email is required"),
    ("dataset: {contact_email: not-an-address}\n", "not an e-mail address"),
    ("dataset: {archive_tier: tape}\n", "tier 'tape'"),
    ("catalogue: {kind: embedded, download_tiers: [hpss]}\n", "tier 'hpss'"),
    ("catalogue: {kind: scicat, url: 'https://x.org', username: u, password: p, path: x}\n", "catalogue.scicat.path"),
    ("catalogue: {kind: mongo}\n", "catalogue"),
])
def test_bad_catalogue_settings_are_one_clear_error(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_file(write(tmp_path, "ledger: {url: 'sqlite:///l.db'}\n" + TIERS + extra), environ={})


def test_the_catalogue_is_built_on_first_use_only(tmp_path: Path) -> None:
    cfg = default_config(tmp_path / "root")
    ctx = build_context(cfg)
    try:
        assert not cfg.catalogue_path().exists()
        assert isinstance(ctx.catalogue(), EmbeddedCatalogue) and ctx.catalogue() is ctx.catalogue()
        assert cfg.catalogue_path().exists()
    finally:
        ctx.close()
    off = cfg.model_copy(update={"catalogue": cfg.catalogue.model_validate({"kind": "embedded"})})
    assert off.catalogue_path() == cfg.catalogue_path()  # no path given: beside the SQLite ledger
    none = load_config_file(write(tmp_path, "ledger: {url: 'sqlite:///l.db'}\n" + TIERS + "catalogue: {kind: none}\n"),
                            environ={})
    with pytest.raises(ConfigError, match="no catalogue is configured"):
        build_catalogue(none)
