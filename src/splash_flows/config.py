"""Configuration: one YAML file, validated by pydantic.

Loading is explicit (``load_config``); nothing here reads a file or the environment at import time.
``${VAR}`` in any string value is replaced from the environment when the file is loaded, so secrets live in
the environment (or a secret store), never in the file. Fields that hold secrets are ``SecretStr`` and are
shown as ``***`` by ``redacted_dict``.

The file is found from ``--config``, then ``$SPLASH_FLOWS_CONFIG``, then the embedded default
(``default_config``): every tier a folder under one root directory, the ledger a SQLite file there and the
embedded catalogue a second SQLite file beside it.
"""

from __future__ import annotations

import os
import re
import uuid
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

from splash_flows import CONFIG_ENV_VAR
from splash_flows.errors import ConfigError

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
    preserve_mode: bool = Field(
        default=True,
        description="Give each copy on this tier its source's permission bits (as `cp -p` does), so a 0640 file "
        "does not arrive world-readable. False: copies get 0644 minus the umask of the process writing them.",
    )


def _uuid_text(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(f"{what} must be a UUID (as Globus shows it), got {value!r}") from None


class GlobusTierConfig(_Model):
    """A tier that is a Globus collection (e.g. data733's, Lamarr's or NERSC CFS's), reached through the Globus
    Transfer service with the service credentials of the ``globus`` section."""

    kind: Literal["globus"] = "globus"
    collection_id: str = Field(description="The collection's UUID (Globus web app: Collections -> Overview).")
    root: str = Field(description="Absolute folder on the collection under which this tier's files live, "
                      "e.g. /global/cfs/cdirs/als/data_mover/7.3.3 (or /~/... on a home-rooted collection).")
    data_access_scope: bool = Field(
        default=False,
        description="Request the collection's data_access scope (needed for non-high-assurance GCS v5 mapped "
        "collections; must be false for guest collections, where it would be an unknown scope).")
    local_root: Path | None = Field(
        default=None,
        description="Where the same folder is mounted on the machine running the flows, if it is. Reads "
        "(stat, walk, checksum) then use the mount; transfers and deletes always go through Globus.")

    @field_validator("collection_id")
    @classmethod
    def _collection_uuid(cls, value: str) -> str:
        return _uuid_text(value, "collection_id")

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError(f"root must be an absolute path on the collection (start with '/'), got {value!r}")
        parts = [p for p in value.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"root must not contain '..', got {value!r}")
        return "/" + "/".join(parts)


class SfapiTierConfig(_Model):
    """The HPSS tape archive at NERSC reached through the Superfacility API (``sfapi-client``): bundles are
    written by ``htar`` in a Slurm job (QOS ``xfer``) that reads the members from the source tier's folder on
    the NERSC file systems. HPSS refuses collaboration accounts: ``account`` is a person's or a service's own
    NERSC user, and ``account_type`` says which (see README, "Tape archive"). The client's credentials are the
    top-level ``sfapi:`` section, shared with the analysis backend and the preflight."""

    kind: Literal["sfapi"] = "sfapi"
    root: str = Field(description="Absolute HPSS folder the bundles go under, e.g. /home/a/alsuser/bl733.")
    account: str = Field(min_length=1, description="The NERSC user the SFAPI client acts as (owns the tape files).")
    account_type: Literal["personal", "service"] = Field(
        description="personal: a person's own account; service: a NERSC service (collaboration-free) account.")
    source_root: str = Field(description="Where the source tier's files are on the NERSC file system, e.g. "
                             "/global/cfs/cdirs/als/data_mover/7.3.3 (the job runs `cd` there).")
    log_dir: str = Field(description="NERSC folder for the jobs' Slurm logs (read back after each job).")
    machine: str = "perlmutter"
    qos: str = "xfer"
    constraint: str = "cron"
    time_limit: str = Field(default="12:00:00", pattern=r"^\d{1,2}:\d{2}:\d{2}$")
    poll_initial_s: float = Field(default=10.0, gt=0)
    poll_max_s: float = Field(default=300.0, gt=0)
    poll_backoff: float = Field(default=1.5, ge=1.0)
    job_timeout_s: float = Field(default=2 * 86_400, gt=0, description="Give up waiting for one job after this.")

    @field_validator("root", "source_root", "log_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/") or any(c in value for c in "\x00\n'\""):
            raise ValueError(f"must be an absolute path without '..' or quotes, got {value!r}")
        return value.rstrip("/") or "/"


TierConfig = Annotated[LocalTierConfig | GlobusTierConfig | SfapiTierConfig, Field(discriminator="kind")]

GB = 1_000_000_000


class ArchiveConfig(_Model):
    """The tape archive (seed step 5): files verified on ``source`` go to ``tier`` in bundles per proposal and
    beam cycle (see ``splash_flows.services.archive``). Disabled when either tier is not configured."""

    tier: str = Field(default="hpss", description="The archive tier (kind local for the embedded default, "
                      "kind sfapi for HPSS at NERSC).")
    source: str = Field(default="cfs", description="Files are archived from this tier once verified there.")
    bundle_target_bytes: int = Field(default=500 * GB, ge=1, description="A bundle is closed at this size.")
    bundle_max_bytes: int = Field(default=2000 * GB, ge=1, le=2000 * GB,
                                  description="No bundle (tar headers included) is ever larger (htar: 2 TB).")
    single_file_bytes: int = Field(default=64 * GB, ge=1, description="Files larger than this go alone "
                                   "(`hsi cput`), never into a bundle (htar's member limit is 68 GB).")
    max_bundles_per_run: int = Field(default=100, ge=1, description="Bundles written per archive run.")
    drill_scratch: Path | None = Field(default=None, description="Where the restore drill restores to "
                                       "(default: a temporary folder, removed afterwards).")

    @model_validator(mode="after")
    def _sizes(self) -> ArchiveConfig:
        if self.bundle_target_bytes > self.bundle_max_bytes:
            raise ValueError("bundle_target_bytes must be <= bundle_max_bytes")
        if self.single_file_bytes > self.bundle_max_bytes // 2:
            raise ValueError("single_file_bytes must be <= half of bundle_max_bytes")
        return self


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
    recover_after_s: float = Field(
        default=60.0, ge=0,
        description="A file verified on every target this long ago that the catalogue step or the prune schedule "
        "never recorded (its run was killed between steps) is taken up by the next run, `catalog retry` or "
        "`reconcile`. The wait keeps a live run's own files out of another run's hands.")


class GlobusTransferConfig(_Model):
    """How Globus tasks are submitted and watched."""

    max_files_per_task: int = Field(default=1000, ge=1, le=100_000,
                                    description="Files per Globus task; a larger batch is split into several tasks.")
    deadline_s: int = Field(default=6 * 3600, ge=60, description="Task deadline (seconds after submission); "
                            "Globus stops the task at its deadline and reports it FAILED.")
    deadline_grace_s: int = Field(default=600, ge=0, description="How long past the deadline a task may still be "
                                  "reported ACTIVE before we cancel it ourselves.")
    poll_initial_s: float = Field(default=2.0, gt=0, description="First wait between task status polls.")
    poll_max_s: float = Field(default=60.0, gt=0, description="Longest wait between task status polls.")
    poll_backoff: float = Field(default=1.5, ge=1.0, description="Each wait is the previous one times this.")
    inactivity_limit_s: int = Field(
        default=3600, ge=1, description="A task INACTIVE (e.g. credentials expired), or ACTIVE with faults and no "
        "progress, for this long is cancelled and reported with Globus's event details.")
    external_checksum: bool = Field(
        default=True, description="When the ledger's checksum algorithm is one Globus knows (sha256), hand our "
        "checksum to Globus so it verifies both ends against it.")
    fail_on_quota_errors: bool = Field(default=True, description="Fail a task at once on a quota error rather "
                                       "than let it retry until its deadline.")
    http_retries: int = Field(default=3, ge=0, le=10,
                              description="Retries of one HTTP request on network errors and 429/5xx answers.")

    @model_validator(mode="after")
    def _poll_order(self) -> GlobusTransferConfig:
        if self.poll_max_s < self.poll_initial_s:
            raise ValueError("poll_max_s must be >= poll_initial_s")
        return self


class GlobusFlightCheckConfig(_Model):
    """The Globus flight check (``splash-flows globus check`` and the ``flight_check_733`` flow)."""

    probe_path: str | None = Field(
        default=None, description="Tier-relative path of a small file that exists on the source tier, moved "
        "as the probe when the source tier has no local_root (where a probe can be written). ")
    probe_bytes: int = Field(default=4096, ge=1, le=1_000_000, description="Size of a probe file we write.")


class GlobusConfig(_Model):
    """Service credentials (a Globus confidential client, see docs/GLOBUS.md) and transfer settings."""

    client_id: str = Field(description="The confidential client's UUID (its identity is <id>@clients.auth.globus.org).")
    client_secret: SecretStr = Field(description="Its secret; give it as ${GLOBUS_CLIENT_SECRET}, never literally.")
    app_name: str = Field(default="splash-flows", min_length=1, max_length=64)
    transfer: GlobusTransferConfig = Field(default_factory=GlobusTransferConfig)
    flight_check: GlobusFlightCheckConfig = Field(default_factory=GlobusFlightCheckConfig)

    @field_validator("client_id")
    @classmethod
    def _client_uuid(cls, value: str) -> str:
        return _uuid_text(value, "client_id")


class EmbeddedCatalogueConfig(_Model):
    """The embedded catalogue: a SQLite file of its own (never the ledger's database)."""

    kind: Literal["embedded"] = "embedded"
    path: Path | None = Field(
        default=None,
        description="SQLite file; relative paths are resolved against the config file. Default: "
        "catalogue.db beside a SQLite ledger (required when the ledger is not SQLite).",
    )
    download_tiers: list[str] = Field(
        default_factory=list,
        description="Tiers `catalog download` copies from, most preferred first (default: the move targets "
        "in order, then the source tier).",
    )


class CatalogueRetryConfig(_Model):
    """How patiently one catalogue step is retried before the catalogue counts as unavailable."""

    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_base: float = Field(default=0.5, ge=0, description="Seconds before the 2nd attempt; doubles after.")
    backoff_max: float = Field(default=30.0, ge=0)


class SciCatCatalogueConfig(_Model):
    """SciCat (scicat-backend 4.x) logged in as a functional account."""

    kind: Literal["scicat"]
    url: str = Field(description="Server root, e.g. https://scicat.example.org (the /api/... routes are appended).")
    username: str
    password: SecretStr = Field(description="Put ${SCICAT_PASSWORD} here, never the password itself.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds per HTTP request.")
    verify_tls: bool = True
    retry: CatalogueRetryConfig = Field(default_factory=CatalogueRetryConfig)
    download_tiers: list[str] = Field(default_factory=list, description="As for the embedded catalogue.")
    admin_groups: list[str] = Field(
        default_factory=list,
        description="Groups of the server's ADMIN_GROUPS that the account is in (the server does not publish that "
        "list). Without one, the account must be in the ownerGroup (the proposal) of every dataset it ingests, "
        "or SciCat refuses its file lists; the ingest checks this before creating anything.")


class NoCatalogueConfig(_Model):
    """No catalogue: the catalogue step is recorded as not run (``step_not_run``) and files stay findable
    only through the ledger."""

    kind: Literal["none"]
    download_tiers: list[str] = Field(default_factory=list)


CatalogueConfig = Annotated[
    EmbeddedCatalogueConfig | SciCatCatalogueConfig | NoCatalogueConfig, Field(discriminator="kind")
]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class DatasetConfig(_Model):
    """How a scan is described in the catalogue (the beamline's own facts; see beamlines/bl733/dataset.py)."""

    contact_email: str = Field(default="", description="Beamline contact address put on every dataset "
                               "(required with SciCat).")
    default_owner_group: str = Field(default="bl733", description="Owner group of a scan whose proposal "
                                     "cannot be read (staff only).")
    beamline_group: str = Field(default="bl733", description="Access group of beamline staff on every dataset.")
    source_folder_host: str | None = Field(default=None, description="Host of sourceFolder (URL-like for SciCat).")
    archive_tier: str = Field(default="cfs", description="The tier whose location is the dataset's sourceFolder.")
    creation_location: str = "/ALS/7.3.3"
    exclude_stems: list[str] = Field(default_factory=lambda: ["autoexpose", "beamstop_test"],
                                     description="Scans whose stem contains one of these are moved, not catalogued.")
    settle_seconds: float = Field(
        default=300.0, ge=0,
        description="A scan missing an expected file (sidecar, lo frame, .gb) waits this long after its newest "
        "file before it is catalogued without it (the file may still be on its way).")
    wait_recheck_seconds: float = Field(
        default=30.0, ge=0, le=86_400,
        description="A scan waiting for its own files is re-checked by other batches' catalogue steps at most this "
        "often (the batch that brings the missing file re-checks it at once; catalogue_retry_733 every minute).")
    thumbnail_size: int = Field(default=256, ge=16, le=2048, description="Longer side of previews, pixels.")
    proposal_folder_pattern: str = Field(
        default=r"(?P<proposal>(?:ALS[-_ ]?)?\d{5})(?:_.*)?",
        description="Regular expression (full match, case-insensitive) of a folder named for a proposal; the "
        "proposal of a scan without a readable sidecar is taken from the first such folder of its path (group "
        "'proposal' if present). Default: 00622, ALS-00622, ALS-11111_<PI> as 7.3.3 names user folders.")

    @field_validator("proposal_folder_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        return value

    @field_validator("contact_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if value and not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value
#: Names that are never files to move (``splash_flows.selection``): hidden files (``.DS_Store``, ``.~lock.*#``,
#: ``.name.part``), temporary and half-written files of other programs, editor and office lock files.
DEFAULT_IGNORE_PATTERNS = (".*", "*.tmp", "*.part", "*~", "*.swp", "*.swx", ".DS_Store", "~lock*", ".~lock*",
                           "~$*", "Thumbs.db", "desktop.ini")


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
        "and matching folders are not descended into (hidden, temporary and lock files by default). The ONE "
        "rule of what is a file to move: the watcher, backfill, rescans, reconcile and the dispatcher all use it.")
    batch_window_s: float = Field(
        default=1.0, ge=0, le=3600,
        description="Ready files of one folder are collected this long after the first one, then sent as one batch.")
    batch_idle_s: float = Field(
        default=0.1, ge=0, le=3600,
        description="A batch is also sent once no file joined it for this long (0: wait for the window): a lone "
        "file goes at once, a burst still fills its batch. Smaller means more, smaller dispatcher runs.")
    max_batch_files: int = Field(
        default=1000, ge=1, le=100_000,
        description="A batch is sent once it has this many files (or max_batch_bytes). A burst of small files "
        "ready at once goes in few large runs: each dispatcher run costs its own Prefect overhead.")
    max_batch_bytes: int = Field(
        default=2 * 1024**3, ge=1,
        description="A batch is also sent once its files hold this many bytes (a single larger file is a batch "
        "of its own): large images still go about 200 x 10 MB per run, so one run's copy stays bounded.")
    ready_on_close: bool = Field(
        default=True,
        description="inotify mode: a file closed after writing (IN_CLOSE_WRITE) is ready at once, without the "
        "quiet period. A file written again after its close (or after it was sent) still waits the quiet period "
        "after its next close; one sent half-written anyway is re-sent when it changes (its copies go stale).")
    rescan_interval_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="Seconds between periodic rescans of the tree, which catch events inotify dropped.")
    full_rescan_every: int = Field(
        default=6, ge=1, le=10_000,
        description="Every this many periodic rescans one is full (every file stat'ed and looked up); the others "
        "are light: a leaf folder a full scan found all verified, with its mtime unchanged since (no file added, "
        "removed or renamed), is not listed again. A file rewritten in place does not change its folder's mtime: "
        "its inotify events send it, and the full rescans catch one whose events were lost. 1: every rescan "
        "full. The start-up backfill and the rescan after an inotify overflow are always full.")
    deployment: str = Field(
        default="dispatcher/run_733_dispatcher",
        description="The Prefect deployment each batch triggers, as 'flow name/deployment name'.")
    outbox_replay_interval_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="While Prefect cannot be reached, the longest wait between attempts to send the oldest pending "
        "batch (the first retry comes after 0.5 s, then the wait doubles up to this).")
    trigger_timeout_s: float = Field(
        default=10.0, gt=0, le=600,
        description="Longest wait for one answer of the Prefect API when triggering a batch; a timeout or a 5xx "
        "leaves the batch pending in the outbox, replayed with the same idempotency key (never a second run).")
    resend_after_s: float = Field(
        default=3600.0, gt=0,
        description="A file sent but still not verified on every move target this long after is sent again by "
        "the next rescan (its run failed, crashed or is still queued).")
    outbox_keep_days: float = Field(
        default=30.0, gt=0,
        description="Outbox entries sent (or refused) longer ago than this are deleted after a whole-tree scan; "
        "pending ones never are. Each file's history stays in the ledger's event log.")
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


class UpConfig(_Model):
    """``splash-flows up``, the local stack."""

    port: int = Field(
        default=4200, ge=0, le=65535,
        description="Port of the Prefect server `up` starts; it stays this port across restarts (0: any free "
        "port). `up --port` overrides it.")


class SfapiConfig(_Model):
    """The ``sfapi`` analysis backend: reduction jobs at NERSC through the Superfacility API (seed flow 3). The
    client's credentials are the top-level ``sfapi:`` section, shared with the archive tier and the preflight."""

    machine: str = Field(default="perlmutter", description="Compute system the job runs on.")
    hpc_tier: str = Field(default="hpc", description="Tier the frames are copied to before the job (pscratch/CFS).")
    hpc_root: str = Field(default="", description="Absolute path of the hpc tier's root as the compute nodes see it.")
    qos: str = Field(default="realtime")
    account: str = Field(default="als")
    constraint: str = Field(default="cpu")
    time_limit: str = Field(default="0:30:00", description="Slurm --time of one batch's job.")
    image: str | None = Field(default=None, description="Container image run with `podman-hpc run` (none: env_setup).")
    env_setup: str = Field(default="", description="Shell lines run before srun when no image is given, e.g. "
                           "`module load python; source /global/common/software/als/splash/bin/activate`.")
    poll_interval_s: float = Field(default=10.0, gt=0)
    job_timeout_s: float = Field(default=6 * 3600, gt=0, description="Longest wait for the job to end.")


class AnalysisConfig(_Model):
    """Reduction of 7.3.3 frames to I(q) (and q_ip/q_oop maps for grazing incidence); see splash_flows.analysis."""

    enabled: bool = Field(default=False, description="The dispatcher runs the analysis after each batch's move.")
    backend: Literal["local", "sfapi"] = "local"
    workers: int = Field(default=2, ge=1, le=256, description="Processes of the local backend.")
    npt: int = Field(default=2000, ge=10, le=100_000, description="Points of the 1D integration.")
    unit: Literal["q_nm^-1", "q_A^-1", "2th_deg", "r_mm"] = "q_nm^-1"
    method: tuple[str, str, str] = Field(default=("no", "histogram", "cython"),
                                         description="pyFAI (splitting, algorithm, implementation).")
    beamstop_radius_mm: float = Field(default=5.0, ge=0, description="Pixels closer to the beam centre are masked.")
    mask_file: Path | None = Field(default=None, description="Extra mask (EDF or .npy, nonzero = masked).")
    saturation_counts: int = Field(default=(1 << 20) - 1, ge=1, description="Pilatus counter limit: hi pixels at "
                                   "or above it are taken from lo in our own hi/lo merge.")
    monitor_kind: Literal["integrated", "rate"] = Field(
        default="integrated", description="integrated: the sidecar's monitor is counts over the exposure (7.3.3), "
        "so it is the divisor; rate: a mean rate, multiplied by the exposure time.")
    gi_npt: int = Field(default=500, ge=10, le=5000, description="Bins per axis of the q_ip/q_oop map.")
    gi_sample_orientation: int = Field(default=3, ge=1, le=8, description="pyFAI sample_orientation (EXIF 1-8). "
                                       "3 with pyFAI's Pilatus (origin bottom-right): q_oop > 0 for pixels above "
                                       "the beam as the frame is displayed (row 0 at the top), q_ip ~ 0 above it.")
    results_folder: str = Field(default="reduced", pattern=r"^[A-Za-z0-9_.-]+$",
                                description="Sub-folder of a scan's folder that receives its results.")
    sfapi: SfapiConfig = Field(default_factory=SfapiConfig)
class MonitoringConfig(_Model):
    """The data-safety page and metrics (``splash-flows serve``) and the objective files are judged against."""

    safe_within_minutes: float = Field(
        default=60.0, gt=0, description="Objective: a file is late when it is not verified on every move target "
        "this many minutes after it was detected.")
    host: str = Field(default="127.0.0.1", description="Address `serve` binds to (loopback only by default; "
                      "use 0.0.0.0 only behind a firewall or a proxy that authenticates).")
    port: int = Field(default=8733, ge=1, le=65535, description="TCP port of the page and /metrics.")
    page_url: str | None = Field(
        default=None, description="How operators reach the page (put in alerts), e.g. http://flow-733:8733/; "
        "default http://<host>:<port>/.")
    refresh_seconds: float = Field(default=5.0, ge=1, le=3600, description="How often the page updates itself.")
    window_days: int = Field(default=14, ge=1, le=3660, description="Days shown per proposal on the page by "
                             "default (older days one click away).")

    def url(self) -> str:
        """The page's address for links in alerts."""
        return self.page_url or f"http://{self.host}:{self.port}/"


class AlertsConfig(_Model):
    """Notifications through Apprise (one library for e-mail, Slack, Teams, ntfy, webhooks ...).

    One run of the alert check (``splash-flows alerts --once``, or every ``interval_seconds`` inside ``serve``)
    sends at most ONE message summarising everything new since the last message; what was sent is kept in the
    ledger, so a restart never sends it again."""

    urls: list[SecretStr] = Field(
        default_factory=list, description="Apprise URLs (mailto://, json://, slack://, ntfy:// ...); they often "
        "hold tokens, so give them as ${VAR}. Empty: alerts are off.")
    interval_seconds: float = Field(default=60.0, ge=1, description="How often `serve` checks for alerts.")
    min_interval_minutes: float = Field(
        default=15.0, ge=0, description="At most one message per this many minutes; what happens meanwhile is "
        "summarised in the next one.")
    repeat_minutes: float = Field(
        default=360.0, gt=0, description="A condition still true (late files, a long outbox, an expiring "
        "credential) is reported again after this long.")
    outbox_limit: int = Field(default=500, ge=1, description="Alert when the watcher's outbox holds more "
                              "unsent batches than this.")
    credential_warn_days: float = Field(default=14.0, ge=0, description="Alert when a credential expires "
                                        "within this many days.")
    max_examples: int = Field(default=10, ge=1, le=1000, description="Paths listed per kind in one message.")


class SfapiCredentialsConfig(_Model):
    """NERSC Superfacility API credentials: a client made in Iris (client id + private key file, mode 600).
    The one SFAPI client of the deployment: the HPSS archive tier, the ``sfapi`` analysis backend and the
    credential preflight all use it (``splash_flows.sfapi.build_client``).

    The key's expiry date is given by Iris when the client is made and is not inside the key: put it in
    ``expires`` (or keep it in a first-line comment of a PEM key file as ``# expires: YYYY-MM-DD``) so the
    preflight and the alerts warn before it lapses."""

    client_id: str | None = Field(default=None, description="The client id (default: read from the key file).")
    key_file: Path = Field(description="The private key (PEM or JWK JSON) Iris gave; must be mode 600.")
    expires: str | None = Field(default=None, description="The client's expiry date as Iris shows it "
                                "(YYYY-MM-DD or an ISO date-time, UTC).")
    api_base_url: str | None = Field(default=None, description="Override the API URL (tests, staging).")
    token_url: str | None = Field(default=None, description="Override the token URL (tests, staging).")


class Config(_Model):
    """The whole configuration of one beamline deployment."""

    beamline: str = "7.3.3"
    timezone: str = "America/Los_Angeles"
    checksum: Literal["xxh3_128", "blake3", "sha256"] = "xxh3_128"
    ledger: LedgerConfig
    tiers: dict[str, TierConfig]
    move: MoveConfig = Field(default_factory=MoveConfig)
    globus: GlobusConfig | None = Field(default=None, description="Needed when any tier is of kind globus.")
    catalogue: CatalogueConfig = Field(default_factory=EmbeddedCatalogueConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    watcher: WatcherConfig = Field(default_factory=WatcherConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    up: UpConfig = Field(default_factory=UpConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    sfapi: SfapiCredentialsConfig | None = Field(
        default=None, description="NERSC SFAPI credentials, needed by an sfapi tier (HPSS) or the sfapi analysis "
        "backend, and checked by the preflight.")
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

    @model_validator(mode="after")
    def _globus_tiers_have_credentials(self) -> Config:
        globus_tiers = [n for n, t in self.tiers.items() if isinstance(t, GlobusTierConfig)]
        if globus_tiers and self.globus is None:
            raise ValueError(f"tiers {', '.join(globus_tiers)} are of kind globus, but there is no `globus:` section "
                             "with the service credentials (client_id, client_secret)")
        return self

    @model_validator(mode="after")
    def _catalogue_settings(self) -> Config:
        # Checked here only when given explicitly, so a configuration written before the catalogue existed
        # still loads; the defaults are checked when the catalogue step needs them (``archive_tier_name``).
        explicit = list(self.catalogue.download_tiers)
        if "archive_tier" in self.dataset.model_fields_set:
            explicit.append(self.dataset.archive_tier)
        for name in explicit:
            if name not in self.tiers:
                raise ValueError(f"catalogue settings refer to tier {name!r}, which is not in tiers "
                                 f"({', '.join(self.tiers)})")
        if self.catalogue.kind == "scicat" and not self.dataset.contact_email:
            raise ValueError("dataset.contact_email is required with the SciCat catalogue")
        return self

    def archive_tier_name(self) -> str:
        """The tier whose location is a dataset's sourceFolder (ConfigError if it is not configured)."""
        if self.dataset.archive_tier not in self.tiers:
            raise ConfigError(f"dataset.archive_tier {self.dataset.archive_tier!r} is not in tiers "
                              f"({', '.join(self.tiers)}); set dataset.archive_tier")
        return self.dataset.archive_tier

    def catalogue_path(self) -> Path:
        """The embedded catalogue's file: ``catalogue.path``, else ``catalogue.db`` beside the SQLite ledger."""
        if not isinstance(self.catalogue, EmbeddedCatalogueConfig):
            raise ConfigError(f"catalogue.kind is {self.catalogue.kind!r}, not 'embedded'")
        path = self.catalogue.path or default_catalogue_path(self.ledger.url_value())
        if path is None:
            raise ConfigError("catalogue.path is required when the ledger is not a SQLite file")
        return path

    def download_tiers(self) -> list[str]:
        """Tiers ``catalog download`` may copy from, most preferred first."""
        return list(self.catalogue.download_tiers) or [*self.move.targets, self.move.source]

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

    def flow_config_path(self) -> str | None:
        """The ``config_path`` parameter of the flow runs this configuration triggers (watcher, reconcile):
        ``watcher.flow_config_path``, else the file this configuration was loaded from. None (the embedded
        default) lets each run use the configuration of the process executing it."""
        if self.watcher.flow_config_path:
            return self.watcher.flow_config_path
        return str(self.source_path) if self.source_path else None

    @model_validator(mode="after")
    def _archive_tiers(self) -> Config:
        explicit = "archive" in self.model_fields_set
        arch = self.archive
        if explicit and (arch.tier not in self.tiers or arch.source not in self.tiers):
            raise ValueError(f"archive refers to tiers {arch.tier!r} and {arch.source!r}; configured tiers: "
                             f"{', '.join(self.tiers)}")
        if arch.tier == arch.source:
            raise ValueError("archive.tier and archive.source must differ")
        sfapi = [n for n, t in self.tiers.items() if isinstance(t, SfapiTierConfig) and n != arch.tier]
        if sfapi:
            raise ValueError(f"tier {sfapi[0]!r} is of kind sfapi, which only the archive tier may be "
                             f"(archive.tier is {arch.tier!r})")
        return self

    def archive_enabled(self) -> bool:
        """Whether the tape archive is configured (its tier and source tier both exist)."""
        return self.archive.tier in self.tiers and self.archive.source in self.tiers

    @model_validator(mode="after")
    def _sfapi_credentials(self) -> Config:
        users = [f"tier {n!r}" for n, t in self.tiers.items() if isinstance(t, SfapiTierConfig)]
        if self.analysis.backend == "sfapi":
            users.append("analysis.backend sfapi")
        if users and self.sfapi is None:
            raise ValueError(f"{' and '.join(users)} need the top-level sfapi: section (key_file: the key Iris "
                             "gave, mode 600; expires: its expiry date)")
        return self

    @model_validator(mode="after")
    def _analysis_tiers_exist(self) -> Config:
        if self.analysis.backend == "sfapi" and self.analysis.sfapi.hpc_tier not in self.tiers:
            raise ValueError(f"analysis.sfapi.hpc_tier {self.analysis.sfapi.hpc_tier!r} is not in tiers "
                             f"({', '.join(self.tiers)})")
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


def default_catalogue_path(ledger_url: str) -> Path | None:
    """``catalogue.db`` beside a SQLite ledger file (None for other ledgers or an in-memory one)."""
    prefix = "sqlite:///"
    if not ledger_url.startswith(prefix) or ledger_url.endswith(":memory:"):
        return None
    db = ledger_url[len(prefix):].split("?", 1)[0]
    return Path(db).parent / "catalogue.db" if db else None


def _resolve_catalogue_path(data: dict[str, Any], base: Path) -> None:
    """Make a relative embedded catalogue path absolute, relative to the config file's folder."""
    catalogue = data.get("catalogue")
    if isinstance(catalogue, dict) and isinstance(catalogue.get("path"), str):
        path = Path(catalogue["path"]).expanduser()
        catalogue["path"] = str(path if path.is_absolute() else (base / path))


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Default a tier's kind to local; make local tier roots and a relative SQLite ledger path absolute,
    relative to the config file's folder."""
    tiers = data.get("tiers")
    if isinstance(tiers, dict):
        for tier in tiers.values():
            if isinstance(tier, dict):
                tier.setdefault("kind", "local")  # a tier without a kind is a local folder
            if isinstance(tier, dict) and isinstance(tier.get("root"), str) and tier.get("kind", "local") == "local":
                root = Path(tier["root"]).expanduser()
                tier["root"] = str(root if root.is_absolute() else (base / root))
            if isinstance(tier, dict) and isinstance(tier.get("local_root"), str) and tier.get("kind") == "globus":
                local = Path(tier["local_root"]).expanduser()
                tier["local_root"] = str(local if local.is_absolute() else (base / local))
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("url"), str):
        url: str = ledger["url"]
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            ledger["url"] = prefix + str(base / url[len(prefix):])
    _resolve_catalogue_path(data, base)
    _resolve_analysis_paths(data, base)
    sfapi = data.get("sfapi")
    if isinstance(sfapi, dict) and isinstance(sfapi.get("key_file"), str):
        key = Path(sfapi["key_file"]).expanduser()
        sfapi["key_file"] = str(key if key.is_absolute() else (base / key))
    return data


def _resolve_analysis_paths(data: dict[str, Any], base: Path) -> None:
    """Make a relative analysis mask file absolute, relative to the config file's folder."""
    analysis = data.get("analysis")
    if not isinstance(analysis, dict):
        return
    if isinstance(analysis.get("mask_file"), str):
        path = Path(analysis["mask_file"]).expanduser()
        analysis["mask_file"] = str(path if path.is_absolute() else (base / path))


#: SFAPI credential keys that older configurations repeated per user of the client; now in the top-level sfapi:.
_MOVED_SFAPI_KEYS = {"key_path": "key_file", "client_id": "client_id", "api_base_url": "api_base_url"}


def _refuse_moved_sfapi_keys(data: dict[str, Any], source: str) -> None:
    """One clear line for a configuration written before the SFAPI credentials became one section."""
    holders: list[tuple[str, Any]] = []
    tiers = data.get("tiers")
    if isinstance(tiers, dict):
        holders += [(f"tiers.{n}", t) for n, t in tiers.items() if isinstance(t, dict) and t.get("kind") == "sfapi"]
    analysis = data.get("analysis")
    if isinstance(analysis, dict):
        holders.append(("analysis.sfapi", analysis.get("sfapi")))
    for where, holder in holders:
        if not isinstance(holder, dict):
            continue
        for old, new in _MOVED_SFAPI_KEYS.items():
            if old in holder:
                raise ConfigError(f"{source}: {where}.{old}: the SFAPI credentials moved to the top-level sfapi: "
                                  f"section (sfapi.{new}), shared by the archive tier, the analysis and the check")


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
    _refuse_moved_sfapi_keys(expanded, source)
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
        "catalogue": {"kind": "embedded", "path": str(root / "catalogue.db")},
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
