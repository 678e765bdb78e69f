"""Ledger tables (SQLAlchemy 2 typed ORM). The schema changes only through Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
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
    PRUNE_SCHEDULED = "prune_scheduled"  # a copy got (or changed) its prune due date
    PRUNED = "pruned"                    # a copy was deleted; ``detail`` holds the evidence that allowed it
    PRUNE_REFUSED = "prune_refused"      # a due copy was not deleted because a check failed; ``detail`` says why
    AT_RISK = "at_risk"                  # a copy the ledger held verified failed its re-check


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class SourceFile(Base):
    """A file as it was acquired on its source tier: identity, size, mtime and checksum."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("source_tier", "path", name="uq_files_source_path"),)

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
                      Index("ix_copies_tier_state", "tier", "state"),
                      Index("ix_copies_tier_prune_due", "tier", "prune_due_at"))

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


class Event(Base):
    """Append-only history: every step that happened to a file, with its reason or evidence in ``detail``."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_file", "file_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"), nullable=True)
    path: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
