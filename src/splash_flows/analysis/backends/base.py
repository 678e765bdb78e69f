"""The port between the analysis service and the places a reduction runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from splash_flows.analysis.job import ScanJob, ScanOutcome
from splash_flows.analysis.reduce import Settings

#: Called once per scan as its outcome is known.
ProgressFn = Callable[[ScanOutcome], None]


class AnalysisBackend(Protocol):
    """Runs ``ScanJob``s whose files are on the move source tier (data733) and returns one outcome per job, in
    order. When ``run`` returns, the outputs of every successful outcome are on the source tier at the paths
    the outcome lists, with the sizes and checksums it lists (verified when they were copied there). A failure
    of one scan is its outcome; a failure of the whole backend (job refused, FAILED, TIMEOUT) raises a typed
    error naming the cause."""

    name: str

    def run(self, jobs: Sequence[ScanJob], settings: Settings, progress: ProgressFn | None = None) -> list[ScanOutcome]:
        ...
