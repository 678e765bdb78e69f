"""Configuration: one YAML file, validated by pydantic.

Loading is explicit (``load_config``); nothing here reads a file or the environment at import time.
``${VAR}`` in any string value is replaced from the environment when the file is loaded, so secrets live in
the environment (or a secret store), never in the file. Fields that hold secrets are ``SecretStr`` and are
shown as ``***`` by ``redacted_dict``.

The file is found from ``--config``, then ``$SPLASH_FLOWS_CONFIG``, then the embedded default
(``default_config``): every tier a folder under one root directory and the ledger a SQLite file there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from splash_flows.errors import ConfigError

CONFIG_ENV_VAR = "SPLASH_FLOWS_CONFIG"
DEFAULT_ROOT = Path("var/default")
DEFAULT_TIERS = ("data733", "lamarr", "cfs", "hpss", "hpc")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalTierConfig(_Model):
    """A tier that is a folder on a file system this process can reach (a local disk or a mount)."""

    kind: Literal["local"] = "local"
    root: Path = Field(description="Absolute folder; relative paths are resolved against the config file.")
    verify_from_disk: bool = Field(
        default=True,
        description="After fsync, drop the copy's pages from the page cache so the verifying re-read comes "
        "from the device rather than memory.",
    )


TierConfig = Annotated[LocalTierConfig, Field(discriminator="kind")]


class LedgerConfig(_Model):
    """Where the ledger (system of record) lives: an SQLAlchemy URL. SQLite by default, PostgreSQL in production."""

    url: SecretStr = Field(description="e.g. sqlite:////var/lib/splash/ledger.db or postgresql://user:${PW}@host/db")

    def url_value(self) -> str:
        return self.url.get_secret_value()


class MoveConfig(_Model):
    """The move flow (seed move.py): copy every new file from ``source`` to each of ``targets`` and verify."""

    source: str = "data733"
    targets: list[str] = Field(default_factory=lambda: ["lamarr", "cfs"])
    concurrency: int = Field(default=4, ge=1, le=64, description="Files copied at once per target tier.")
    export_control_patterns: list[str] = Field(
        default_factory=list,
        description="Glob patterns (tier-relative) of export-controlled paths the dispatcher must refuse.",
    )


DEFAULT_IGNORE_PATTERNS = (".*", "*.tmp", "*.part", "*~", "*.swp")


class WatcherConfig(_Model):
    """The file watcher (``splash-flows watch``): when a file on the move source tier is ready, and how ready
    files are batched into dispatcher runs. See ``splash_flows.watcher`` for the readiness rules."""

    mode: Literal["inotify", "polling"] = Field(
        default="inotify",
        description="inotify: kernel events, local writes only. polling: compare directory listings every "
        "poll_interval_s; use it on network mounts (NFS/SMB), where inotify sees nothing.")
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600, description="Seconds between polls (polling mode).")
    quiet_period_s: float = Field(
        default=2.0, ge=0, le=3600,
        description="A file is ready once its size and mtime stayed unchanged this long (after its close event "
        "in inotify mode). In polling mode it must exceed the longest pause a writer makes mid-file.")
    ignore_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE_PATTERNS),
        description="Glob patterns matched against every path component's name: matching files are never sent "
        "and matching folders are not descended into (temporary and hidden files by default).")
    batch_window_s: float = Field(
        default=1.0, ge=0, le=3600,
        description="Ready files of one folder are collected this long after the first one, then sent as one batch.")
    max_batch_files: int = Field(default=200, ge=1, le=100_000, description="A batch is sent once it has this many.")
    rescan_interval_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="Seconds between full rescans of the tree, which catch events inotify dropped.")
    deployment: str = Field(
        default="dispatcher/run_733_dispatcher",
        description="The Prefect deployment each batch triggers, as 'flow name/deployment name'.")
    outbox_replay_interval_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="While Prefect cannot be reached, seconds between attempts to send the oldest pending batch.")
    resend_after_s: float = Field(
        default=3600.0, gt=0,
        description="A file sent but still not verified on every move target this long after is sent again by "
        "the next rescan (its run failed, crashed or is still queued).")
    flow_config_path: str | None = Field(
        default=None,
        description="The config_path parameter given to triggered runs (where the workers read the "
        "configuration); default: the file this watcher loaded.")

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, name: str) -> str:
        if not re.fullmatch(r"[^/\s][^/]*/[^/]*[^/\s]", name):
            raise ValueError(f"deployment {name!r} must be 'flow name/deployment name'")
        return name


class Config(_Model):
    """The whole configuration of one beamline deployment."""

    beamline: str = "7.3.3"
    timezone: str = "America/Los_Angeles"
    checksum: Literal["xxh3_128", "blake3", "sha256"] = "xxh3_128"
    ledger: LedgerConfig
    tiers: dict[str, TierConfig]
    move: MoveConfig = Field(default_factory=MoveConfig)
    watcher: WatcherConfig = Field(default_factory=WatcherConfig)
    source_path: Path | None = Field(default=None, exclude=True, description="The file this was loaded from.")

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, tiers: dict[str, TierConfig]) -> dict[str, TierConfig]:
        for name in tiers:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"tier name {name!r} may contain only letters, digits, '_' and '-'")
        return tiers

    @model_validator(mode="after")
    def _move_tiers_exist(self) -> Config:
        for name in [self.move.source, *self.move.targets]:
            if name not in self.tiers:
                raise ValueError(f"move refers to tier {name!r}, which is not in tiers ({', '.join(self.tiers)})")
        if self.move.source in self.move.targets:
            raise ValueError(f"move.targets contains the source tier {self.move.source!r}")
        return self

    def tier(self, name: str) -> TierConfig:
        try:
            return self.tiers[name]
        except KeyError:
            raise ConfigError(f"unknown tier {name!r}; configured tiers: {', '.join(self.tiers)}") from None


# ---------------------------------------------------------------------------------------------- loading


def expand_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` in every string of a parsed YAML tree. A missing variable is a ConfigError naming the key."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in environ:
                raise ConfigError(f"{where or '<root>'}: environment variable {var} is not set")
            return environ[var]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make tier roots and a relative SQLite ledger path absolute, relative to the config file's folder."""
    tiers = data.get("tiers")
    if isinstance(tiers, dict):
        for tier in tiers.values():
            if isinstance(tier, dict) and isinstance(tier.get("root"), str) and tier.get("kind", "local") == "local":
                root = Path(tier["root"]).expanduser()
                tier["root"] = str(root if root.is_absolute() else (base / root))
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("url"), str):
        url: str = ledger["url"]
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            ledger["url"] = prefix + str(base / url[len(prefix):])
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {key}: {first['msg']}{more}"


def parse_config(data: Any, *, source: str, base: Path, environ: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML tree. Raises ConfigError naming the source and the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of keys, got {type(data).__name__}")
    try:
        expanded = expand_env(data, environ)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    try:
        return Config.model_validate(_resolve_paths(expanded, base))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config_file(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate one YAML configuration file."""
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the configuration file: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    config = parse_config(data, source=str(path), base=path.resolve().parent, environ=env)
    return config.model_copy(update={"source_path": path.resolve()})


def default_config_data(root: Path) -> dict[str, Any]:
    """The embedded default as a YAML-ready tree: every tier a folder under ``root``, the ledger a SQLite file."""
    root = root.resolve()
    return {
        "beamline": "7.3.3",
        "timezone": "America/Los_Angeles",
        "checksum": "xxh3_128",
        "ledger": {"url": f"sqlite:///{root / 'ledger.db'}"},
        "tiers": {name: {"kind": "local", "root": str(root / name)} for name in DEFAULT_TIERS},
        "move": {"source": "data733", "targets": ["lamarr", "cfs"], "concurrency": 4},
    }


def default_config(root: Path = DEFAULT_ROOT) -> Config:
    """The embedded default configuration rooted at ``root``."""
    return parse_config(default_config_data(root), source="<embedded default>", base=root.resolve(), environ={})


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find and load the configuration: ``path``, then ``$SPLASH_FLOWS_CONFIG``, then the embedded default."""
    env = os.environ if environ is None else environ
    if path is not None:
        return load_config_file(path, env)
    if env.get(CONFIG_ENV_VAR):
        return load_config_file(Path(env[CONFIG_ENV_VAR]), env)
    return default_config()


def redacted_dict(config: Config) -> dict[str, Any]:
    """The resolved configuration with every secret shown as ``***`` (safe to print or log)."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***"
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields if k != "source_path"}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    data: dict[str, Any] = walk(config)
    data["ledger"]["url"] = redact_url(config.ledger.url_value())
    return data


def redact_url(url: str) -> str:
    """A database URL with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
