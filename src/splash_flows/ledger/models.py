"""Ledger tables (SQLAlchemy 2 typed ORM). The schema changes only through Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values; we re-attach UTC on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CopyState(StrEnum):
    """Where one copy of a file stands on one tier."""

    PENDING = "pending"        # expected there, not (yet) verified
    VERIFIED = "verified"      # present and its checksum matched the source
    FAILED = "failed"          # the last attempt failed; ``error`` says why
    STALE = "stale"            # the source changed after this copy was verified; must be copied again
    PRUNING = "pruning"        # claimed by a prune run (``claimed_by``/``claimed_at``): being re-checked
    DELETING = "deleting"      # re-checked and about to be deleted by the claiming run (a crash here is ambiguous)
    PRUNED = "pruned"          # deleted on purpose by a prune run (history, not missing data; see the event)
    AT_RISK = "at_risk"        # the ledger said verified but a re-check found it missing or different


class EventKind(StrEnum):
    """Kinds of the append-only event log. Later capabilities add kinds; old ones never change meaning."""

    DETECTED = "detected"
    SOURCE_CHANGED = "source_changed"
    COPIED = "copied"
    VERIFIED = "verified"
    SKIPPED = "skipped"        # destination already matched the source; nothing written
    FAILED = "failed"
    REFUSED = "refused"        # input refused before any work (path escape, export control, missing file)
    STEP_NOT_RUN = "step_not_run"
    CATALOGUED = "catalogued"                  # the file's scan is in the catalogue (detail: pid)
    CATALOGUE_PENDING = "catalogue_pending"    # not catalogued yet; retried later (detail: reason)
    CATALOGUE_EXCLUDED = "catalogue_excluded"  # moved but deliberately not catalogued (exclude_stems)
    CATALOGUE_FAILED = "catalogue_failed"      # the catalogue refused the scan (detail: reason)
    PRUNE_SCHEDULED = "prune_scheduled"  # a copy got (or changed) its prune due date
    PRUNED = "pruned"                    # a copy was deleted; ``detail`` holds the evidence that allowed it
    PRUNE_REFUSED = "prune_refused"      # a due copy was not deleted because a check failed; ``detail`` says why
    AT_RISK = "at_risk"                  # a copy the ledger held verified failed its re-check
    ANALYSED = "analysed"                # a scan was reduced (detail: outputs, calibration, backend)
    ANALYSIS_PENDING = "analysis_pending"  # a scan waits for a calibration (detail: reason)
    ANALYSIS_FAILED = "analysis_failed"    # a scan's reduction failed (detail: reason)
    REPAIRED = "repaired"                # an at_risk copy re-copied from a verified copy and verified again
    VERIFY_RUN = "verify_run"            # one ``reconcile --verify`` pass: what it checked and found (counts)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class SourceFile(Base):
    """A file as it was acquired on its source tier: identity, size, mtime and checksum."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("source_tier", "path", name="uq_files_source_path"),
                      Index("ix_files_detected_at", "detected_at"))  # migration 0003_monitoring

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_tier: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    checksum_alg: Mapped[str] = mapped_column(String(32))
    checksum: Mapped[str] = mapped_column(String(128))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    copies: Mapped[list[Copy]] = relationship(back_populates="file", cascade="all, delete-orphan")


class Copy(Base):
    """One copy of a file on one tier (the source tier included) and its last known state."""

    __tablename__ = "copies"
    __table_args__ = (UniqueConstraint("file_id", "tier", name="uq_copies_file_tier"),
                      Index("ix_copies_tier_state_due", "tier", "state", "prune_due_at"))  # 0003_scale_indexes

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    tier: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(128), nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    prune_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # migration 0002_prune
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    file: Mapped[SourceFile] = relationship(back_populates="copies")


class CopyCount(Base):
    """How many copies (and bytes) each tier holds in each state: kept by triggers (migration
    0004_ledger_counters), read by ``ledger.counters``. One row per writing PostgreSQL backend (``shard``), summed
    on read; SQLite uses shard 0 only."""

    __tablename__ = "copy_counts"

    tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


class FileCount(Base):
    """How many source files (and bytes) each source tier has: kept like ``CopyCount``."""

    __tablename__ = "file_counts"

    source_tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


class EventCount(Base):
    """How many events of each kind each tier has had (tier '' for none): kept by a trigger on inserts into
    ``events`` (migration 0006_event_counters), never decremented; sharded like ``CopyCount``."""

    __tablename__ = "event_counts"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class LatencyCount(Base):
    """The detected -> verified latency histogram per tier: ``n`` verified events whose latency falls in
    ``bucket`` (an index of ``ledger.counters.LATENCY_BUCKETS``; its length for +Inf) and their ``seconds``
    summed. Kept by the trigger of ``EventCount``."""

    __tablename__ = "latency_counts"

    tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)


class Event(Base):
    """Append-only history: every step that happened to a file, with its reason or evidence in ``detail``."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_file", "file_id"),
                      Index("ix_events_kind_id", "kind", "id"))  # migration 0003_monitoring

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"), nullable=True)
    path: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class BatchStatus(StrEnum):
    """Where one Globus task (a batch of files) stands. ``pending`` and ``submitted`` are unfinished."""

    PENDING = "pending"        # submission_id reserved and recorded; the submit may or may not have reached Globus
    SUBMITTED = "submitted"    # Globus accepted it: task_id known; poll it, never submit it again
    SUCCEEDED = "succeeded"    # Globus reported SUCCEEDED
    FAILED = "failed"          # Globus reported FAILED (including a passed deadline); some items may be done
    ABANDONED = "abandoned"    # we cancelled it: inactive, faulting without progress, or ACTIVE past its deadline
    REFUSED = "refused"        # Globus refused the submission (4xx); no task exists


class TransferBatch(Base):
    """One Globus task: a transfer, a checksum re-verification, a probe or a delete, with its metrics.

    The submission_id is recorded before the task is submitted, so a retried submission reuses it and Globus
    never starts a second task. ``open_key`` holds the items digest while the batch is unfinished and NULL once it
    ended: the unique constraint then allows one unfinished batch per (kind, tiers, items), any number of ended ones.
    """

    __tablename__ = "transfer_batches"
    __table_args__ = (UniqueConstraint("submission_id", name="uq_transfer_batches_submission"),
                      UniqueConstraint("kind", "source_tier", "dest_tier", "open_key",
                                       name="uq_transfer_batches_open"),
                      Index("ix_transfer_batches_created", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    source_tier: Mapped[str] = mapped_column(String(64))
    dest_tier: Mapped[str] = mapped_column(String(64))
    source_collection: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dest_collection: Mapped[str] = mapped_column(String(64))
    items_digest: Mapped[str] = mapped_column(String(64))
    open_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    items: Mapped[list[Any]] = mapped_column(JSON)
    item_count: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(128))
    submission_id: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    globus_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bytes_transferred: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    files_transferred: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_skipped: Mapped[int | None] = mapped_column(Integer, nullable=True)
    effective_bytes_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    faults: Mapped[int | None] = mapped_column(Integer, nullable=True)
    items_ok: Mapped[int | None] = mapped_column(Integer, nullable=True)
    items_failed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
class CatalogueState(StrEnum):
    """Where a scan stands with the catalogue."""

    CATALOGUED = "catalogued"                  # in the catalogue; ``pid`` says where
    PENDING = "pending_catalogue"              # to be (re-)ingested: outage, or files still on their way
    EXCLUDED = "excluded"                      # moved, deliberately not catalogued (dataset.exclude_stems)
    FAILED = "failed"                          # the catalogue refused it (our bug or bad data); ``error`` says why


class CatalogueScan(Base):
    """One scan (a catalogue dataset) of a source tier and its catalogue state."""

    __tablename__ = "catalogue_scans"
    __table_args__ = (UniqueConstraint("source_tier", "scan_key", name="uq_catalogue_scans_key"),
                      Index("ix_catalogue_scans_state_updated", "state", "updated_at", "id"))  # 0003

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_tier: Mapped[str] = mapped_column(String(64))
    scan_key: Mapped[str] = mapped_column(String(4096))
    state: Mapped[str] = mapped_column(String(32))
    pid: Mapped[str | None] = mapped_column(String(256), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    locations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # tier -> LocationDoc as JSON
    files_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the (path, checksum) catalogued
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CatalogueFile(Base):
    """Which scan a source file belongs to (its catalogue state is the scan's)."""

    __tablename__ = "catalogue_files"
    __table_args__ = (Index("ix_catalogue_files_scan", "scan_id"),)

    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("catalogue_scans.id", ondelete="CASCADE"))
class OutboxState(StrEnum):
    """Where one watcher batch stands: written but not yet accepted by Prefect, accepted, or refused for good."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class OutboxEntry(Base):
    """A batch of source paths the watcher must hand to the dispatcher deployment (the durable outbox).

    Written before the trigger is attempted, so a batch survives an unreachable Prefect API, a restart or
    ``kill -9``; pending entries are replayed in ``id`` order. ``idempotency_key`` is fixed when the entry is
    written: a replay of an entry Prefect already accepted returns the same flow run instead of a second one.
    """

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
                      Index("ix_outbox_state_id", "state", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    deployment: Mapped[str] = mapped_column(String(512))
    paths: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OutboxPath(Base):
    """One file of an outbox entry, with the version (size, mtime) the watcher saw when it batched it: the
    indexed, per-path form of ``OutboxEntry.paths`` (migration ``0005_watcher_scan_state``), written in the same
    transaction as its entry.

    The watcher asks it which of a scan's files are *in flight* (in a pending entry, or one sent within
    ``resend_after_s``, at this version) instead of holding a claim per file in memory: a backfill of a million
    new files keeps its memory flat, and a restart after ``kill -9`` knows what is in flight without reading
    every entry. ``size`` and ``mtime`` are NULL for entries written before the migration: any version."""

    __tablename__ = "outbox_paths"
    __table_args__ = (Index("ix_outbox_paths_path", "path"),)

    entry_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)


class ScanFolder(Base):
    """A leaf folder of a watched tier whose files a full scan found all verified on every move target
    (migration ``0005_watcher_scan_state``, ``ledger.scan_state``): ``mtime_ns`` is the folder's mtime when it
    was listed, ``files`` how many files it held. While the folder's mtime is unchanged no file was added,
    removed or renamed in it, so a light rescan does not list it; a full scan checks it file by file again."""

    __tablename__ = "scan_folders"

    tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)


class BundleState(StrEnum):
    """Where one archive bundle stands. A bundle's members are fixed when it is planned."""

    PLANNED = "planned"        # recorded with its members; not (yet) written and verified
    SUBMITTED = "submitted"    # a job writing it was submitted (sfapi): ``job_id`` says which; poll, never resubmit
    VERIFIED = "verified"      # on the archive tier, its listing and members checked against the manifest
    FAILED = "failed"          # the last attempt failed (``error`` names the bundle and members); retried next run


class ArchiveBundle(Base):
    """One bundle on the archive tier: a tar of many members (``htar``) or one file alone (``hsi cput``).

    Its members (``ArchiveMember``) are its manifest; ``manifest_digest`` fixes them. Job id, script and log path
    of the sfapi job that wrote it are kept here; ``catalogue_state`` tracks its datablock in the catalogue
    (``pending`` until every dataset it holds has it, like ``pending_catalogue`` for scans)."""

    __tablename__ = "archive_bundles"
    __table_args__ = (UniqueConstraint("tier", "name", name="uq_archive_bundles_name"),
                      Index("ix_archive_bundles_state", "tier", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tier: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(4096))
    kind: Mapped[str] = mapped_column(String(8))           # tar | file
    proposal: Mapped[str] = mapped_column(String(128))
    cycle: Mapped[str] = mapped_column(String(16))
    part: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    packed_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    member_count: Mapped[int] = mapped_column(Integer)
    checksum_alg: Mapped[str] = mapped_column(String(32))
    manifest_digest: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_script: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_log: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    catalogue_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    catalogue_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ArchiveMember(Base):
    """One file of a bundle (a manifest line): the member name, size and checksum. A file is in at most one
    bundle per archive tier (the unique constraint is what makes re-planning after a crash idempotent)."""

    __tablename__ = "archive_members"
    __table_args__ = (UniqueConstraint("tier", "file_id", name="uq_archive_members_file"),
                      Index("ix_archive_members_bundle", "bundle_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("archive_bundles.id", ondelete="CASCADE"))
    tier: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    member: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(128))
class Calibration(Base):
    """A detector calibration (pyFAI PONI) valid from ``valid_from`` until the next one starts (issue 11)."""

    __tablename__ = "calibrations"
    __table_args__ = (UniqueConstraint("valid_from", name="uq_calibrations_valid_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    poni: Mapped[str] = mapped_column(Text)
    poni_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(4096))  # the file it was read from, for people
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AnalysisState(StrEnum):
    """Where a scan stands with the reduction."""

    REDUCED = "reduced"                          # outputs written and delivered; ``outputs`` lists them
    PENDING_CALIBRATION = "pending_calibration"  # no calibration covers its acquisition time: reported, waiting
    FAILED = "failed"                            # the reduction (or its job) failed; ``error`` says why


class AnalysisScan(Base):
    """One scan's reduction: state, the calibration and backend used, its outputs and derived dataset."""

    __tablename__ = "analysis_scans"
    __table_args__ = (UniqueConstraint("source_tier", "scan_key", name="uq_analysis_scans_key"),
                      Index("ix_analysis_scans_state", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_tier: Mapped[str] = mapped_column(String(64))
    scan_key: Mapped[str] = mapped_column(String(4096))
    state: Mapped[str] = mapped_column(String(32))
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    calibration_id: Mapped[int | None] = mapped_column(ForeignKey("calibrations.id"), nullable=True)
    backend: Mapped[str | None] = mapped_column(String(32), nullable=True)
    merge: Mapped[str | None] = mapped_column(String(16), nullable=True)  # single | gb | own
    results_folder: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pid: Mapped[str | None] = mapped_column(String(256), nullable=True)  # the derived dataset
    catalogue_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
class AlertState(Base):
    """What the alert check has already reported (migration 0003_monitoring): one JSON value per key.

    ``events`` holds the id of the last event summarised; ``condition:<name>`` when a condition (late files, a
    long outbox, an expiring credential) was last reported and what it was; ``last_message`` when the last
    message went out (the rate limit). Kept in the ledger so a restarted process never sends the same again."""

    __tablename__ = "alert_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AlertMessage(Base):
    """One notification as sent (or attempted): the record of what operators were told, and when."""

    __tablename__ = "alert_messages"
    __table_args__ = (Index("ix_alert_messages_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    title: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    kinds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # kind -> count summarised
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
