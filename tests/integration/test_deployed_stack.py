"""The deployed stack with real processes: Prefect server (PostgreSQL), the project's init, process workers,
the in-process runner, crashes and a server outage. Files are triggered by deployment name, never run in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import InitReport, init_work_pools, server_healthy, trigger_deployment
from splash_flows.ledger import EventKind
from splash_flows.processes import Child, python_argv
from tests.integration.conftest import (
    PrefectServer,
    Site,
    descendants,
    installed_deployments,
    wait_final,
    worker_argv,
    write_like_a_detector,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Start = Callable[..., Child]


def _snapshot(api_url: str) -> dict[str, Any]:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        pools = {p.name: (p.type, p.concurrency_limit, p.id,
                          p.base_job_template["variables"]["properties"]["env"].get("default"))
                 for p in client.read_work_pools()}
        deps = {}
        for d in client.read_deployments():
            schedules = sorted((s.slug or "", str(s.schedule)) for s in d.schedules)
            deps[d.name] = (d.id, d.entrypoint, d.work_pool_name, d.parameters, schedules, d.pull_steps)
    return {"pools": pools, "deployments": deps}


def test_init_creates_pools_and_deployments_and_a_second_run_changes_nothing(
        prefect_server: PrefectServer, initialised: InitReport) -> None:
    before = _snapshot(prefect_server.api_url)
    assert {"dispatcher_733_pool", "new_file_733_pool", "prune_733_pool"} <= set(before["pools"])
    assert before["pools"]["prune_733_pool"][:2] == ("process", 1)
    assert before["pools"]["dispatcher_733_pool"][:2] == ("process", 4)
    dispatcher = before["deployments"]["run_733_dispatcher"]
    assert dispatcher[1:4] == ("splash_flows.flows.bl733.dispatcher.dispatcher", "dispatcher_733_pool",
                               {"config_path": None})
    # no clone or copy step: the worker imports the installed package
    assert dispatcher[5] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/"}}]
    assert before["pools"]["archive_733_pool"][:2] == ("process", 1)  # created by init, one run at a time
    assert before["deployments"]["archive_733"][4][0][0] == "archive-733-nightly"
    assert before["deployments"]["restore_drill_733"][4][0][0] == "restore-drill-733-weekly"
    if "prune_733" in before["deployments"]:
        assert before["deployments"]["prune_733"][4][0][0] == "prune-733-hourly"
    # every pool's flow-run processes heartbeat at the interval the zombie-run automation expects
    from splash_flows.flows.zombies import AUTOMATION_NAME, HEARTBEAT_ENV, HEARTBEAT_SECONDS

    assert initialised.automations == {AUTOMATION_NAME: "created"}
    assert {name: pool[3] for name, pool in before["pools"].items()} == {
        name: {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)} for name in before["pools"]}
    again = init_work_pools(prefect_server.api_url, names=installed_deployments())
    assert all(what.startswith("exists") for what in again.pools.values())
    assert again.automations == {AUTOMATION_NAME: "exists, as specified"}
    after = _snapshot(prefect_server.api_url)
    changed = {k: (before["deployments"].get(k), v) for k, v in after["deployments"].items()
               if before["deployments"].get(k) != v}
    assert changed == {}
    assert after == before
    # --preview against the same server says what exists, and changes nothing either
    from splash_flows.flows.deploy import preview

    seen = preview(api_url=prefect_server.api_url, names=installed_deployments())
    assert all(p["on_server"].startswith("exists") for p in seen["work_pools"])
    assert all(d["on_server"].startswith("exists") for d in seen["deployments"])
    assert [a["on_server"] for a in seen["automations"]] == ["exists, as specified; left as it is"]
    assert _snapshot(prefect_server.api_url) == before


def test_prefect_deploy_by_name_from_the_flows_folder(prefect_server: PrefectServer,
                                                      initialised: InitReport) -> None:
    """The seed's instruction, verbatim: from the folder holding prefect.yaml, deploy one by name."""
    from splash_flows.flows.deploy import BL733_DIR

    before = _snapshot(prefect_server.api_url)["deployments"]["run_733_dispatcher"]
    done = subprocess.run(python_argv("-m", "prefect", "--no-prompt", "deploy", "--name", "run_733_dispatcher"),
                          cwd=BL733_DIR, env=prefect_server.env(), capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _snapshot(prefect_server.api_url)["deployments"]["run_733_dispatcher"] == before


def test_files_written_like_a_detector_end_verified_through_a_process_worker(
        prefect_server: PrefectServer, initialised: InitReport, site: Site, start_process: Start,
        tmp_path: Path) -> None:
    start_process("worker", *worker_argv("dispatcher_733_pool", "it-dispatcher"))
    data = site.tier("data733")
    good = ["w1/scan 001.edf", "w1/scän_002.edf", "w1/empty.edf", "w1/scan_003.txt"]
    for i, rel in enumerate(good):
        write_like_a_detector(data / rel, 0 if "empty" in rel else 40_000 + i)
    (tmp_path / "outside.edf").write_bytes(b"o")
    os.symlink(tmp_path / "outside.edf", data / "w1/link-out.edf")
    bad = ["w1/link-out.edf", "w1/deleted-before-trigger.edf", "restricted/r.edf"]
    write_like_a_detector(data / "restricted/r.edf", 100)
    [bad_run] = trigger_deployment(prefect_server.api_url, [[good[0], *bad]])
    # the operator's way, as `splash-flows up` prints it
    cli = subprocess.run(python_argv("-m", "prefect", "deployment", "run", "dispatcher/run_733_dispatcher",
                                     "-p", f"paths={json.dumps(good)}"),
                         env=prefect_server.env(), capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    ok_run = re.search(r"UUID: ([0-9a-f-]{36})", cli.stdout).group(1)  # type: ignore[union-attr]
    states = wait_final(prefect_server.api_url, [ok_run, bad_run])
    assert states[ok_run].is_completed(), states[ok_run].message
    assert states[bad_run].is_failed()
    # the Failed state is one line: how many failed, the first cause, how many more (every cause is in the ledger)
    message = states[bad_run].message or ""
    reasons = ("w1/link-out.edf: resolves to", "deleted-before-trigger.edf: refused: file not found",
               "restricted/r.edf: refused: export-controlled")
    assert "\n" not in message and "(and 2 more)" in message and any(r in message for r in reasons), message
    site.wait_verified(good, timeout=10)
    for rel in good:
        for tier in ("lamarr", "cfs"):
            assert (site.tier(tier) / rel).read_bytes() == (data / rel).read_bytes()
    assert not (site.tier("cfs") / "restricted").exists()
    ledger = site.ledger()
    try:
        refused = {e.path for e in ledger.events(kind=EventKind.REFUSED)}
        assert set(bad) <= refused
    finally:
        ledger.close()


def test_worker_killed_mid_batch_then_reconcile_every_file_verified_once(
        prefect_server: PrefectServer, initialised: InitReport, site: Site, start_process: Start,
        short_zombie_window: int) -> None:
    data = site.tier("data733")
    paths = [f"k1/frame_{i:04d}.edf" for i in range(160)]
    for rel in paths:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(os.urandom(384_000))
    worker = start_process("worker", *worker_argv("dispatcher_733_pool", "it-doomed"))
    [run_id] = trigger_deployment(prefect_server.api_url, [paths])
    deadline = time.monotonic() + 120
    while True:  # wait until copies are being written, then kill the worker and its flow-run process
        written = [p for t in ("lamarr", "cfs") if (site.tier(t) / "k1").is_dir()
                   for p in (site.tier(t) / "k1").iterdir()]
        if len(written) >= 8:
            break
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.01)
    # The process worker starts each flow run in a session of its own: a kill -9 of the worker alone leaves the
    # run finishing as an orphan. A crash of the whole host (or an OOM kill of both) is the harder case: kill
    # the worker and the flow-run process it started.
    victims = [worker.pid, *descendants(worker.pid)]
    assert len(victims) >= 2, "no flow-run process found under the worker"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.popen.wait()
    time.sleep(1.0)
    after_kill = site.verified(paths)
    assert min(after_kill.values()) < len(paths), f"the batch finished before the kill: {after_kill}"

    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(prefect_server.api_url) as client:
        state = client.read_flow_run(UUID(run_id)).state
    assert state is not None and state.is_running()  # the server cannot know the process died (PREFECT.md)
    killed_at = time.monotonic()

    start_process("worker", *worker_argv("dispatcher_733_pool", "it-successor"))
    reconcile = subprocess.run(
        python_argv("-m", "splash_flows", "--config", str(site.config_path), "reconcile", "--min-age", "0",
                    "--prefix", "k1", "--batch-size", "100"),
        env=prefect_server.env(), capture_output=True, text=True, timeout=120, check=False)
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert "triggered" in reconcile.stdout
    site.wait_verified(paths, timeout=180)

    ledger = site.ledger()
    try:
        rows = [r for r in ledger.status(path_prefix="k1/")]
        assert sorted(r.path for r in rows) == paths  # one ledger row per file
        for r in rows:
            assert {t: c.state for t, c in r.copies.items()} == {"data733": "verified", "lamarr": "verified",
                                                                 "cfs": "verified"}
        copied = Counter((e.path, e.tier) for e in ledger.events(kind=EventKind.COPIED) if e.path in set(paths))
        assert max(copied.values()) == 1  # nothing was written twice
    finally:
        ledger.close()
    for tier in ("lamarr", "cfs"):
        leftovers = [p for p in (site.tier(tier) / "k1").iterdir() if ".splash-part-" in p.name]
        assert leftovers == [], f"partial copies left on {tier}: {leftovers[:3]}"
        for rel in paths[::40]:
            assert (site.tier(tier) / rel).read_bytes() == (data / rel).read_bytes()

    # The dead run does not hold its pool slot forever: the zombie-run automation marks it Crashed once no
    # heartbeat came for the window (short_zombie_window here; two minutes in production).
    [final] = wait_final(prefect_server.api_url, [run_id],
                         timeout=max(30.0, short_zombie_window + 90 - (time.monotonic() - killed_at))).values()
    assert final.is_crashed() and "its process is gone" in (final.message or ""), final


def test_the_stack_survives_a_prefect_server_outage(
        prefect_server: PrefectServer, initialised: InitReport, site: Site, start_process: Start) -> None:
    runner = start_process("runner", "-m", "splash_flows", "runner", "--limit", "2")
    worker = start_process("worker", *worker_argv("new_file_733_pool", "it-outage"))
    data = site.tier("data733")
    before = ["o1/before.edf"]
    write_like_a_detector(data / before[0], 10_000)
    trigger_deployment(prefect_server.api_url, [before])
    site.wait_verified(before)

    prefect_server.stop()
    assert not server_healthy(prefect_server.api_url)
    with pytest.raises(OrchestrationError, match=r"triggering dispatcher/run_733_dispatcher on http://127\.0\.0\.1"):
        trigger_deployment(prefect_server.api_url, [["o1/during.edf"]])
    time.sleep(5)
    assert runner.alive() and worker.alive()
    prefect_server.start()

    after = ["o1/after 1.edf", "o1/after 2.edf"]
    for rel in after:
        write_like_a_detector(data / rel, 20_000)
    d_run = trigger_deployment(prefect_server.api_url, [after[:1]])
    n_run = trigger_deployment(prefect_server.api_url, [after[1:]], deployment="new_file_733/new_file_733")
    states = wait_final(prefect_server.api_url, d_run + n_run, timeout=120)
    assert all(s.is_completed() for s in states.values()), {k: s.message for k, s in states.items()}
    site.wait_verified(after)
    assert runner.alive() and worker.alive()


def test_the_in_process_runner_serves_both_deployments_and_stops_cleanly(
        prefect_server: PrefectServer, initialised: InitReport, site: Site, start_process: Start) -> None:
    runner = start_process("runner", "-m", "splash_flows", "runner", "--limit", "3", "--poll", "0.3")
    data = site.tier("data733")
    batches = [[f"r1/a{i}.edf" for i in range(3)], [f"r1/b{i}.edf" for i in range(2)]]
    for rel in batches[0] + batches[1]:
        write_like_a_detector(data / rel, 5_000)
    runs = trigger_deployment(prefect_server.api_url, batches[:1])
    runs += trigger_deployment(prefect_server.api_url, batches[1:], deployment="new_file_733/new_file_733")
    states = wait_final(prefect_server.api_url, runs)
    assert all(s.is_completed() for s in states.values())
    site.wait_verified(batches[0] + batches[1], timeout=10)
    runner.signal_group(signal.SIGTERM)
    assert runner.popen.wait(timeout=60) == 0
    log = runner.log_path.read_text() if runner.log_path else ""
    for run_id in runs:
        assert f"claimed flow run {run_id}" in log
        # Completed, or CataloguePending (a Completed-type state): these test files have no sidecar yet
        assert re.search(rf"flow run {run_id} of \S+ finished: (Completed|CataloguePending)", log), log
    assert "runner stopped" in log


def test_the_watcher_drives_the_deployed_stack_and_survives_kill_9(
        prefect_server: PrefectServer, initialised: InitReport, site: Site, start_process: Start) -> None:
    """No manual trigger: the watcher sees files written like a detector and triggers run_733_dispatcher on the
    real server; a runner executes it. The watcher is killed with SIGKILL while files keep arriving and started
    again: every file ends verified on lamarr and cfs, and copied exactly once per tier."""
    start_process("runner", "-m", "splash_flows", "runner", "--limit", "2", "--poll", "0.3")
    watch_argv = ("-m", "splash_flows", "--config", str(site.config_path), "watch")
    watcher = start_process("watch", *watch_argv)
    data = site.tier("data733")
    first = [f"w1/scan_{i:02d} ü.edf" for i in range(4)]
    for rel in first:
        write_like_a_detector(data / rel, 40_000)
    site.wait_verified(first, timeout=120)

    later = [f"w2/scan_{i:02d}.edf" for i in range(8)]
    for i, rel in enumerate(later):
        write_like_a_detector(data / rel, 40_000, pause=0.05)
        if i == 3:
            watcher.popen.kill()  # SIGKILL mid-stream: no clean shutdown, no flush
            watcher.popen.wait(timeout=30)
    start_process("watch-again", *watch_argv)  # backfill + outbox replay find what the dead one missed
    site.wait_verified(first + later, timeout=180)

    ledger = site.ledger()
    try:
        copied = [(e.path, e.tier) for e in ledger.events(kind="copied") if e.path in set(first + later)]
    finally:
        ledger.close()
    assert sorted(copied) == sorted((p, t) for p in first + later for t in ("lamarr", "cfs"))
