"""One contract for every ``Catalogue``: the embedded one, and SciCat against the FAKE SciCat server.

Each test runs against both. With SciCat, the fixture also fails the test if any request the adapter sent
broke the 4.5 OpenAPI contract (the fake validates every body).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from splash_flows.catalogue.base import Catalogue, CatalogueEntry, DataFileDoc, DatasetDoc
from splash_flows.catalogue.embedded import EmbeddedCatalogue
from splash_flows.catalogue.scicat import RetryPolicy, SciCatCatalogue
from splash_flows.errors import CatalogueError
from tests.catalogue_samples import PNG_1X1, PNG_OTHER, location, sample_doc
from tests.fakes.scicat_server import FakeSciCat, iter_violations


@dataclass
class Harness:
    """A catalogue plus a look at what its backend really stored (not through the catalogue itself)."""

    catalogue: Catalogue
    stored_datasets: Callable[[], int]
    stored_file_lists: Callable[[], int]
    stored_thumbnails: Callable[[], int]


def _sqlite_count(path: Path, table: str) -> Callable[[], int]:
    def count() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    return count


@pytest.fixture(params=["embedded", "scicat"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "embedded":
        path = tmp_path / "catalogue.sqlite"
        catalogue = EmbeddedCatalogue(path)
        datasets = _sqlite_count(path, "catalogue_datasets")
        yield Harness(catalogue, datasets, datasets, _sqlite_count(path, "catalogue_thumbnails"))
        catalogue.close()
        return
    with FakeSciCat() as fake:
        scicat = SciCatCatalogue(
            fake.url,
            "ingestor",
            fake.users["ingestor"],
            retry=RetryPolicy(max_attempts=2),
            sleep=lambda _: None,
            admin_groups=("ingestor",),
        )
        yield Harness(
            scicat,
            lambda: len(fake.datasets),
            lambda: len(fake.origdatablocks),
            lambda: len(fake.attachments),
        )
        scicat.close()
        assert not fake.violations, "requests broke the SciCat 4.5 contract:\n" + "\n".join(
            iter_violations(fake)
        )


def test_is_a_catalogue(harness: Harness) -> None:
    assert isinstance(harness.catalogue, Catalogue)


def test_upsert_twice_stores_one_dataset_with_one_file_list(harness: Harness) -> None:
    doc = sample_doc()
    first = harness.catalogue.upsert(doc)
    second = harness.catalogue.upsert(doc)
    assert first == second
    assert harness.stored_datasets() == 1
    assert harness.stored_file_lists() == 1
    assert harness.catalogue.get(first).doc.files == doc.files


def test_upsert_of_an_existing_scan_does_not_rewrite_it(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    again = harness.catalogue.upsert(sample_doc(name="a different name"))
    assert again == pid
    assert harness.catalogue.get(pid).doc.name == sample_doc().name
    assert harness.stored_datasets() == 1


def test_replace_files_gives_the_dataset_its_new_file_list_and_size(harness: Harness) -> None:
    """Issue 9 item 6: a file rewritten in place gets its new checksum in the dataset, one file list kept."""
    doc = sample_doc(locations=[location("bl733-data")])
    pid = harness.catalogue.upsert(doc)
    changed = doc.files[0].model_copy(update={"chk": "f" * 32, "size": doc.files[0].size + 10})
    new_files = [changed, *doc.files[1:]]
    harness.catalogue.replace_files(pid, new_files, doc.checksum_algorithm)
    harness.catalogue.replace_files(pid, new_files, doc.checksum_algorithm)  # idempotent
    entry = harness.catalogue.get(pid)
    assert entry.doc.files == new_files and entry.doc.size == doc.size + 10
    assert entry.doc.model_copy(update={"files": doc.files}) == doc  # nothing else changed
    assert harness.stored_datasets() == 1 and harness.stored_file_lists() == 1
    with pytest.raises(CatalogueError):
        harness.catalogue.replace_files("no/such-pid", new_files, doc.checksum_algorithm)


def test_find_by_scan_key(harness: Harness) -> None:
    doc = sample_doc()
    pid = harness.catalogue.upsert(doc)
    harness.catalogue.upsert(sample_doc("agbh_0002"))
    found = harness.catalogue.find(doc.scan_key)
    assert found is not None
    assert found.pid == pid
    assert found.doc == doc
    assert harness.catalogue.find("2024/05/01/no_such_scan") is None


def test_get_reads_back_exactly_what_was_stored(harness: Harness) -> None:
    doc = sample_doc(locations=[location("bl733-data")], errors=["lo image: header has no exposure time"])
    pid = harness.catalogue.upsert(doc)
    entry = harness.catalogue.get(pid)
    assert entry == CatalogueEntry(pid=pid, doc=doc, has_thumbnail=False)


def test_metadata_keys_as_7_3_3_writes_them_read_back_the_same_everywhere(harness: Harness) -> None:
    """Keys with spaces and '#' (a real v4 SciCat returns them URL-encoded) read back as written, through get,
    find, search and after a location update, so `catalog show` and `search --json` print the same keys."""
    metadata = {"I1 normalization": 0.25, "ALS Proposal #": "ALS-11234", "Exposure time s": {"value": 1.5, "unit": "s"}}
    doc = sample_doc(scientific_metadata=metadata)
    pid = harness.catalogue.upsert(doc)
    harness.catalogue.add_location(pid, location("cfs"))
    found = harness.catalogue.find(doc.scan_key)
    assert found is not None
    assert harness.catalogue.get(pid).doc.scientific_metadata == metadata
    assert found.doc.scientific_metadata == metadata
    assert [e.doc.scientific_metadata for e in harness.catalogue.search(proposal="ALS-11234")] == [metadata]


def test_get_of_an_unknown_pid_raises(harness: Harness) -> None:
    harness.catalogue.upsert(sample_doc())
    with pytest.raises(CatalogueError, match="no-such-dataset"):
        harness.catalogue.get("no-such-dataset")


def test_add_location_adds_each_tier_once_and_updates_its_state(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    harness.catalogue.add_location(pid, location("bl733-data", "verified"))
    harness.catalogue.add_location(pid, location("nersc-cfs", "verified", minute=5))
    harness.catalogue.add_location(pid, location("bl733-data", "pruned", minute=30))
    harness.catalogue.add_location(pid, location("bl733-data", "pruned", minute=30))  # no-op
    locations = harness.catalogue.get(pid).doc.locations
    assert [(loc.tier, loc.state) for loc in locations] == [
        ("bl733-data", "pruned"),
        ("nersc-cfs", "verified"),
    ]
    assert locations[0] == location("bl733-data", "pruned", minute=30)


def test_add_location_to_an_unknown_pid_raises(harness: Harness) -> None:
    with pytest.raises(CatalogueError):
        harness.catalogue.add_location("no-such-dataset", location("nersc-cfs"))


def test_upsert_again_keeps_the_locations_added_since(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    harness.catalogue.add_location(pid, location("nersc-hpss", "archived"))
    harness.catalogue.upsert(sample_doc())
    assert [loc.tier for loc in harness.catalogue.get(pid).doc.locations] == ["nersc-hpss"]


def test_thumbnail_attach_then_replace_by_caption(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    assert harness.catalogue.thumbnail(pid) is None
    harness.catalogue.attach_thumbnail(pid, PNG_1X1, "2D image, log scale")
    assert harness.catalogue.get(pid).has_thumbnail
    assert harness.catalogue.thumbnail(pid, "2D image, log scale") == PNG_1X1
    harness.catalogue.attach_thumbnail(pid, PNG_OTHER, "2D image, log scale")
    assert harness.catalogue.thumbnail(pid, "2D image, log scale") == PNG_OTHER
    assert harness.stored_thumbnails() == 1


def test_thumbnails_with_other_captions_are_kept_apart(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    harness.catalogue.attach_thumbnail(pid, PNG_1X1, "2D image")
    harness.catalogue.attach_thumbnail(pid, PNG_OTHER, "azimuthal integration")
    assert harness.catalogue.thumbnail(pid, "2D image") == PNG_1X1
    assert harness.catalogue.thumbnail(pid, "azimuthal integration") == PNG_OTHER
    assert harness.catalogue.thumbnail(pid) == PNG_OTHER  # the latest one
    assert harness.stored_thumbnails() == 2


def test_a_thumbnail_must_be_a_png(harness: Harness) -> None:
    pid = harness.catalogue.upsert(sample_doc())
    with pytest.raises(CatalogueError, match="not a PNG"):
        harness.catalogue.attach_thumbnail(pid, b"GIF89a...", "preview")
    assert harness.stored_thumbnails() == 0


def test_a_thumbnail_for_an_unknown_pid_raises(harness: Harness) -> None:
    with pytest.raises(CatalogueError):
        harness.catalogue.attach_thumbnail("no-such-dataset", PNG_1X1, "preview")


def _scans(entries: list[CatalogueEntry]) -> list[str]:
    return [e.doc.scan_key.rsplit("/", 1)[1] for e in entries]


@pytest.fixture
def three_scans(harness: Harness) -> Harness:
    """Three scans; in order of acquisition: agbh_0002, lab6_0001, p3ht_0003 (search results come so)."""
    at = sample_doc().creation_time
    harness.catalogue.upsert(sample_doc("lab6_0001"))
    harness.catalogue.upsert(
        sample_doc(
            "agbh_0002",
            name="Silver behenate",
            keywords=["WAXS"],
            description="beam centre",
            creation_time=at - timedelta(minutes=5),
        )
    )
    harness.catalogue.upsert(
        sample_doc(
            "p3ht_0003",
            name="P3HT film",
            proposal_id="ALS-99999",
            keywords=["GIWAXS", "polymer"],
            description="thin film",
            owner_group="als-99999",
            access_groups=["als-99999"],
            creation_time=at + timedelta(minutes=5),
        )
    )
    return harness


def test_search_by_proposal(three_scans: Harness) -> None:
    catalogue = three_scans.catalogue
    assert _scans(catalogue.search(proposal="ALS-11234")) == ["agbh_0002", "lab6_0001"]
    assert _scans(catalogue.search(proposal="ALS-99999")) == ["p3ht_0003"]
    assert catalogue.search(proposal="ALS-00000") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("silver BEHENATE", ["agbh_0002"]),  # name, any case
        ("giwaxs", ["p3ht_0003"]),  # keyword
        ("thin FILM", ["p3ht_0003"]),  # description
        ("agbh_0002_lo_2m.EDF", ["agbh_0002"]),  # a file path
        ("p3ht_0003.gb", ["p3ht_0003"]),  # a file path with a regex metacharacter taken literally
        ("p3ht.0003", []),  # "." is not a wildcard
        ("lab6_0001(", []),  # nor does a stray parenthesis break the search
    ],
)
def test_search_by_text(three_scans: Harness, text: str, expected: list[str]) -> None:
    assert _scans(three_scans.catalogue.search(text=text)) == expected


def test_search_by_proposal_and_text(three_scans: Harness) -> None:
    catalogue = three_scans.catalogue
    assert _scans(catalogue.search(proposal="ALS-11234", text="waxs")) == ["agbh_0002"]
    assert catalogue.search(proposal="ALS-99999", text="behenate") == []


def test_search_without_criteria_lists_everything(three_scans: Harness) -> None:
    assert _scans(three_scans.catalogue.search()) == ["agbh_0002", "lab6_0001", "p3ht_0003"]


def _derived(raw_pid: str, *, checksum: str = "d4" * 16, npt: int = 2000) -> DatasetDoc:
    when = datetime(2024, 5, 1, 14, 0, 0, tzinfo=UTC)
    return sample_doc("reduced/lab6_0001", name="lab6_0001 reduced", dataset_type="derived",
                      input_datasets=[raw_pid], used_software=["pyFAI 2026.9.0", "splash-flows 0.1.0"],
                      job_parameters={"method": "pyFAI integrate1d", "npt": npt, "poni": "Distance: 2.0\n"},
                      scientific_metadata={"method": "pyFAI integrate1d", "npt": npt},
                      files=[DataFileDoc(path="lab6_0001.h5", size=100, time=when, chk=checksum),
                             DataFileDoc(path="lab6_0001.dat", size=50, time=when, chk="e5" * 16)])


def test_derived_dataset_links_its_raw_dataset_and_reads_back(harness: Harness) -> None:
    raw = harness.catalogue.upsert(sample_doc())
    pid = harness.catalogue.upsert_derived(_derived(raw))
    entry = harness.catalogue.get(pid)
    assert entry.doc.dataset_type == "derived" and entry.doc.input_datasets == [raw]
    assert entry.doc.used_software == ["pyFAI 2026.9.0", "splash-flows 0.1.0"]
    assert entry.doc.job_parameters["npt"] == 2000 and entry.doc.job_parameters["poni"] == "Distance: 2.0\n"
    assert harness.catalogue.get(raw).doc.dataset_type == "raw"
    harness.catalogue.attach_thumbnail(pid, PNG_1X1, "I(q)")
    assert harness.catalogue.thumbnail(pid, "I(q)") == PNG_1X1


def test_rerunning_an_analysis_updates_its_derived_dataset_never_adds_one(harness: Harness) -> None:
    raw = harness.catalogue.upsert(sample_doc())
    pid = harness.catalogue.upsert_derived(_derived(raw))
    harness.catalogue.add_location(pid, location("nersc-cfs", "verified"))
    again = harness.catalogue.upsert_derived(_derived(raw, checksum="f6" * 16, npt=1000))
    assert again == pid
    assert harness.stored_datasets() == 2 and harness.stored_file_lists() == 2
    doc = harness.catalogue.get(pid).doc
    assert doc.job_parameters["npt"] == 1000 and doc.scientific_metadata["npt"] == 1000
    assert {f.path: f.chk for f in doc.files}["lab6_0001.h5"] == "f6" * 16
    assert [loc.tier for loc in doc.locations] == ["nersc-cfs"]  # locations survive the update


def test_upsert_derived_refuses_a_raw_document(harness: Harness) -> None:
    with pytest.raises(CatalogueError, match="derived"):
        harness.catalogue.upsert_derived(sample_doc())
