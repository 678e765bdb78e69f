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


class RetentionRule(_Model):
    """When a copy on one tier may be deleted (see ``splash_flows.services.prune`` for the whole contract).

    A copy is due ``after_days`` after acquisition (the source file's mtime) and is deleted only while a
    verified copy exists on every tier of ``require_all`` and on at least one tier of ``require_any`` -- both
    checked in the ledger when the copy is claimed and re-checked on the tiers themselves (stat + checksum)
    right before the deletion. A rule must require at least one other tier, so it can never delete the last copy.
    """

    after_days: float = Field(ge=0, description="Minimum age in days since acquisition (source mtime).")
    require_all: list[str] = Field(default_factory=list, description="Tiers that must all hold a verified copy.")
    require_any: list[str] = Field(
        default_factory=list,
        description="Tiers of which at least one must hold a verified copy (checked in this order).")


def default_retention_rules(tiers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The 7.3.3 retention defaults, restricted to the configured ``tiers`` (all of them when None).

    - data733: 180 days after acquisition, only while cfs AND one of (lamarr, hpss) hold verified copies.
    - lamarr: 30 days, only once cfs AND hpss hold verified copies (the staging copy goes only when the file is
      on tape, so the file never drops below two copies because of lamarr).
    - cfs: 365 days, only once hpss holds a verified copy (nothing on cfs is ever due until an archive exists).
      Longer than data733's 180 days so data733's rule, which needs cfs, can be met before cfs goes.

    A default rule whose ``require_all`` names an unconfigured tier is dropped (nothing on that tier is pruned);
    unconfigured tiers are dropped from ``require_any`` (the rule is dropped when none is left). Rules given
    explicitly in the file are validated strictly instead: an unknown tier there is a ConfigError.
    """
    defaults: dict[str, dict[str, Any]] = {
        "data733": {"after_days": 180, "require_all": ["cfs"], "require_any": ["lamarr", "hpss"]},
        "lamarr": {"after_days": 30, "require_all": ["cfs", "hpss"], "require_any": []},
        "cfs": {"after_days": 365, "require_all": ["hpss"], "require_any": []},
    }
    if tiers is None:
        return defaults
    out: dict[str, dict[str, Any]] = {}
    for name, rule in defaults.items():
        if name not in tiers or any(t not in tiers for t in rule["require_all"]):
            continue
        any_of = [t for t in rule["require_any"] if t in tiers]
        if rule["require_any"] and not any_of:
            continue
        out[name] = {**rule, "require_any": any_of}
    return out


class RetentionConfig(_Model):
    """Pruning (seed: "schedule pruning from data733 for 6 months from now"): one rule per prunable tier.

    A tier without a rule is never pruned. When the ``retention`` key is absent from the file the 7.3.3
    defaults (``default_retention_rules``) apply; when present, ``rules`` is taken as written.
    """

    rules: dict[str, RetentionRule] = Field(default_factory=dict)
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Copies claimed and checked per batch.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Copies re-verified at once.")
    claim_timeout_minutes: float = Field(
        default=120, gt=0,
        description="A claim older than this is taken to belong to a crashed run: another run re-checks and "
        "finishes it. Must exceed the time one batch takes to re-verify and delete.")


class Config(_Model):
    """The whole configuration of one beamline deployment."""

    beamline: str = "7.3.3"
    timezone: str = "America/Los_Angeles"
    checksum: Literal["xxh3_128", "blake3", "sha256"] = "xxh3_128"
    ledger: LedgerConfig
    tiers: dict[str, TierConfig]
    move: MoveConfig = Field(default_factory=MoveConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
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

    @model_validator(mode="before")
    @classmethod
    def _default_retention(cls, data: Any) -> Any:
        if isinstance(data, dict) and "retention" not in data:
            tiers = data.get("tiers")
            names = [str(t) for t in tiers] if isinstance(tiers, dict) else []
            return {**data, "retention": {"rules": default_retention_rules(names)}}
        return data

    @model_validator(mode="after")
    def _retention_tiers_exist(self) -> Config:
        for name, rule in self.retention.rules.items():
            where = f"retention.rules.{name}"
            if name not in self.tiers:
                raise ValueError(f"{where}: tier {name!r} is not in tiers ({', '.join(self.tiers)})")
            if not rule.require_all and not rule.require_any:
                raise ValueError(f"{where}: a rule must require a verified copy on at least one other tier")
            for req in [*rule.require_all, *rule.require_any]:
                if req == name:
                    raise ValueError(f"{where}: a rule may not require the tier it prunes ({name!r})")
                if req not in self.tiers:
                    raise ValueError(f"{where}: requires tier {req!r}, which is not in tiers ({', '.join(self.tiers)})")
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
