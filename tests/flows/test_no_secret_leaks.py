"""Secrets never leak from the flows or the watcher (issue 13 item 3): with every secret of the configuration a
unique marker (tests/support/leaks.py), the dispatcher runs (a good run and a failing one), the watcher triggers,
adapters fail to log in or connect -- and no marker may be in a Prefect flow-run parameter, state message or log,
a log file, an exception message, a ledger row or a SciCat record."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.config import load_config_file
from splash_flows.context import build_catalogue, build_context
from splash_flows.errors import SplashFlowsError
from splash_flows.ledger import Ledger
from tests.support.leaks import ENV, MARKERS, Leaks, SecretSite, gather_ledger, secret_site
from tests.support.postgres import PostgresServer
from tests.support.watching import wait_for


@pytest.fixture
def site(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[SecretSite]:
    with secret_site(tmp_path, postgres_server) as made:
        yield made


class _File(logging.FileHandler):
    pass


@pytest.mark.prefect
def test_flows_and_the_watcher_never_leak_a_secret(site: SecretSite, prefect_harness: None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    from splash_flows.flows.bl733.dispatcher import dispatcher
    from splash_flows.flows.trigger import PrefectDeploymentTrigger
    from splash_flows.ledger.outbox import Outbox
    from splash_flows.watcher import Watcher

    for name, marker in MARKERS.items():  # the flows read the configuration in this process
        monkeypatch.setenv(name, marker)
    leaks = Leaks()
    log_file = tmp_path / "everything.log"
    handler = _File(log_file)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    config_path = str(site.config_file)
    config = load_config_file(site.config_file, ENV)
    source = Path(config.tiers["data733"].root)
    try:
        # a good run: moved, verified, catalogued in SciCat
        first = [p.relative_to(source).as_posix() for p in simulate_acquisitions(source, 2, small=True, seed=1)]
        dispatcher(paths=first, config_path=config_path)
        assert len(site.fake.datasets) == 2
        # a failing run: SciCat refuses every token; the run fails naming the scans
        site.fake.reject_all_tokens = True
        later = [p.relative_to(source).as_posix() for p in
                 simulate_acquisitions(source, 1, small=True, seed=2, proposal="ALS-11234")]
        with pytest.raises(BaseException) as failed:  # the flow's own failure, whatever its type
            dispatcher(paths=[*later, "../escape.edf"], config_path=config_path)
        leaks.add_error("the failed dispatcher run", failed.value)
        site.fake.reject_all_tokens = False
        # exceptions: a wrong SciCat password, an unreachable ledger
        catalogue = build_catalogue(config.model_copy(update={"catalogue": config.catalogue.model_copy(
            update={"username": "nobody-here"})}))
        with pytest.raises(SplashFlowsError) as login:
            catalogue.search()
        leaks.add_error("SciCat login refused", login.value)
        unreachable = site.ledger_url.replace("@127.0.0.1:", "@127.0.0.1:1")
        with pytest.raises(SplashFlowsError) as ledger_down:
            Ledger.open(unreachable)
        leaks.add_error("ledger unreachable", ledger_down.value)
        ctx = build_context(config)
        leaks.add("repr of the context's catalogue", repr(ctx.catalogue()))
        ctx.close()
        # the watcher, triggering a deployment that does not exist on the server (so it logs and keeps the outbox)
        ledger = Ledger.open(site.ledger_url)
        watcher = Watcher(config, ledger, PrefectDeploymentTrigger("dispatcher/run_733_dispatcher", config_path))
        watcher.start()
        try:
            (source / "watched").mkdir()
            (source / "watched" / "frame_0001_2m.edf").write_bytes(b"frame")
            wait_for(lambda: any(e.attempts for e in Outbox(ledger).entries()) or None,
                     "the watcher to try the trigger", timeout=60)
        finally:
            watcher.stop()
            ledger.close()
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        handler.close()

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        assert runs
        for run in runs:
            leaks.add(f"parameters of flow run {run.name}", run.parameters)
            leaks.add(f"state of flow run {run.name}", f"{run.state_name}: {run.state.message if run.state else ''}")
        for log in client.read_logs():
            leaks.add("a Prefect log", log.message)
    leaks.add("the log file", log_file.read_text(encoding="utf-8", errors="replace"))
    assert "SciCat" in log_file.read_text(encoding="utf-8", errors="replace")  # the log did capture the work
    for pid, dataset in site.fake.datasets.items():
        leaks.add(f"SciCat dataset {pid}", dataset)
    leaks.add("requests SciCat received", [(r.method, r.path, r.query, r.body) for r in site.fake.requests
                                           if r.path != "/api/v3/auth/login"])
    gather_ledger(leaks, site.ledger_url)
    leaks.check()
