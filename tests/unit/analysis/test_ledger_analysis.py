"""Calibrations per time range and the reduction state of scans in the ledger (both backends), and migration
0003_analysis up and down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command

from splash_flows.errors import LedgerError
from splash_flows.ledger import EventKind, Ledger
from splash_flows.ledger import analysis as la
from splash_flows.ledger.models import AnalysisState

JAN = datetime(2026, 1, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


def test_calibration_applies_from_its_start_until_the_next(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        assert la.calibration_at(ledger, MAR) is None  # nothing recorded: never guessed
        first, new = la.add_calibration(ledger, "Distance: 1\n", JAN, source="jan.poni")
        assert new
        assert la.add_calibration(ledger, "Distance: 1\n", JAN, source="again.poni") == (first, False)
        with pytest.raises(LedgerError, match="never replaced"):
            la.add_calibration(ledger, "Distance: 2\n", JAN, source="other.poni")
        second, _ = la.add_calibration(ledger, "Distance: 2\n", MAR, source="mar.poni")
        assert la.calibration_at(ledger, datetime(2025, 12, 31, tzinfo=UTC)) is None
        assert la.calibration_at(ledger, JAN) == first
        assert la.calibration_at(ledger, datetime(2026, 2, 28, tzinfo=UTC)) == first
        assert la.calibration_at(ledger, MAR) == second
        assert [c.id for c in la.calibrations(ledger)] == [first.id, second.id]
    finally:
        ledger.close()


def test_reduction_state_and_events(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        la.record_analysis(ledger, "data733", "p/s1", AnalysisState.PENDING_CALIBRATION, acquired_at=MAR,
                           error="no calibration")
        la.record_analysis(ledger, "data733", "p/s1", AnalysisState.PENDING_CALIBRATION, error="no calibration")
        calib, _ = la.add_calibration(ledger, "Distance: 1\n", JAN, source="jan.poni")
        la.record_analysis(ledger, "data733", "p/s1", AnalysisState.REDUCED, calibration_id=calib.id,
                           backend="local", merge="gb", results_folder="p/reduced",
                           outputs=[{"path": "p/reduced/s1.h5", "size": 1, "checksum": "c"}])
        la.record_derived(ledger, "data733", "p/s1", pid="embedded/1")
        record = la.get_analysis(ledger, "data733", "p/s1")
        assert record is not None and record.state == AnalysisState.REDUCED and record.pid == "embedded/1"
        assert record.acquired_at == MAR and record.merge == "gb" and record.attempts == 3
        assert la.analysis_counts(ledger) == {"reduced": 1}
        kinds = [e.kind for e in ledger.events() if e.path == "p/s1"]
        assert kinds.count(EventKind.ANALYSIS_PENDING) == 1 and kinds.count(EventKind.ANALYSED) == 1
    finally:
        ledger.close()


def test_migration_0003_up_and_down(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url, upgrade=False)
    cfg = ledger._alembic_config()
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002_prune")
    assert ledger.upgrade() == ledger.head_revision()
    la.add_calibration(ledger, "Distance: 1\n", JAN, source="jan.poni")
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002_prune")
    assert ledger.current_revision() == "0002_prune"
    ledger.close()
