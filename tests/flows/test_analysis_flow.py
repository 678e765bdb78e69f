"""The analysis in Prefect: the dispatcher analyses each batch after its move (and an analysis failure never
fails the move); ``analysis_733`` on its own waits for a calibration under a state that says so."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni
from splash_flows.config import default_config_data
from splash_flows.ledger import Ledger
from splash_flows.ledger import analysis as ledger_an

pytestmark = pytest.mark.prefect


def _site(tmp_path: Path, *, calibrate: bool = True, **analysis: Any) -> tuple[Path, Path, list[str]]:
    root = tmp_path / "site"
    data = default_config_data(root)
    data["analysis"] = {"enabled": True, "workers": 1, "npt": 300, "gi_npt": 64, **analysis}
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    written = simulate_acquisitions(root / "data733", 3, small=True, hi_lo_every=3,
                                    when=datetime(2026, 3, 1, 10, 0, 0), seed=5)
    paths = [p.relative_to(root / "data733").as_posix() for p in written]
    if calibrate:
        ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        try:
            ledger_an.add_calibration(ledger, simulated_poni(small=True), datetime(2026, 1, 1, tzinfo=UTC),
                                      source="agbh.poni")
        finally:
            ledger.close()
    return path, root, paths


def _verified(root: Path, tier: str, paths: list[str]) -> int:
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    try:
        return ledger.count_verified(tier, paths, "data733")
    finally:
        ledger.close()


def test_dispatcher_moves_then_analyses_and_moves_the_results_onward(prefect_harness: None,
                                                                      tmp_path: Path) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_file, root, paths = _site(tmp_path)
    state = dispatcher(paths=paths, config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["analysis"]["reduced"] == 3 and summary["analysis"]["catalogued"] == 3
    outputs = sorted(p.relative_to(root / "data733").as_posix() for p in (root / "data733").rglob("reduced/*"))
    assert len(outputs) >= 12 and all(p.endswith((".h5", ".dat", ".png")) for p in outputs)
    for tier in ("lamarr", "cfs"):
        assert _verified(root, tier, paths) == len(paths)
        assert _verified(root, tier, outputs) == len(outputs)  # moved onward like any file
    # the watcher would hand the outputs to the dispatcher again: moved (already there), never re-analysed
    again = dispatcher(paths=outputs, config_path=str(config_file), return_state=True)
    assert again.is_completed() and again.result()["analysis"] == {"skipped": "no raw frames in this batch"}


def test_a_failing_analysis_never_fails_the_move(prefect_harness: None, tmp_path: Path) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    config_file, root, paths = _site(tmp_path, mask_file=str(tmp_path / "no-such-mask.npy"))
    state = dispatcher(paths=paths, config_path=str(config_file), return_state=True)
    assert state.is_completed(), state.message  # the raw files are safe: the dispatch did its job
    summary = state.result()
    assert "failed" in summary["analysis"] and "no-such-mask.npy" in summary["analysis"]["failed"]
    for tier in ("lamarr", "cfs"):
        assert _verified(root, tier, paths) == len(paths)
    assert not list((root / "data733").rglob("reduced/*"))
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    try:
        assert {r.state for r in ledger_an.analyses(ledger)} == {"failed"}
    finally:
        ledger.close()


def test_analysis_flow_without_calibration_is_completed_as_calibration_pending(prefect_harness: None,
                                                                               tmp_path: Path) -> None:
    from splash_flows.flows.bl733.analysis import CALIBRATION_PENDING_STATE, analysis_733

    config_file, _root, paths = _site(tmp_path, calibrate=False)
    state = analysis_733(paths=paths, config_path=str(config_file), return_state=True)
    assert state.is_completed() and state.name == CALIBRATION_PENDING_STATE
    assert "calibration add" in (state.message or "")
    assert state.result()["pending_calibration"] == 3
