"""Builds the objects a run needs from a configuration: the one place clients are constructed.

Nothing is built at import time; a flow run, a CLI command or a test calls ``build_context`` once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from splash_flows.catalogue.base import Catalogue
from splash_flows.config import (
    Config,
    EmbeddedCatalogueConfig,
    GlobusTierConfig,
    LocalTierConfig,
    SciCatCatalogueConfig,
    SfapiTierConfig,
    load_config,
)
from splash_flows.errors import ConfigError
from splash_flows.ledger import Ledger
from splash_flows.ledger.transfers import TransferBatches
from splash_flows.tiers.base import Tier
from splash_flows.tiers.globus import GlobusSession, GlobusTier
from splash_flows.tiers.local import LocalTier


def _utcnow() -> datetime:
    return datetime.now(UTC)


def build_globus_session(config: Config, *, sleep: Callable[[float], None] = time.sleep,
                         monotonic: Callable[[], float] = time.monotonic,
                         utcnow: Callable[[], datetime] = _utcnow) -> GlobusSession:
    """The Globus Transfer client for every globus tier: one ``ClientApp`` (the confidential client's
    credentials; tokens kept in memory only, fetched again by client credentials when needed), with the
    data_access scope of each collection configured with ``data_access_scope: true``. Makes no request yet."""
    import globus_sdk
    from globus_sdk.globus_app import GlobusAppConfig
    from globus_sdk.transport import RetryConfig

    if config.globus is None:
        raise ConfigError("globus tiers need a `globus:` section with client_id and client_secret")
    g = config.globus
    app = globus_sdk.ClientApp(g.app_name, client_id=g.client_id, client_secret=g.client_secret.get_secret_value(),
                               config=GlobusAppConfig(token_storage="memory"))
    client = globus_sdk.TransferClient(app=app, retry_config=RetryConfig(max_retries=g.transfer.http_retries))
    scoped = sorted({t.collection_id for t in config.tiers.values()
                     if isinstance(t, GlobusTierConfig) and t.data_access_scope})
    if scoped:
        client.add_app_data_access_scope(scoped)
    return GlobusSession(client, g.transfer, app=app, sleep=sleep, monotonic=monotonic, utcnow=utcnow)


def build_tier(name: str, config: Config, *, ledger: Ledger | None = None,
               globus: GlobusSession | None = None) -> Tier:
    """The tier object for ``name`` as configured. A globus tier uses ``globus`` (built from the configuration
    when not given) and records its tasks in ``ledger`` (without one it can read but not copy or delete)."""
    tier_cfg = config.tier(name)
    if name == config.archive.tier and config.archive_enabled():
        return build_archive_tier(name, config, ledger=ledger)
    if isinstance(tier_cfg, LocalTierConfig):
        return LocalTier(name, tier_cfg.root, config.checksum, concurrency=config.move.concurrency,
                         verify_from_disk=tier_cfg.verify_from_disk,
                         preserve_mode=tier_cfg.preserve_mode)
    if isinstance(tier_cfg, GlobusTierConfig):
        session = globus if globus is not None else build_globus_session(config)
        return GlobusTier(name, tier_cfg, config.checksum, session,
                          batches=TransferBatches(ledger) if ledger is not None else None,
                          concurrency=config.move.concurrency)
    raise ConfigError(f"tier {name!r}: kind {tier_cfg.kind!r} is not supported")


def build_archive_tier(name: str, config: Config, *, ledger: Ledger | None = None) -> Tier:
    """The archive tier (``archive.tier``): tar bundles in a folder (kind local) or HPSS via SFAPI (kind sfapi).
    It finds a file's bundle through ``ledger``."""
    tier_cfg = config.tier(name)
    if isinstance(tier_cfg, LocalTierConfig):
        from splash_flows.tiers.archive_local import LocalArchiveTier

        return LocalArchiveTier(name, tier_cfg.root, config.checksum, ledger=ledger,
                                verify_from_disk=tier_cfg.verify_from_disk)
    if isinstance(tier_cfg, SfapiTierConfig):
        from splash_flows.tiers.archive_sfapi import SfapiArchiveTier

        return SfapiArchiveTier(name, tier_cfg, config.checksum, ledger=ledger, credentials=config.sfapi)
    raise ConfigError(f"archive tier {name!r}: kind {tier_cfg.kind!r} cannot hold bundles (use local or sfapi)")


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
                               timeout=cat_cfg.timeout, retry=retry, verify=cat_cfg.verify_tls,
                               admin_groups=cat_cfg.admin_groups)
    raise ConfigError("no catalogue is configured (catalogue.kind is 'none')")


@dataclass
class Context:
    """A configuration with its ledger and tiers, built lazily and once."""

    config: Config
    ledger: Ledger
    _tiers: dict[str, Tier] = field(default_factory=dict)
    globus_session: GlobusSession | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _catalogue: Catalogue | None = None
    owns_ledger: bool = True  # False: a process-wide ledger (``shared_ledger``) that ``close`` leaves open

    def tier(self, name: str) -> Tier:
        with self._lock:  # the move service asks for tiers from several threads at once
            if name not in self._tiers:
                is_globus = isinstance(self.config.tier(name), GlobusTierConfig)
                self._tiers[name] = build_tier(name, self.config, ledger=self.ledger,
                                               globus=self.globus() if is_globus else None)
            return self._tiers[name]

    def globus(self) -> GlobusSession:
        """The one Globus session of this context, built on first use."""
        with self._lock:
            if self.globus_session is None:
                self.globus_session = build_globus_session(self.config)
            return self.globus_session

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
        if self.globus_session is not None:
            self.globus_session.close()
        close = getattr(self._catalogue, "close", None)
        if callable(close):
            close()
        self._catalogue = None
        if self.owns_ledger:
            self.ledger.close()


def build_context(config: Config) -> Context:
    """Open the ledger (upgrading its schema if needed) and prepare tiers for ``config``."""
    return Context(config=config, ledger=Ledger.open(config.ledger.url_value()))


#: Ledgers kept open for the life of the process, by URL, most recently used last (``shared_ledger``), each
#: with the identity of its SQLite file (None for a server database).
_SHARED_LEDGERS: OrderedDict[str, tuple[Ledger, tuple[int, int] | None]] = OrderedDict()
_SHARED_LOCK = threading.Lock()
#: How many ledger URLs a process keeps open at once (a runner or worker uses one; in-process tests many).
SHARED_LEDGERS_KEPT = 4


def _file_identity(ledger: Ledger) -> tuple[int, int] | None:
    """(device, inode) of a SQLite ledger's file; None for a server database or a file that is not there."""
    url = ledger.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    try:
        st = os.stat(url.database)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def shared_ledger(url: str) -> Ledger:
    """The process's ledger for ``url``: opened -- and its schema checked and upgraded -- by the first flow run
    of the process that needs it, then reused by every later run (one engine and connection pool, no schema
    check per run). A SQLite file replaced since (another inode, or gone) is opened again. At most
    ``SHARED_LEDGERS_KEPT`` URLs stay open; the least recently used one beyond that is disposed (connections a
    run still holds stay valid until it returns them, then close)."""
    stale: list[Ledger] = []
    with _SHARED_LOCK:
        kept = _SHARED_LEDGERS.get(url)
        if kept is not None:
            ledger, identity = kept
            if identity is None or _file_identity(ledger) == identity:
                _SHARED_LEDGERS.move_to_end(url)
                return ledger
            del _SHARED_LEDGERS[url]
            stale.append(ledger)
    for old in stale:
        old.close()
    opened = Ledger.open(url)  # outside the lock: a first upgrade may take a while; another URL need not wait
    with _SHARED_LOCK:
        ledger, _identity = _SHARED_LEDGERS.setdefault(url, (opened, _file_identity(opened)))
        _SHARED_LEDGERS.move_to_end(url)
        evicted = [_SHARED_LEDGERS.popitem(last=False)[1][0]
                   for _ in range(len(_SHARED_LEDGERS) - SHARED_LEDGERS_KEPT)]
    if ledger is not opened:  # another thread opened it meanwhile
        opened.close()
    for old in evicted:
        old.close()
    return ledger


def close_shared_ledgers() -> None:
    """Dispose every process-wide ledger (tests; a process that exits need not call it)."""
    with _SHARED_LOCK:
        ledgers = [ledger for ledger, _identity in _SHARED_LEDGERS.values()]
        _SHARED_LEDGERS.clear()
    for ledger in ledgers:
        ledger.close()


def context_from_path(config_path: str | None) -> Context:
    """For flow runs: parameters carry the config file's path (or None: ``$SPLASH_FLOWS_CONFIG``/default). The
    ledger is the process's (``shared_ledger``): a runner or worker running many flow runs opens it and checks
    its schema once, not once per run; ``Context.close`` leaves it open."""
    config = load_config(Path(config_path) if config_path else None)
    return Context(config=config, ledger=shared_ledger(config.ledger.url_value()), owns_ledger=False)
