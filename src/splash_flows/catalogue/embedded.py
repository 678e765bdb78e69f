"""The embedded catalogue: our ``Catalogue`` in a SQLite file, for sites without SciCat and for tests.

It keeps the documents as they are (JSON columns), in its own database file and its own tables (all named
``catalogue_*``), apart from the ledger: the ledger is the system of record, this is only a finding aid, and
either can be rebuilt or moved without the other.

Why the layout is what it is:

* ``scan_key`` is UNIQUE and a dataset is created with ``INSERT ... ON CONFLICT DO NOTHING``, so two processes
  ingesting the same scan at once still store one dataset;
* locations live in their own table with UNIQUE (pid, tier) and are written with ``ON CONFLICT DO UPDATE``, so
  "never duplicate a tier" holds by construction and two concurrent updates of different tiers cannot lose one
  another (a read-modify-write of a JSON list could);
* thumbnails are blobs with UNIQUE (pid, caption): attaching again with the same caption replaces the image;
* ``search_text`` is a case-folded copy of every searchable string, so a text search is one ``instr``.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from splash_flows.catalogue._png import require_png
from splash_flows.catalogue.base import CatalogueEntry, DatablockDoc, DataFileDoc, DatasetDoc, LocationDoc
from splash_flows.errors import CatalogueError, CatalogueUnavailable

log = logging.getLogger(__name__)

PID_PREFIX = "embedded/"
_SEPARATOR = "\x1f"  # between the fields of search_text, so a search never matches across two fields


class _Base(DeclarativeBase):
    """Declarative base of the catalogue's own tables (its own MetaData, not the ledger's)."""


class _Dataset(_Base):
    __tablename__ = "catalogue_datasets"

    pid: Mapped[str] = mapped_column(String(64), primary_key=True)
    scan_key: Mapped[str] = mapped_column(Text, unique=True)
    proposal_id: Mapped[str | None] = mapped_column(Text, index=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)  # DatasetDoc without its locations
    search_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Location(_Base):
    __tablename__ = "catalogue_locations"
    __table_args__ = (UniqueConstraint("pid", "tier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pid: Mapped[str] = mapped_column(ForeignKey("catalogue_datasets.pid", ondelete="CASCADE"), index=True)
    tier: Mapped[str] = mapped_column(Text)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)


class _Thumbnail(_Base):
    __tablename__ = "catalogue_thumbnails"
    __table_args__ = (UniqueConstraint("pid", "caption"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pid: Mapped[str] = mapped_column(ForeignKey("catalogue_datasets.pid", ondelete="CASCADE"), index=True)
    caption: Mapped[str] = mapped_column(Text)
    png: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Datablock(_Base):
    __tablename__ = "catalogue_datablocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    archive_id: Mapped[str] = mapped_column(Text, unique=True)
    pid: Mapped[str] = mapped_column(ForeignKey("catalogue_datasets.pid", ondelete="CASCADE"), index=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)


class EmbeddedCatalogue:
    """``Catalogue`` in SQLite. ``path_or_url`` is a file path (created with its folder if missing), a
    ``sqlite:///...`` URL, or ``":memory:"`` (one shared in-memory database, for tests).

    Opening creates the tables if they are missing; opening an existing file keeps its contents."""

    def __init__(self, path_or_url: str | os.PathLike[str]) -> None:
        self._engine = _make_engine(path_or_url)
        self._local = threading.local()  # .conn: the connection of this thread's open batch(), if any
        with self._db("create the catalogue tables"):
            _Base.metadata.create_all(self._engine)

    def __repr__(self) -> str:
        return f"EmbeddedCatalogue({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> EmbeddedCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every call of this thread inside the block is ONE write transaction (``BEGIN IMMEDIATE``: the write
        lock is taken at the start, so the reads inside it and the writes after them see one state, and a
        concurrent writer waits up to the busy timeout instead of failing), committed at the end. A block
        inside a block joins the outer one. If the block raises, nothing of it is kept."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        what = "write a batch of scans"
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                self._local.conn = conn
                try:
                    yield
                except BaseException:
                    conn.rollback()
                    raise
                finally:
                    self._local.conn = None
                conn.commit()
        except OperationalError as exc:
            raise CatalogueUnavailable(f"embedded catalogue {self._engine.url.database}: {what}: {exc}") from exc
        except SQLAlchemyError as exc:
            raise CatalogueError(f"embedded catalogue {self._engine.url.database}: {what}: {exc}") from exc

    # ------------------------------------------------------------------ the Catalogue protocol

    def find(self, scan_key: str) -> CatalogueEntry | None:
        """The dataset of this scan, or None."""
        with self._db(f"find scan {scan_key}") as conn:
            row = conn.execute(select(_Dataset).where(_Dataset.scan_key == scan_key)).mappings().first()
            return None if row is None else self._entry(conn, row)

    def upsert(self, doc: DatasetDoc) -> str:
        """Store the dataset unless its scan is already there; return its pid.

        An existing dataset is not rewritten (its locations change only through ``add_location``)."""
        pid = f"{PID_PREFIX}{uuid.uuid4()}"
        with self._db(f"upsert scan {doc.scan_key}") as conn:
            # The INSERT comes first so the transaction is a write transaction from its start (SQLite's busy
            # timeout then applies) and the UNIQUE scan_key decides who creates the dataset.
            created = conn.execute(
                sqlite_insert(_Dataset)
                .values(
                    pid=pid,
                    scan_key=doc.scan_key,
                    proposal_id=doc.proposal_id,
                    doc=doc.model_dump(mode="json", exclude={"locations"}),
                    search_text=_search_text(doc),
                    created_at=datetime.now(UTC),
                )
                .on_conflict_do_nothing(index_elements=["scan_key"])
            ).rowcount
            if created:
                for location in doc.locations:
                    self._put_location(conn, pid, location)
                log.info("Created embedded catalogue dataset %s for scan %s", pid, doc.scan_key)
                return pid
            existing = conn.execute(
                select(_Dataset.pid).where(_Dataset.scan_key == doc.scan_key)
            ).scalar_one()
            return existing

    def replace_files(self, pid: str, files: list[DataFileDoc], checksum_algorithm: str) -> None:
        """Replace the dataset's file list (and checksum algorithm) in its stored document."""
        with self._db(f"replace the file list of dataset {pid}") as conn:
            row = conn.execute(select(_Dataset.doc).where(_Dataset.pid == pid)).first()
            if row is None:
                raise CatalogueError(f"embedded catalogue has no dataset {pid}")
            data = dict(row[0])
            data["files"] = [f.model_dump(mode="json") for f in files]
            data["checksum_algorithm"] = checksum_algorithm
            doc = DatasetDoc.model_validate(data)
            conn.execute(update(_Dataset).where(_Dataset.pid == pid)
                         .values(doc=doc.model_dump(mode="json", exclude={"locations"}),
                                 search_text=_search_text(doc)))
    def upsert_derived(self, doc: DatasetDoc) -> str:
        """Create the derived dataset of ``doc.scan_key``, or replace the stored document of the existing one
        (files, metadata, parameters; its pid, locations and thumbnails stay). Returns the pid."""
        if doc.dataset_type != "derived":
            raise CatalogueError(f"scan {doc.scan_key}: upsert_derived needs a derived dataset document")
        pid = f"{PID_PREFIX}{uuid.uuid4()}"
        body = doc.model_dump(mode="json", exclude={"locations"})
        with self._db(f"upsert derived dataset {doc.scan_key}") as conn:
            conn.execute(
                sqlite_insert(_Dataset)
                .values(pid=pid, scan_key=doc.scan_key, proposal_id=doc.proposal_id, doc=body,
                        search_text=_search_text(doc), created_at=datetime.now(UTC))
                .on_conflict_do_update(index_elements=["scan_key"],
                                       set_={"doc": body, "search_text": _search_text(doc),
                                             "proposal_id": doc.proposal_id})
            )
            stored = conn.execute(select(_Dataset.pid).where(_Dataset.scan_key == doc.scan_key)).scalar_one()
            for location in doc.locations:
                self._put_location(conn, stored, location)
        return str(stored)

    def add_location(self, pid: str, location: LocationDoc) -> None:
        """Add or replace the location of ``location.tier``."""
        with self._db(f"add location {location.tier} to dataset {pid}") as conn:
            try:
                self._put_location(conn, pid, location)
            except IntegrityError as exc:  # the foreign key: no such dataset
                raise CatalogueError(f"embedded catalogue has no dataset {pid}") from exc

    def attach_thumbnail(self, pid: str, png: bytes, caption: str) -> None:
        """Store ``png`` for the dataset, replacing an earlier one with the same caption."""
        require_png(png, pid)
        now = datetime.now(UTC)
        stmt = sqlite_insert(_Thumbnail).values(pid=pid, caption=caption, png=png, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["pid", "caption"], set_={"png": png, "updated_at": now}
        )
        with self._db(f"attach thumbnail {caption!r} to dataset {pid}") as conn:
            try:
                conn.execute(stmt)
            except IntegrityError as exc:
                raise CatalogueError(f"embedded catalogue has no dataset {pid}") from exc

    def thumbnail(self, pid: str, caption: str | None = None) -> bytes | None:
        """The PNG with this caption (any caption: the latest attached), or None."""
        query = select(_Thumbnail.png).where(_Thumbnail.pid == pid)
        if caption is not None:
            query = query.where(_Thumbnail.caption == caption)
        query = query.order_by(_Thumbnail.updated_at.desc(), _Thumbnail.id.desc()).limit(1)
        with self._db(f"read thumbnail of dataset {pid}") as conn:
            png = conn.execute(query).scalar_one_or_none()
            return None if png is None else bytes(png)

    def get(self, pid: str) -> CatalogueEntry:
        """The dataset with this pid; ``CatalogueError`` if unknown."""
        with self._db(f"get dataset {pid}") as conn:
            row = conn.execute(select(_Dataset).where(_Dataset.pid == pid)).mappings().first()
            if row is None:
                raise CatalogueError(f"embedded catalogue has no dataset {pid}")
            return self._entry(conn, row)

    def search(self, *, proposal: str | None = None, text: str | None = None) -> list[CatalogueEntry]:
        """Datasets of ``proposal`` whose name, description, keywords, scientific-metadata values, source
        folder, scan key or a file path contain ``text`` (case-insensitive)."""
        query = select(_Dataset)
        if proposal is not None:
            query = query.where(_Dataset.proposal_id == proposal)
        if text:
            query = query.where(func.instr(_Dataset.search_text, text.casefold()) > 0)
        with self._db(f"search proposal={proposal!r} text={text!r}") as conn:
            entries = [self._entry(conn, row) for row in conn.execute(query).mappings()]
        return sorted(entries, key=lambda e: (e.doc.creation_time, e.pid))

    def add_datablock(self, pid: str, block: DatablockDoc) -> None:
        """Store the datablock unless one with its ``archive_id`` exists (UNIQUE: concurrent adds store one)."""
        stmt = sqlite_insert(_Datablock).values(archive_id=block.archive_id, pid=pid,
                                                doc=block.model_dump(mode="json"))
        with self._db(f"add datablock {block.archive_id} to dataset {pid}") as conn:
            try:
                conn.execute(stmt.on_conflict_do_nothing(index_elements=["archive_id"]))
            except IntegrityError as exc:
                raise CatalogueError(f"embedded catalogue has no dataset {pid}") from exc

    def datablocks(self, pid: str) -> list[DatablockDoc]:
        """The dataset's datablocks, oldest first."""
        with self._db(f"read datablocks of dataset {pid}") as conn:
            docs = conn.execute(select(_Datablock.doc).where(_Datablock.pid == pid).order_by(_Datablock.id))
            return [DatablockDoc.model_validate(d) for d in docs.scalars()]

    # ------------------------------------------------------------------ internals

    def _put_location(self, conn: Connection, pid: str, location: LocationDoc) -> None:
        doc = location.model_dump(mode="json")
        conn.execute(
            sqlite_insert(_Location)
            .values(pid=pid, tier=location.tier, doc=doc)
            .on_conflict_do_update(index_elements=["pid", "tier"], set_={"doc": doc})
        )

    def _entry(self, conn: Connection, row: Any) -> CatalogueEntry:
        pid = row["pid"]
        locations: Any = conn.execute(
            select(_Location.doc).where(_Location.pid == pid).order_by(_Location.id)
        ).scalars()
        has_thumbnail = conn.execute(select(exists().where(_Thumbnail.pid == pid))).scalar_one()
        try:
            doc = DatasetDoc.model_validate({**row["doc"], "locations": list(locations)})
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise CatalogueError(f"embedded catalogue dataset {pid} cannot be read: {exc}") from exc
        return CatalogueEntry(pid=pid, doc=doc, has_thumbnail=bool(has_thumbnail))

    @contextmanager
    def _db(self, what: str) -> Iterator[Connection]:
        """One transaction; database failures become ``CatalogueError`` (``CatalogueUnavailable`` when the
        database is locked or cannot be opened, which passes). Inside ``batch()``: the batch's transaction."""
        batch_conn: Connection | None = getattr(self._local, "conn", None)
        try:
            if batch_conn is not None:
                yield batch_conn
                return
            with self._engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise CatalogueUnavailable(
                f"embedded catalogue {self._engine.url.database}: {what}: {exc}"
            ) from exc
        except SQLAlchemyError as exc:
            raise CatalogueError(f"embedded catalogue {self._engine.url.database}: {what}: {exc}") from exc


def _make_engine(path_or_url: str | os.PathLike[str]) -> Engine:
    target = os.fspath(path_or_url)
    if target == ":memory:":
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    elif "://" in target:
        if not target.startswith("sqlite"):
            raise CatalogueError(f"the embedded catalogue needs SQLite, not {target.split('://', 1)[0]}")
        try:
            engine = create_engine(target, connect_args={"timeout": 30})
        except ArgumentError as exc:
            raise CatalogueError(f"bad embedded catalogue URL: {exc}") from exc
    else:
        path = Path(target).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    event.listen(engine, "connect", _on_connect)
    return engine


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: enforce foreign keys, wait for locks instead of failing, and use WAL so readers do
    not block the writer."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _search_text(doc: DatasetDoc) -> str:
    """Case-folded searchable strings of a document, one field per separator-delimited part."""
    parts = [doc.name, doc.description, doc.source_folder, doc.scan_key, *doc.keywords]
    parts += [f.path for f in doc.files]
    parts += list(_scalars(doc.scientific_metadata))
    return _SEPARATOR.join(p.casefold() for p in parts)


def _scalars(value: Any) -> Iterable[str]:
    """Every scalar value inside nested dicts and lists, as text (keys are not searched)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _scalars(item)
    elif value is not None:
        yield str(value)
