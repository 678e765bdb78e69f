"""What the embedded catalogue promises beyond the shared contract: concurrency, persistence, its own tables,
and text search over scientific-metadata values."""

from __future__ import annotations

import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from splash_flows.catalogue.embedded import EmbeddedCatalogue
from splash_flows.errors import CatalogueError
from tests.catalogue_samples import PNG_1X1, location, sample_doc


def test_pids_are_embedded_uuid4(tmp_path: Path) -> None:
    pid = EmbeddedCatalogue(tmp_path / "c.sqlite").upsert(sample_doc())
    assert re.fullmatch(r"embedded/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", pid)


def test_concurrent_upserts_of_one_scan_store_one_dataset(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    EmbeddedCatalogue(path)  # create the tables once, as the first process would
    barrier = threading.Barrier(8)

    def ingest(_: int) -> str:
        catalogue = EmbeddedCatalogue(path)  # each worker opens its own, as separate processes do
        barrier.wait()
        return catalogue.upsert(sample_doc())

    with ThreadPoolExecutor(8) as pool:
        pids = set(pool.map(ingest, range(8)))
    assert len(pids) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM catalogue_datasets").fetchone()[0] == 1


def test_concurrent_locations_of_different_tiers_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    pid = EmbeddedCatalogue(path).upsert(sample_doc())
    tiers = [f"tier-{n}" for n in range(8)]
    barrier = threading.Barrier(len(tiers))

    def add(tier: str) -> None:
        catalogue = EmbeddedCatalogue(path)
        barrier.wait()
        catalogue.add_location(pid, location(tier))

    with ThreadPoolExecutor(len(tiers)) as pool:
        list(pool.map(add, tiers))
    assert sorted(loc.tier for loc in EmbeddedCatalogue(path).get(pid).doc.locations) == tiers


def test_reopening_keeps_everything_and_creates_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.sqlite"  # the folder is created too
    first = EmbeddedCatalogue(path)
    pid = first.upsert(sample_doc())
    first.add_location(pid, location("nersc-cfs"))
    first.attach_thumbnail(pid, PNG_1X1, "preview")
    first.close()
    again = EmbeddedCatalogue(str(path))
    entry = again.get(pid)
    assert entry.has_thumbnail
    assert [loc.tier for loc in entry.doc.locations] == ["nersc-cfs"]
    assert again.upsert(sample_doc()) == pid


def test_keeps_to_its_own_tables(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    with sqlite3.connect(path) as db:  # e.g. someone else's table in the same file
        db.execute("CREATE TABLE ledger_files (id INTEGER PRIMARY KEY)")
    EmbeddedCatalogue(path).upsert(sample_doc())
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"ledger_files", "catalogue_datasets", "catalogue_locations", "catalogue_thumbnails",
                      "catalogue_datablocks"}


@pytest.mark.parametrize(
    ("text", "found"),
    [("pilatus 2m", True), ("3500", True), ("KEV", True), ("lab6 STANDARD", True), ("distance_mm", False)],
)
def test_text_search_covers_scientific_metadata_values(tmp_path: Path, text: str, found: bool) -> None:
    catalogue = EmbeddedCatalogue(tmp_path / "c.sqlite")
    pid = catalogue.upsert(sample_doc())
    assert [e.pid for e in catalogue.search(text=text)] == ([pid] if found else [])


def test_text_search_does_not_match_across_two_fields(tmp_path: Path) -> None:
    catalogue = EmbeddedCatalogue(tmp_path / "c.sqlite")
    doc = sample_doc(name="alpha", description="beta", keywords=[], scientific_metadata={})
    catalogue.upsert(doc)
    assert catalogue.search(text="alpha") != []
    assert catalogue.search(text="alphabeta") == []


def test_in_memory_catalogue_works_across_threads() -> None:
    catalogue = EmbeddedCatalogue(":memory:")
    pid = catalogue.upsert(sample_doc())
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(catalogue.get, pid).result().pid == pid


def test_only_sqlite_urls_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="needs SQLite"):
        EmbeddedCatalogue("postgresql://localhost/catalogue")
    catalogue = EmbeddedCatalogue(f"sqlite:///{tmp_path / 'url.sqlite'}")
    assert catalogue.search() == []
