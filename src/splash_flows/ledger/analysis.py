"""Ledger queries of the analysis: calibrations (valid per time range) and the reduction state of each scan.

A calibration is valid from its ``valid_from`` until the next one starts: ``calibration_at(t)`` is the latest
one with ``valid_from <= t``, and there is none before the first (a frame then waits, it is never guessed).
A scan's reduction state and its event are written in one transaction, like every other ledger write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from splash_flows.errors import LedgerError
from splash_flows.ledger import reads
from splash_flows.ledger.models import AnalysisScan, AnalysisState, Calibration, Event, EventKind, utcnow
from splash_flows.ledger.store import Ledger

_EVENT_OF_STATE = {
    AnalysisState.REDUCED: EventKind.ANALYSED,
    AnalysisState.PENDING_CALIBRATION: EventKind.ANALYSIS_PENDING,
    AnalysisState.FAILED: EventKind.ANALYSIS_FAILED,
}


@dataclass(frozen=True)
class CalibrationRecord:
    """One calibration: its PONI text and the time from which it applies."""

    id: int
    valid_from: datetime
    poni: str
    poni_sha256: str
    source: str
    note: str | None
    added_at: datetime

    @property
    def label(self) -> str:
        """How outputs and the catalogue name it: ``#id from <UTC time> (<file>)``."""
        return f"#{self.id} from {self.valid_from.isoformat()} ({self.source})"


@dataclass(frozen=True)
class AnalysisRecord:
    """One row of ``analysis_scans``."""

    source_tier: str
    scan_key: str
    state: str
    acquired_at: datetime | None
    calibration_id: int | None
    backend: str | None
    merge: str | None
    results_folder: str | None
    outputs: list[Any]
    parameters: dict[str, Any]
    pid: str | None
    catalogue_error: str | None
    error: str | None
    attempts: int
    updated_at: datetime


def _calibration(row: Calibration) -> CalibrationRecord:
    return CalibrationRecord(row.id, row.valid_from, row.poni, row.poni_sha256, row.source, row.note, row.added_at)


def _record(row: AnalysisScan) -> AnalysisRecord:
    return AnalysisRecord(row.source_tier, row.scan_key, row.state, row.acquired_at, row.calibration_id, row.backend,
                          row.merge, row.results_folder, list(row.outputs or []), dict(row.parameters or {}),
                          row.pid, row.catalogue_error, row.error, row.attempts, row.updated_at)


def add_calibration(ledger: Ledger, poni: str, valid_from: datetime, *, source: str,
                    note: str | None = None) -> tuple[CalibrationRecord, bool]:
    """Record a calibration starting at ``valid_from`` (aware). Returns it and whether it is new: adding the same
    PONI with the same start again changes nothing; a different PONI with the same start is refused."""
    digest = hashlib.sha256(poni.encode("utf-8")).hexdigest()
    with ledger.session() as sess:
        existing = sess.scalars(select(Calibration).where(Calibration.valid_from == valid_from)).first()
        if existing is not None:
            if existing.poni_sha256 != digest:
                raise LedgerError(f"a different calibration already starts at {valid_from.isoformat()} "
                                  f"(#{existing.id}, {existing.source}); calibrations are history and are never "
                                  "replaced: give the new one a later --from")
            return _calibration(existing), False
    try:
        with ledger.session() as sess:
            row = Calibration(valid_from=valid_from, poni=poni, poni_sha256=digest, source=source, note=note,
                              added_at=utcnow())
            sess.add(row)
            sess.flush()
            sess.add(Event(kind="calibration_added", path=source,
                           detail={"calibration": row.id, "valid_from": valid_from.isoformat(), "sha256": digest}))
            return _calibration(row), True
    except IntegrityError:  # another process added it at the same moment
        return add_calibration(ledger, poni, valid_from, source=source, note=note)


def calibrations(ledger: Ledger) -> list[CalibrationRecord]:
    """Every calibration, oldest start first."""
    with ledger.session() as sess:
        return [_calibration(r) for r in sess.scalars(select(Calibration).order_by(Calibration.valid_from))]


def calibration_at(ledger: Ledger, when: datetime) -> CalibrationRecord | None:
    """The calibration valid at ``when``: the latest one starting at or before it, or None."""
    with ledger.session() as sess:
        row = sess.scalars(select(Calibration).where(Calibration.valid_from <= when)
                           .order_by(Calibration.valid_from.desc()).limit(1)).first()
        return None if row is None else _calibration(row)


def calibration(ledger: Ledger, calibration_id: int) -> CalibrationRecord | None:
    """The calibration with this id, or None."""
    with ledger.session() as sess:
        row = sess.get(Calibration, calibration_id)
        return None if row is None else _calibration(row)


def record_analysis(ledger: Ledger, source_tier: str, scan_key: str, state: AnalysisState, *,
                    acquired_at: datetime | None = None, calibration_id: int | None = None,
                    backend: str | None = None, merge: str | None = None, results_folder: str | None = None,
                    outputs: Sequence[Any] = (), parameters: dict[str, Any] | None = None,
                    error: str | None = None) -> None:
    """Set a scan's reduction state (and log one event when the state or error changed)."""
    ledger._retry_on_conflict(_record_analysis, ledger, source_tier, scan_key, state, acquired_at, calibration_id,
                              backend, merge, results_folder, list(outputs), parameters, error)


def _record_analysis(ledger: Ledger, source_tier: str, scan_key: str, state: AnalysisState,
                     acquired_at: datetime | None, calibration_id: int | None, backend: str | None,
                     merge: str | None, results_folder: str | None, outputs: list[Any],
                     parameters: dict[str, Any] | None, error: str | None) -> None:
    now = utcnow()
    with ledger.session() as sess:
        row = sess.scalars(select(AnalysisScan).where(AnalysisScan.source_tier == source_tier,
                                                      AnalysisScan.scan_key == scan_key)).first()
        changed = row is None or (row.state, row.error) != (str(state), error) or state == AnalysisState.REDUCED
        if row is None:
            row = AnalysisScan(source_tier=source_tier, scan_key=scan_key, state=state, outputs=[], parameters={},
                               attempts=0, updated_at=now)
            sess.add(row)
        row.state, row.error, row.updated_at = state, error, now
        row.attempts = (row.attempts or 0) + 1
        if acquired_at is not None:
            row.acquired_at = acquired_at
        if state == AnalysisState.REDUCED:
            row.calibration_id, row.backend, row.merge = calibration_id, backend, merge
            row.results_folder, row.outputs, row.parameters = results_folder, outputs, dict(parameters or {})
        if changed:
            detail: dict[str, Any] = {"scan": scan_key, "state": str(state)}
            if error is not None:
                detail["reason"] = error
            if state == AnalysisState.REDUCED:
                detail.update({"outputs": [o["path"] if isinstance(o, dict) else o for o in outputs],
                               "calibration": calibration_id, "backend": backend, "merge": merge})
            sess.add(Event(kind=_EVENT_OF_STATE[state], path=scan_key, tier=source_tier, detail=detail, at=now))


def record_derived(ledger: Ledger, source_tier: str, scan_key: str, *, pid: str | None,
                   error: str | None = None) -> None:
    """Note the derived dataset of a reduced scan (or why it is not catalogued yet)."""
    with ledger.session() as sess:
        row = sess.scalars(select(AnalysisScan).where(AnalysisScan.source_tier == source_tier,
                                                      AnalysisScan.scan_key == scan_key)).first()
        if row is None:
            raise LedgerError(f"scan {scan_key} has no analysis record")
        row.pid, row.catalogue_error, row.updated_at = pid, error, utcnow()


def get_analysis(ledger: Ledger, source_tier: str, scan_key: str) -> AnalysisRecord | None:
    """The reduction record of a scan, or None."""
    with ledger.session() as sess:
        row = sess.scalars(select(AnalysisScan).where(AnalysisScan.source_tier == source_tier,
                                                      AnalysisScan.scan_key == scan_key)).first()
        return None if row is None else _record(row)


def analyses(ledger: Ledger, *, states: Sequence[str] | None = None, source_tier: str | None = None,
             key_prefix: str | None = None) -> list[AnalysisRecord]:
    """Reduction records (of these states / this tier / keys starting with ``key_prefix``), by scan key."""
    with ledger.session() as sess:
        q = select(AnalysisScan).order_by(AnalysisScan.scan_key)
        if states:
            q = q.where(AnalysisScan.state.in_(list(states)))
        if source_tier:
            q = q.where(AnalysisScan.source_tier == source_tier)
        if key_prefix:
            q = q.where(AnalysisScan.scan_key.startswith(key_prefix, autoescape=True))
        return [_record(r) for r in sess.scalars(q)]


def analysis_counts(ledger: Ledger) -> dict[str, int]:
    """Number of scans per reduction state (``reads.analysis_counts``, the query ``status`` runs too)."""
    with ledger.reader() as reader:
        return reads.analysis_counts(reader)
