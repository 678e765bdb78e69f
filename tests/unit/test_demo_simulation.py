"""The demo's simulation thread (``cli.demo.Simulation``): what it writes, what it prepares, how it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from splash_flows.analysis.job import process_integrators
from splash_flows.analysis.reduce import Settings
from splash_flows.beamlines.bl733.simulator import simulate_acquisitions, simulated_poni
from splash_flows.cli.demo import Simulation, in_process_analysis
from splash_flows.config import load_config_file


def test_the_thread_writes_what_the_simulator_writes_and_prepares_the_geometry(tmp_path: Path) -> None:
    settings = Settings(npt=300, gi_npt=100).as_dict()
    simulation = Simulation(tmp_path / "thread", 3, small=True, prepare=settings)
    simulation.start()
    simulation.wait()
    direct = simulate_acquisitions(tmp_path / "direct", 3, small=True, hi_lo_every=3, first_sample="AgBh_cal")
    written = sorted(p.relative_to(tmp_path / "thread") for p in (tmp_path / "thread").rglob("*") if p.is_file())
    assert [p.name.split("_")[0] for p in written] == [
        p.name.split("_")[0] for p in sorted(q.relative_to(tmp_path / "direct") for q in direct)]
    assert len(written) == 9 and simulation.seconds > 0
    sizes = sorted(p.stat().st_size for p in (tmp_path / "thread").rglob("*.edf"))
    assert sizes == sorted(p.stat().st_size for p in direct if p.suffix == ".edf")
    # the geometry the flow will reduce with is built already: asking for it builds nothing
    integrators = process_integrators()
    built = integrators.built
    integrators.azimuthal(simulated_poni(True))
    integrators.positions(simulated_poni(True))
    assert integrators.built == built


def test_what_stops_the_thread_is_raised_by_wait(tmp_path: Path) -> None:
    simulation = Simulation(tmp_path, -1, small=True, prepare=None)  # the simulator refuses a negative count
    simulation.start()
    with pytest.raises(ValueError, match="n_scans"):
        simulation.wait()


def test_geometry_prepared_only_when_the_flow_reduces_in_this_process(tmp_path: Path) -> None:
    from splash_flows.cli.demo import write_demo_config

    config = load_config_file(write_demo_config(tmp_path, small=True))  # one worker: this process reduces
    settings = in_process_analysis(config)
    assert settings is not None and Settings.from_dict(settings) == Settings.from_config(config.analysis,
                                                                                      config.checksum)
    pool = config.model_copy(update={"analysis": config.analysis.model_copy(update={"workers": 2})})
    assert in_process_analysis(pool) is None  # a pool's workers prepare themselves
    off = config.model_copy(update={"analysis": config.analysis.model_copy(update={"enabled": False})})
    assert in_process_analysis(off) is None
