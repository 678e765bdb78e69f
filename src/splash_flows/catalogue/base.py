"""The catalogue interface and the documents it speaks.

These documents are ours, not SciCat's: ``scicat.py`` maps them to SciCat field names, ``embedded.py`` stores
them as they are. The move flow only ever sees this module.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class DataFileDoc(BaseModel):
    """One file of a dataset, as acquired (an OrigDatablock entry)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path relative to the dataset's source folder (the move flow catalogues "
                      "the scan's folder on the archive tier, so this is the file name).")
    size: int
    time: datetime = Field(description="Modification time of the file at acquisition (UTC).")
    chk: str = Field(description="Checksum value from the ledger.")


class LocationDoc(BaseModel):
    """One place a dataset's files are (or were) kept: its location history."""

    model_config = ConfigDict(extra="forbid")

    tier: str
    url: str = Field(description="Where the files are on that tier (collection/path or local folder).")
    state: str = Field(description="verified | pruned | at_risk | archived ...")
    since: datetime


class DatasetDoc(BaseModel):
    """One raw dataset = one 7.3.3 scan (a single exposure, or a hi/lo pair with its .gb)."""

    model_config = ConfigDict(extra="forbid")

    scan_key: str = Field(description="Stable identity of the scan: tier-relative path of its folder + scan "
                          "stem. Used to find an existing dataset before creating one (idempotent ingest).")
    name: str
    owner: str
    owner_group: str
    access_groups: list[str]
    contact_email: str
    principal_investigator: str
    proposal_id: str | None
    creation_time: datetime = Field(description="Aware datetime of the acquisition.")
    creation_location: str
    source_folder: str
    source_folder_host: str | None = None
    description: str = ""
    keywords: list[str] = Field(default_factory=list)
    scientific_metadata: dict[str, Any] = Field(default_factory=dict)
    checksum_algorithm: str
    files: list[DataFileDoc]
    locations: list[LocationDoc] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list, description="What could not be read from the raw files.")
    dataset_type: Literal["raw", "derived"] = Field(
        default="raw", description="raw: files as acquired; derived: results computed from raw datasets.")
    input_datasets: list[str] = Field(default_factory=list, description="Derived only: pids of the datasets it "
                                      "was computed from.")
    used_software: list[str] = Field(default_factory=list, description="Derived only: 'name version' of each "
                                     "program that computed it.")
    job_parameters: dict[str, Any] = Field(default_factory=dict, description="Derived only: how it was computed "
                                           "(method, settings, calibration PONI).")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class DatablockDoc(BaseModel):
    """One archived unit of a dataset (a SciCat Datablock): the part of a tape bundle holding its files.

    ``archive_id`` is unique across the catalogue (the bundle's location and the dataset's pid), so adding
    the same datablock again changes nothing; it is what a restore starts from."""

    model_config = ConfigDict(extra="forbid")

    archive_id: str
    size: int = Field(description="Bytes of the dataset's files in the bundle.")
    packed_size: int = Field(description="Bytes of the whole bundle as stored on tape.")
    chk_alg: str
    version: str = Field(default="splash-flows-bundle/1", description="How the bundle is packed.")
    files: list[DataFileDoc] = Field(min_length=1)


class CatalogueEntry(BaseModel):
    """A dataset as the catalogue holds it: the document plus the catalogue's own identifier."""

    pid: str
    doc: DatasetDoc
    has_thumbnail: bool = False


@runtime_checkable
class Catalogue(Protocol):
    """What the pipeline needs from a catalogue. Every method raises ``CatalogueError`` (or
    ``CatalogueUnavailable`` for outages) on failure; none returns a flag to be checked."""

    def find(self, scan_key: str) -> CatalogueEntry | None:
        """The dataset of this scan, or None. Used before creating so a re-run never duplicates."""
        ...

    def upsert(self, doc: DatasetDoc) -> str:
        """Create the dataset and its file list if absent; return its pid. Idempotent."""
        ...

    def add_location(self, pid: str, location: LocationDoc) -> None:
        """Add or update (by tier) one location in the dataset's history; never duplicates a tier."""
        ...

    def replace_files(self, pid: str, files: list[DataFileDoc], checksum_algorithm: str) -> None:
        """Make ``files`` the dataset's file list (a file rewritten in place after it was catalogued, or one
        that arrived after the dataset was made). Idempotent; the dataset's size follows."""
        ...

    def attach_thumbnail(self, pid: str, png: bytes, caption: str) -> None:
        """Attach a PNG preview to the dataset (replacing an earlier one with the same caption)."""
        ...

    def get(self, pid: str) -> CatalogueEntry:
        """The dataset with this pid; raises CatalogueError if unknown."""
        ...

    def search(self, *, proposal: str | None = None, text: str | None = None) -> list[CatalogueEntry]:
        """Datasets matching every given criterion (none given: all).

        ``text`` is a case-insensitive substring of the name, description, a keyword, the source folder, the
        scan key or a file path (the embedded catalogue also searches scientific-metadata values)."""
        ...

    def upsert_derived(self, doc: DatasetDoc) -> str:
        """Create the derived dataset ``doc`` (``dataset_type`` derived) or, when one with its ``scan_key`` exists,
        replace its document and file list in place; return its pid. Re-running an analysis updates its
        dataset, never adds a second one."""
        ...

    def thumbnail(self, pid: str, caption: str | None = None) -> bytes | None:
        """The PNG attached to the dataset with this caption (any caption: the latest one), or None.

        Lets an operator tool show, and a test check, what ``attach_thumbnail`` stored."""
        ...

    def add_datablock(self, pid: str, block: DatablockDoc) -> None:
        """Record that part of the dataset is archived in a bundle. Idempotent by ``block.archive_id``."""
        ...

    def datablocks(self, pid: str) -> list[DatablockDoc]:
        """The dataset's datablocks (archived bundles), oldest first."""
        ...

@runtime_checkable
class BatchingCatalogue(Protocol):
    """A catalogue that can make many calls one transaction (the embedded catalogue: one commit per batch of
    scans instead of several per scan). Optional: the catalogue step uses it when the catalogue has it."""

    def batch(self) -> AbstractContextManager[None]:
        """Every call made in this thread inside the block is one transaction, committed when the block ends
        (``CatalogueUnavailable``/``CatalogueError`` if the commit fails: then none of it happened) and rolled
        back if the block raises."""
        ...
