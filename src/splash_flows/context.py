"""Builds the objects a run needs from a configuration: the one place clients are constructed.

Nothing is built at import time; a flow run, a CLI command or a test calls ``build_context`` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from splash_flows.catalogue.base import Catalogue
from splash_flows.config import (
    Config,
    EmbeddedCatalogueConfig,
    LocalTierConfig,
    SciCatCatalogueConfig,
    load_config,
)
from splash_flows.errors import ConfigError
from splash_flows.ledger import Ledger
from splash_flows.tiers.base import Tier
from splash_flows.tiers.local import LocalTier


def build_tier(name: str, config: Config) -> Tier:
    """The tier object for ``name`` as configured."""
    tier_cfg = config.tier(name)
    if isinstance(tier_cfg, LocalTierConfig):
        return LocalTier(name, tier_cfg.root, config.checksum, concurrency=config.move.concurrency,
                         verify_from_disk=tier_cfg.verify_from_disk)
    raise ConfigError(f"tier {name!r}: kind {tier_cfg.kind!r} is not supported")


def build_catalogue(config: Config) -> Catalogue:
    """The catalogue client as configured (opening the embedded file, or preparing the SciCat session; SciCat
    logs in on the first request). ConfigError when ``catalogue.kind`` is ``none``."""
    cat_cfg = config.catalogue
    if isinstance(cat_cfg, EmbeddedCatalogueConfig):
        from splash_flows.catalogue.embedded import EmbeddedCatalogue

        return EmbeddedCatalogue(config.catalogue_path())
    if isinstance(cat_cfg, SciCatCatalogueConfig):
        from splash_flows.catalogue.scicat import RetryPolicy, SciCatCatalogue

        retry = RetryPolicy(max_attempts=cat_cfg.retry.max_attempts, backoff_base=cat_cfg.retry.backoff_base,
                            backoff_max=cat_cfg.retry.backoff_max)
        return SciCatCatalogue(cat_cfg.url, cat_cfg.username, cat_cfg.password.get_secret_value(),
                               timeout=cat_cfg.timeout, retry=retry, verify=cat_cfg.verify_tls)
    raise ConfigError("no catalogue is configured (catalogue.kind is 'none')")


@dataclass
class Context:
    """A configuration with its ledger and tiers, built lazily and once."""

    config: Config
    ledger: Ledger
    _tiers: dict[str, Tier] = field(default_factory=dict)
    _catalogue: Catalogue | None = None

    def tier(self, name: str) -> Tier:
        if name not in self._tiers:
            self._tiers[name] = build_tier(name, self.config)
        return self._tiers[name]

    @property
    def catalogue_enabled(self) -> bool:
        """Whether a catalogue is configured (``catalogue.kind`` is not ``none``)."""
        return self.config.catalogue.kind != "none"

    def catalogue(self) -> Catalogue:
        """The catalogue client, built on first use (ConfigError if none is configured)."""
        if self._catalogue is None:
            self._catalogue = build_catalogue(self.config)
        return self._catalogue

    def close(self) -> None:
        close = getattr(self._catalogue, "close", None)
        if callable(close):
            close()
        self._catalogue = None
        self.ledger.close()


def build_context(config: Config) -> Context:
    """Open the ledger (upgrading its schema if needed) and prepare tiers for ``config``."""
    return Context(config=config, ledger=Ledger.open(config.ledger.url_value()))


def context_from_path(config_path: str | None) -> Context:
    """For flow runs: parameters carry the config file's path (or None: ``$SPLASH_FLOWS_CONFIG``/default)."""
    return build_context(load_config(Path(config_path) if config_path else None))
