"""The catalogue step (services/catalogue.py) end to end without Prefect: simulated 7.3.3 scans are moved
(services/move.py), then catalogued in the embedded catalogue and in SciCat (the FAKE server on 127.0.0.1).

Covers: one dataset per scan (hi/lo + .gb = one), excluded stems, damaged files still catalogued with their
errors, idempotent re-runs (counted on the backend itself), the outage queue and ``retry_pending``, a 4xx that
fails one scan while the rest go on, scans split across batches, and the verified download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.catalogue.embedded import EmbeddedCatalogue
from splash_flows.cli.status import status_json
from splash_flows.config import (
    CatalogueRetryConfig,
    Config,
    DatasetConfig,
    NoCatalogueConfig,
    SciCatCatalogueConfig,
)
from splash_flows.context import Context, build_context
from splash_flows.errors import BatchError
from splash_flows.ledger import EventKind
from splash_flows.ledger.catalogue import file_states, scan_counts
from splash_flows.services.catalogue import catalogue_batch, download_dataset, retry_pending
from splash_flows.services.move import move_files
from tests.fakes.scicat_server import FakeSciCat, iter_violations

PROPOSAL = "ALS-00622"
DATASETS = "/api/v4/datasets"
CONTACT = "bl733@example.org"
HOST = "bl733-data.als.example.org"


@dataclass
class Backend:
    """A configured site plus a look at what its catalogue really stored (not through our adapter)."""

    config: Config
    datasets: Callable[[], int]
    file_lists: Callable[[], int]
    fake: FakeSciCat | None = None


def _embedded_counts(config: Config) -> Callable[[], int]:
    def count() -> int:
        with EmbeddedCatalogue(config.catalogue_path()) as cat:
            return len(cat.search())

    return count


def with_scicat(config: Config, fake: FakeSciCat) -> Config:
    """``config`` pointed at the fake SciCat, retrying once without waiting."""
    scicat = SciCatCatalogueConfig(kind="scicat", url=fake.url, username="ingestor",
                                   password=SecretStr(fake.users["ingestor"]),
                                   retry=CatalogueRetryConfig(max_attempts=2, backoff_base=0.0),
                                   admin_groups=["ingestor"])
    dataset = DatasetConfig(contact_email=CONTACT, source_folder_host=HOST, settle_seconds=0)
    return config.model_copy(update={"catalogue": scicat, "dataset": dataset})


@pytest.fixture(params=["embedded", "scicat"])
def backend(request: pytest.FixtureRequest, sqlite_config: Config) -> Iterator[Backend]:
    if request.param == "embedded":
        config = sqlite_config.model_copy(update={"dataset": DatasetConfig(settle_seconds=0)})
        count = _embedded_counts(config)
        yield Backend(config, count, count)
        return
    with FakeSciCat() as fake:
        yield Backend(with_scicat(sqlite_config, fake), lambda: len(fake.datasets),
                      lambda: len(fake.origdatablocks), fake)
        assert not fake.violations, "requests broke the SciCat 4.5 contract:\n" + "\n".join(iter_violations(fake))


@pytest.fixture
def scicat(sqlite_config: Config) -> Iterator[tuple[Config, FakeSciCat]]:
    with FakeSciCat() as fake:
        yield with_scicat(sqlite_config, fake), fake
        assert not fake.violations, "\n".join(iter_violations(fake))


def simulate(config: Config, n: int = 8, **kwargs: Any) -> list[str]:
    """Simulated scans on data733 (small frames); returns tier-relative paths in write order."""
    root = Path(config.tiers["data733"].root)
    opts: dict[str, Any] = {"small": True, "hi_lo_every": 3, "autoexpose_every": 4, "proposal": PROPOSAL,
                            "seed": 7, **kwargs}
    return [p.relative_to(root).as_posix() for p in simulate_acquisitions(root, n, **opts)]


def damage(config: Config, paths: list[str]) -> dict[str, str]:
    """Truncate one exposure's EDF, replace another's with garbage, delete a third one's sidecar.
    Returns {what: scan key}."""
    root = Path(config.tiers["data733"].root)
    singles = [p for p in paths if p.endswith("_2m.edf") and "autoexpose" not in p and "_hi_" not in p
               and "_lo_" not in p]
    truncated, corrupt, no_sidecar = singles[:3]
    data = (root / truncated).read_bytes()
    (root / truncated).write_bytes(data[: len(data) // 2])
    (root / corrupt).write_bytes(b"\x89PNG this is not an EDF file at all" * 10)
    sidecar = no_sidecar[: -len(".edf")] + ".txt"
    (root / sidecar).unlink()
    paths.remove(sidecar)
    return {k: v[: -len(".edf")] for k, v in
            {"truncated": truncated, "corrupt": corrupt, "no_sidecar": no_sidecar}.items()}


@pytest.fixture
def open_ctx() -> Iterator[Callable[[Config], Context]]:
    opened: list[Context] = []

    def make(config: Config) -> Context:
        ctx = build_context(config)
        opened.append(ctx)
        return ctx

    yield make
    for ctx in opened:
        ctx.close()


# ---------------------------------------------------------------------------------------------- the batch


def test_one_dataset_per_scan_with_ledger_checksums_locations_and_errors(
        backend: Backend, open_ctx: Callable[[Config], Context]) -> None:
    ctx = open_ctx(backend.config)
    paths = simulate(backend.config)
    damaged = damage(backend.config, paths)
    move = move_files(ctx, paths)
    assert not move.failures()  # damaged files are still moved

    report = catalogue_batch(ctx, paths)

    assert not report.failed and not report.pending, report.describe()
    # 8 scans: 2, 3 hi/lo (6 and 3), 2 autoexpose (4 and 8) -> 6 datasets
    assert len(report.catalogued) == 6 and len(report.excluded) == 2
    assert all("autoexpose" in key for key in report.excluded)
    assert backend.datasets() == 6 and backend.file_lists() == 6
    entries = {e.doc.scan_key: e for e in ctx.catalogue().search()}
    assert set(entries) == set(report.catalogued)
    assert not any("autoexpose" in key for key in entries)

    ledger = {r.path: r for r in ctx.ledger.status()}
    for key, entry in entries.items():
        doc = entry.doc
        assert entry.pid == report.catalogued[key]
        assert doc.proposal_id == PROPOSAL and doc.owner_group == PROPOSAL
        folder = key.rpartition("/")[0]
        assert doc.source_folder == f"{backend.config.tiers['cfs'].root}/{folder}"
        for f in doc.files:  # every file with the ledger's size and checksum
            rec = ledger[f"{folder}/{f.path}"]
            assert (f.size, f.chk) == (rec.size, rec.checksum)
        assert {loc.tier: loc.state for loc in doc.locations} == {"lamarr": "verified", "cfs": "verified"}
        if key in (damaged["truncated"], damaged["corrupt"]):  # no picture to preview, and the dataset says why
            assert not entry.has_thumbnail and any("no preview" in err for err in doc.errors)
        else:
            assert entry.has_thumbnail
            assert (ctx.catalogue().thumbnail(entry.pid, "preview") or b"")[:8] == b"\x89PNG\r\n\x1a\n"
    hilo = [e for e in entries.values() if len(e.doc.files) == 5]
    assert len(hilo) == 2  # a hi/lo pair and its .gb are one dataset
    assert all(any(f.path.endswith("_sfloat_2m.gb") for f in e.doc.files) for e in hilo)
    assert any("truncated" in err for err in entries[damaged["truncated"]].doc.errors)
    assert any(damaged["corrupt"].rsplit("/", 1)[1] + ".edf" in err for err in entries[damaged["corrupt"]].doc.errors)
    assert any("sidecar missing" in err for err in entries[damaged["no_sidecar"]].doc.errors)
    assert len(entries[damaged["no_sidecar"]].doc.files) == 1

    states = {r["path"]: r["catalogue"] for r in status_json(ctx.ledger.status(), file_states(ctx.ledger))}
    assert len(states) == len(paths)
    for path, cat in states.items():
        if "autoexpose" in path:
            assert cat["state"] == "excluded" and cat["pid"] is None
        else:
            assert cat["state"] == "catalogued" and cat["pid"] in report.catalogued.values()

    # a re-run (move and catalogue, as when a batch is delivered twice) adds nothing and, the ledger knowing
    # every scan catalogued as it is, asks the catalogue nothing
    before = len(backend.fake.requests) if backend.fake else 0
    assert len(move_files(ctx, paths).tiers["cfs"].skipped) == len(paths)
    again = catalogue_batch(ctx, paths)
    assert len(again.unchanged) == 6 and not again.catalogued and not again.pending
    assert backend.datasets() == 6 and backend.file_lists() == 6
    if backend.fake is not None:
        assert len(backend.fake.requests) == before


def test_a_moved_batch_on_postgres_and_sqlite_ledgers_records_catalogue_state(ctx: Context) -> None:
    paths = simulate(ctx.config, n=3, autoexpose_every=0)
    move_files(ctx, paths)
    report = catalogue_batch(ctx, paths)
    assert len(report.catalogued) == 3
    assert scan_counts(ctx.ledger) == {"catalogued": 3}
    states = file_states(ctx.ledger)
    assert {s.state for s in states.values()} == {"catalogued"} and len(states) == len(paths)
    assert len(ctx.ledger.events(kind=EventKind.CATALOGUED)) == len(paths)
    assert len(catalogue_batch(ctx, paths).unchanged) == 3
    assert len(ctx.ledger.events(kind=EventKind.CATALOGUED)) == len(paths)  # no new events for no change


# ---------------------------------------------------------------------------------------------- outage


def test_an_outage_leaves_transfers_verified_and_scans_pending_until_retry(
        scicat: tuple[Config, FakeSciCat], open_ctx: Callable[[Config], Context]) -> None:
    config, fake = scicat
    ctx = open_ctx(config)
    paths = simulate(config)
    move_files(ctx, paths)
    fake.fail_next(100_000)  # every request answers 503: SciCat is down

    report = catalogue_batch(ctx, paths)

    assert not report.failed
    assert len(report.pending) == 6 and report.unavailable is not None
    assert "unavailable" in report.unavailable and "503" in report.unavailable
    report.raise_for_failures()  # an outage is not a failure of the step
    # the adapter's retries were spent once, on the first scan; the others were queued without asking
    assert len(fake.requests) == 2
    assert fake.datasets == {}
    rows = status_json(ctx.ledger.status(), file_states(ctx.ledger))
    for row in rows:
        assert row["copies"]["lamarr"]["state"] == "verified" and row["copies"]["cfs"]["state"] == "verified"
        expected = "excluded" if "autoexpose" in row["path"] else "pending_catalogue"
        assert row["catalogue"]["state"] == expected
        if expected == "pending_catalogue":
            assert row["catalogue"]["error"] and row["catalogue"]["pid"] is None

    still = retry_pending(ctx)  # still down: nothing changes, one retry cycle spent
    assert len(still.pending) == 6 and not still.catalogued and len(fake.requests) == 4

    fake.clear_faults()  # SciCat is back
    retried = retry_pending(ctx)
    assert len(retried.catalogued) == 6 and not retried.pending and not retried.failed
    assert len(fake.datasets) == 6 and len(fake.origdatablocks) == 6 and len(fake.attachments) == 6
    assert scan_counts(ctx.ledger) == {"catalogued": 6, "excluded": 2}
    again = retry_pending(ctx)
    assert not again.catalogued and not again.pending
    assert len(catalogue_batch(ctx, paths).unchanged) == 6
    assert len(fake.datasets) == 6 and len(fake.origdatablocks) == 6


def test_pending_scans_are_retried_at_the_start_of_the_next_batch(
        scicat: tuple[Config, FakeSciCat], open_ctx: Callable[[Config], Context]) -> None:
    config, fake = scicat
    ctx = open_ctx(config)
    first = simulate(config, n=2, autoexpose_every=0, hi_lo_every=0)
    move_files(ctx, first)
    fake.fail_next(100_000)
    assert len(catalogue_batch(ctx, first).pending) == 2
    fake.clear_faults()
    second = simulate(config, n=1, autoexpose_every=0, hi_lo_every=0, seed=99, proposal="ALS-00623")
    move_files(ctx, second)
    report = catalogue_batch(ctx, second)
    assert report.retried is not None and len(report.retried.catalogued) == 2
    assert len(report.catalogued) == 1
    assert len(fake.datasets) == 3


def test_a_refused_scan_fails_loudly_and_the_rest_of_the_batch_goes_on(
        scicat: tuple[Config, FakeSciCat], open_ctx: Callable[[Config], Context]) -> None:
    config, fake = scicat
    ctx = open_ctx(config)
    paths = simulate(config, n=3, autoexpose_every=0)
    move_files(ctx, paths)
    fake.fail_next(1, status=400, method="POST", path=DATASETS)  # e.g. a field SciCat does not accept

    report = catalogue_batch(ctx, paths)

    assert len(report.failed) == 1 and len(report.catalogued) == 2
    [key] = report.failed
    with pytest.raises(BatchError) as raised:
        report.raise_for_failures()
    assert key in str(raised.value) and "HTTP 400" in str(raised.value)
    states = {s.scan_key: s for s in file_states(ctx.ledger).values()}
    assert states[key].state == "failed" and "HTTP 400" in (states[key].error or "")
    fake.violations.clear()  # the injected 400 is not a contract breach of ours
    assert not retry_pending(ctx).catalogued  # a refusal is not retried on its own...
    fixed = retry_pending(ctx, include_failed=True)  # ...only once someone says the cause is fixed
    assert list(fixed.catalogued) == [key] and len(fake.datasets) == 3


# ---------------------------------------------------------------------------------------------- batching


def test_a_scan_split_across_batches_waits_for_its_files_and_becomes_one_dataset(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    ctx = open_ctx(sqlite_config)
    paths = simulate(sqlite_config, n=3, autoexpose_every=0)
    hilo = [p for p in paths if "_hi_" in p or "_lo_" in p or p.endswith(".gb")]
    first = [p for p in paths if p not in hilo] + [p for p in hilo if "_hi_" in p]
    move_files(ctx, first)
    report = catalogue_batch(ctx, first)
    assert len(report.catalogued) == 2
    [(key, reason)] = report.pending.items()
    assert "waiting for 3 file(s) to be verified on cfs" in reason
    move_files(ctx, [p for p in hilo if "_hi_" not in p])
    later = catalogue_batch(ctx, [p for p in hilo if "_hi_" not in p])
    assert list(later.catalogued) == [key]
    entry = ctx.catalogue().find(key)
    assert entry is not None and len(entry.doc.files) == 5
    assert len(ctx.catalogue().search()) == 3


def test_a_scan_missing_its_sidecar_waits_for_the_settle_time_then_is_catalogued_with_the_error(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    waiting = sqlite_config.model_copy(update={"dataset": DatasetConfig(settle_seconds=3600)})
    ctx = open_ctx(waiting)
    paths = [p for p in simulate(waiting, n=1, autoexpose_every=0, hi_lo_every=0) if p.endswith(".edf")]
    (Path(waiting.tiers["data733"].root) / paths[0].replace(".edf", ".txt")).unlink()
    move_files(ctx, paths)
    [(key, reason)] = catalogue_batch(ctx, paths).pending.items()
    assert "waiting up to 3600 s" in reason and key + ".txt" in reason
    settled = open_ctx(sqlite_config.model_copy(update={"dataset": DatasetConfig(settle_seconds=0)}))
    assert list(retry_pending(settled).catalogued) == [key]
    entry = settled.catalogue().find(key)
    assert entry is not None and any("sidecar missing" in e for e in entry.doc.errors)


def test_no_catalogue_configured_records_the_step_as_not_run(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    ctx = open_ctx(sqlite_config.model_copy(update={"catalogue": NoCatalogueConfig(kind="none")}))
    paths = simulate(sqlite_config, n=1, autoexpose_every=0)
    move_files(ctx, paths)
    report = catalogue_batch(ctx, paths)
    assert report.not_run is not None and not report.catalogued
    [event] = ctx.ledger.events(kind=EventKind.STEP_NOT_RUN)
    assert event.detail["step"] == "catalogue" and "none" in event.detail["reason"]
    assert not Path(sqlite_config.catalogue_path()).exists()


# ---------------------------------------------------------------------------------------------- download


@pytest.fixture
def catalogued(sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> tuple[Context, str, list[str]]:
    """A site with one hi/lo scan catalogued: (context, pid, tier-relative paths of its files)."""
    ctx = open_ctx(sqlite_config)
    paths = simulate(sqlite_config, n=3, autoexpose_every=0)
    move_files(ctx, paths)
    report = catalogue_batch(ctx, paths)
    [key] = [k for k in report.catalogued if not k.endswith("_2m")]
    return ctx, report.catalogued[key], [p for p in paths if p.startswith(key)]


def test_download_is_byte_identical_and_prefers_the_first_tier(
        catalogued: tuple[Context, str, list[str]], tmp_path: Path) -> None:
    ctx, pid, paths = catalogued
    seen: list[int] = []
    report = download_dataset(ctx, pid, tmp_path / "mine", progress=lambda _n, b: seen.append(b))
    report.raise_for_failures()
    data733 = Path(ctx.config.tiers["data733"].root)
    assert sorted(f.name for f in report.files) == sorted(p.rsplit("/", 1)[1] for p in paths)
    for p in paths:
        assert (tmp_path / "mine" / p.rsplit("/", 1)[1]).read_bytes() == (data733 / p).read_bytes()
    assert {f.tier for f in report.files} == {"lamarr"} and sum(seen) == sum(f.size for f in report.files)
    again = download_dataset(ctx, pid, tmp_path / "mine")
    assert all(f.skipped for f in again.files)  # already there, verified, nothing rewritten


def test_download_passes_over_a_copy_that_no_longer_matches_the_ledger(
        catalogued: tuple[Context, str, list[str]], tmp_path: Path) -> None:
    ctx, pid, paths = catalogued
    victim = next(p for p in paths if p.endswith(".gb"))
    lamarr = Path(ctx.config.tiers["lamarr"].root) / victim
    data = bytearray(lamarr.read_bytes())
    data[100] ^= 0xFF  # same size, one flipped byte: only a checksum can tell
    lamarr.write_bytes(bytes(data))
    report = download_dataset(ctx, pid, tmp_path / "mine")
    report.raise_for_failures()
    name = victim.rsplit("/", 1)[1]
    assert next(f.tier for f in report.files if f.name == name) == "cfs"
    assert "lamarr" in report.notes[name][0]
    cfs = Path(ctx.config.tiers["cfs"].root) / victim
    assert (tmp_path / "mine" / name).read_bytes() == cfs.read_bytes()


def test_download_refuses_a_file_with_no_verified_copy(
        catalogued: tuple[Context, str, list[str]], tmp_path: Path) -> None:
    ctx, pid, paths = catalogued
    victim = next(p for p in paths if p.endswith(".gb"))
    for tier in ("data733", "lamarr", "cfs"):
        (Path(ctx.config.tiers[tier].root) / victim).unlink()
    report = download_dataset(ctx, pid, tmp_path / "mine")
    name = victim.rsplit("/", 1)[1]
    assert list(report.failed) == [name] and len(report.files) == 4
    message = str(report.failed[name])
    assert "no verified copy" in message and "lamarr: file missing" in message and victim in message
    assert not (tmp_path / "mine" / name).exists()
    with pytest.raises(BatchError, match="no verified copy"):
        report.raise_for_failures()


def test_a_file_rewritten_after_it_was_catalogued_updates_its_dataset_file_list(
        sqlite_config: Config, open_ctx: Callable[[Config], Context]) -> None:
    """Issue 9 item 6: the dataset's file list follows the new checksum; nothing fails, nothing is duplicated."""
    ctx = open_ctx(sqlite_config.model_copy(update={"dataset": DatasetConfig(settle_seconds=0)}))
    paths = simulate(sqlite_config, n=2, autoexpose_every=0, hi_lo_every=0)
    move_files(ctx, paths)
    assert len(catalogue_batch(ctx, paths).catalogued) == 2
    sidecar = Path(sqlite_config.tiers["data733"].root) / paths[1]
    old_sum = ctx.ledger.get_source("data733", paths[1]).checksum  # type: ignore[union-attr]
    sidecar.write_bytes(sidecar.read_bytes() + b"# edited afterwards\n")
    move_files(ctx, paths)  # the new version is moved and verified everywhere...
    report = catalogue_batch(ctx, paths)
    assert not report.failed  # ...and the catalogue step no longer fails the run
    [(key, pid)] = report.catalogued.items()
    assert paths[1].startswith(key)
    new_sum = ctx.ledger.get_source("data733", paths[1]).checksum  # type: ignore[union-attr]
    assert new_sum != old_sum
    listed = {f.path: f.chk for f in ctx.catalogue().get(pid).doc.files}
    assert listed[Path(paths[1]).name] == new_sum
    assert len(report.unchanged) == 1 and len(ctx.catalogue().search()) == 2
    changed = [e for e in ctx.ledger.events(path=paths[1], kind="source_changed")]
    assert changed and changed[-1].detail["old"]["checksum"] == old_sum  # the old checksum stays in the log
    assert not catalogue_batch(ctx, paths).catalogued  # idempotent: nothing more to update
