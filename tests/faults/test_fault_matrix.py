"""The fault matrix: for each fault, a burst of simulated 7.3.3 files (EDF + sidecars, hi/lo sets) written the
way the detector writes them into a site run by ``splash-flows up``'s processes; the fault at a random point
drawn from a printed seed; the operator's recovery (``reconcile``); then the audit: nothing lost, duplicated,
partial or wrongly deleted, and the ledger's event log says what happened. The table is printed at the end.

Replay one row: ``SPLASH_FAULT_SEED=<seed> SPLASH_FAULTS_ONLY=<fault> pytest tests/faults``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.conftest import CASES_PLANNED, FULL, RESULTS, SCANS, seeds, selected, write_results
from tests.faults.harness import Site, faults, run_fault

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(3600 if FULL else 900)]

#: Round by round (every fault with its first seed, then every fault with its second...), so a long run that is
#: stopped early still has a row for every fault.
_SEEDS = {name: seeds() for name in selected()}
CASES = [(name, _SEEDS[name][i]) for i in range(max(len(v) for v in _SEEDS.values())) for name in _SEEDS]
CASES_PLANNED[:] = CASES
DEADLINE_S = float(os.environ.get("SPLASH_FAULT_DEADLINE", 900.0 if FULL else 300.0))


@pytest.mark.parametrize(("name", "seed"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_fault(name: str, seed: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fault = faults()[name]
    site: Site = request.getfixturevalue("fault_site")
    index = len(RESULTS)
    out = run_fault(site, fault, seed, SCANS, tmp_path / "staging", index, DEADLINE_S)
    RESULTS.append(out)
    write_results()
    if out.skipped:
        pytest.skip(f"{name}: {out.skipped} ({'; '.join(site.notes)})")
    assert out.clean, (f"{name} (replay: SPLASH_FAULT_SEED={seed} SPLASH_FAULTS_ONLY={name}): lost {out.lost}, "
                       f"duplicated {out.duplicated}, partial {out.partial}, wrongly deleted {out.wrongly_deleted}; "
                       + "; ".join(out.problems[:10]) + f"\nsupervision: {site.supervision[-10:]}")
