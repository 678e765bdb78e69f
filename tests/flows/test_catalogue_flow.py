"""The catalogue step inside ``new_file_733`` (in-process Prefect): how its outcome shows on the run.

* catalogued -> Completed;
* SciCat down -> the transfers stand and the run is Completed under the name ``CataloguePending`` (the choice
  documented in services/catalogue.py), the scans are ``pending_catalogue`` in the ledger, and a later
  ``retry_pending`` catalogues them once;
* SciCat refuses a scan (4xx) -> the run is Failed naming the scan and the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import build_context
from splash_flows.ledger.catalogue import file_states
from splash_flows.services.catalogue import retry_pending
from tests.fakes.scicat_server import FakeSciCat, iter_violations

pytestmark = pytest.mark.prefect

PASSWORD_VAR = "SPLASH_TEST_SCICAT_PASSWORD"


def site(tmp_path: Path, catalogue: dict[str, Any] | None = None) -> tuple[Path, list[str]]:
    """A config file (embedded default, or ``catalogue``) and three simulated scans (one hi/lo) on data733."""
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    if catalogue is not None:
        data["catalogue"] = catalogue
        data["dataset"] = {"contact_email": "bl733@example.org", "source_folder_host": "bl733-data.als.example.org"}
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    root = Path(data["tiers"]["data733"]["root"])
    written = simulate_acquisitions(root, 3, small=True, hi_lo_every=3, proposal="ALS-00622", seed=3)
    return path, [p.relative_to(root).as_posix() for p in written]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSciCat]:
    with FakeSciCat() as server:
        monkeypatch.setenv(PASSWORD_VAR, server.users["ingestor"])  # the config says ${SPLASH_TEST_...}
        yield server


def scicat_section(fake: FakeSciCat) -> dict[str, Any]:
    return {"kind": "scicat", "url": fake.url, "username": "ingestor", "password": f"${{{PASSWORD_VAR}}}",
            "retry": {"max_attempts": 2, "backoff_base": 0.0}, "admin_groups": ["ingestor"]}


def test_catalogued_batch_completes_with_one_dataset_per_scan(prefect_harness: None, tmp_path: Path) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_path, paths = site(tmp_path)
    state = dispatcher(paths=paths, config_path=str(config_path), return_state=True)
    assert state.is_completed() and state.name == "Completed", state.message
    assert state.result()["catalogue"]["catalogued"] == 3
    ctx = build_context(load_config_file(config_path))
    try:
        assert len(ctx.catalogue().search(proposal="ALS-00622")) == 3
    finally:
        ctx.close()


def test_an_outage_completes_the_run_as_catalogue_pending_and_loses_nothing(
        prefect_harness: None, tmp_path: Path, fake: FakeSciCat, caplog: pytest.LogCaptureFixture) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_path, paths = site(tmp_path, scicat_section(fake))
    fake.fail_next(100_000)
    with caplog.at_level(logging.WARNING):
        state = dispatcher(paths=paths, config_path=str(config_path), return_state=True)

    assert state.is_completed() and state.name == "CataloguePending"  # on the dispatcher, as on new_file_733
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("catalogue PENDING for 3 scan(s)" in m for m in warnings), warnings
    assert "transfers verified; catalogue pending for 3 scan(s)" in (state.message or "")
    summary = state.result()
    assert summary["tiers"] == {"lamarr": {"copied": 9, "skipped": 0}, "cfs": {"copied": 9, "skipped": 0}}
    assert summary["catalogue"]["pending"] == 3
    ctx = build_context(load_config_file(config_path))
    try:
        rows = ctx.ledger.status()
        assert all(r.copies["cfs"].state == "verified" and r.copies["lamarr"].state == "verified" for r in rows)
        assert {s.state for s in file_states(ctx.ledger).values()} == {"pending_catalogue"}
        fake.clear_faults()
        assert len(retry_pending(ctx).catalogued) == 3
        assert len(fake.datasets) == 3 and len(fake.origdatablocks) == 3
    finally:
        ctx.close()
    assert not fake.violations, "\n".join(iter_violations(fake))


def test_a_refused_scan_fails_the_run_naming_it(prefect_harness: None, tmp_path: Path, fake: FakeSciCat) -> None:
    from splash_flows.flows.bl733.move import new_file_733

    config_path, paths = site(tmp_path, scicat_section(fake))
    fake.fail_next(1, status=400, method="POST", path="/api/v4/datasets")
    state = new_file_733(paths=paths, config_path=str(config_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"(?s)scan ALS-00622/\S+.*HTTP 400") as raised:
        state.result()
    assert "1 of" in str(raised.value)
    assert len(fake.datasets) == 2  # the rest of the batch was catalogued
    root = tmp_path / "site"
    assert all((root / "cfs" / p).read_bytes() == (root / "data733" / p).read_bytes() for p in paths)


def test_the_clock_flow_catalogues_a_scan_whose_sidecar_wait_ended(prefect_harness: None, tmp_path: Path) -> None:
    """Issue 9 item 4: ``catalogue_retry_733`` (deployed every minute) finishes a waiting scan by itself."""
    from splash_flows.flows.bl733.catalogue import catalogue_retry_733
    from splash_flows.services.catalogue import catalogue_batch
    from splash_flows.services.move import move_files

    cfg_path, paths = site(tmp_path)
    data = yaml.safe_load(cfg_path.read_text())
    data["dataset"] = {"settle_seconds": 3600}
    cfg_path.write_text(yaml.safe_dump(data))
    root = Path(data["tiers"]["data733"]["root"])
    single = next(p for p in paths if p.endswith("_2m.txt") and "_hi_" not in p and "_lo_" not in p)
    (root / single).unlink()  # its sidecar never comes
    paths.remove(single)
    ctx = build_context(load_config_file(cfg_path))
    try:
        move_files(ctx, paths).raise_for_failures()
        assert catalogue_batch(ctx, paths).pending  # waiting for the sidecar
        data["dataset"] = {"settle_seconds": 0}  # ... until its wait ends (as if an hour had passed)
        cfg_path.write_text(yaml.safe_dump(data))
        state = catalogue_retry_733(config_path=str(cfg_path), return_state=True)
        assert state.is_completed() and state.name == "Completed", state.message
        key = single.removesuffix(".txt")
        entry = ctx.catalogue().find(key)
        assert entry is not None and any("sidecar missing" in e for e in entry.doc.errors)
        assert {s.state for s in file_states(ctx.ledger).values()} == {"catalogued"}
    finally:
        ctx.close()
