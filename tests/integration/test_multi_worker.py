"""More than one machine: two process workers, each with its own PREFECT_HOME (as two hosts would have), serve
the dispatcher pool of one PostgreSQL-backed Prefect server. A burst of small files is triggered in batches;
one worker is killed with SIGKILL (with the flow-run processes it started) in the middle of the burst. The
survivor finishes every run it can, ``reconcile`` re-sends what the dead host left, and then: every file is
verified exactly once on each target (one ledger copy row, at most one ``copied`` event, no partial file),
and no flow run was executed twice (at most one Running state in any run's history).

``make test`` runs 200 files; ``SPLASH_BURST_FILES=2000`` (``make bench-workers``) runs the full burst and
prints the timings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest

from splash_flows.flows.deploy import InitReport, trigger_deployment
from splash_flows.ledger import EventKind
from splash_flows.processes import Child, python_argv
from tests.integration.conftest import PrefectServer, Site, descendants, wait_final, worker_argv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

POOL = "dispatcher_733_pool"


def _states(api_url: str, run_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Run id -> (current state type, every state type in its history, oldest first)."""
    from prefect.client.orchestration import SyncPrefectClient

    out: dict[str, tuple[str, list[str]]] = {}
    with SyncPrefectClient(api_url) as client:
        for rid in run_ids:
            run = client.read_flow_run(UUID(rid))
            history = sorted(client.read_flow_run_states(UUID(rid)), key=lambda s: s.timestamp)
            out[rid] = (run.state.type.value if run.state else "NONE", [s.type.value for s in history])
    return out


def test_two_hosts_one_killed_mid_burst_every_file_verified_once(
        prefect_server: PrefectServer, initialised: InitReport, site: Site,
        start_process: Callable[..., Child], tmp_path: Path, short_zombie_window: int) -> None:
    n = int(os.environ.get("SPLASH_BURST_FILES", "200"))
    batch = max(10, n // 8)  # 8 runs: each host gets several, and a flow-run process start is paid 8 times
    data = site.tier("data733")
    paths = [f"mw{n}/b{i // 500:02d}/f_{i:05d}.edf" for i in range(n)]
    for rel in paths:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(os.urandom(4096))
    hosts = {name: start_process(f"worker-{name}", *worker_argv(POOL, f"it-host-{name}", limit=2),
                                 PREFECT_HOME=str(tmp_path / f"prefect-home-{name}")) for name in ("a", "b")}
    doomed, survivor = hosts["a"], hosts["b"]
    t0 = time.monotonic()
    run_ids = trigger_deployment(prefect_server.api_url, [paths[i:i + batch] for i in range(0, n, batch)])

    # Mid-burst, deterministically: host b has verified files, and host a has JUST started a flow-run process
    # (a process not seen before): it is still importing, so none of its run's files is copied yet.
    deadline = time.monotonic() + 300
    seen: set[int] = set(descendants(doomed.pid))
    while True:
        verified = min(site.verified(paths).values())
        new = set(descendants(doomed.pid)) - seen
        if new and 0 < verified < n:
            break
        seen |= new
        assert verified < n, "the burst finished before host a could be killed"
        assert time.monotonic() < deadline, "host a never started a run"
        time.sleep(0.02)
    victims = [doomed.pid, *descendants(doomed.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    doomed.popen.wait()
    killed_at = time.monotonic()

    # Nobody tells the server: the zombie-run automation (made by init-work-pools; window cut to
    # short_zombie_window here) marks host a's run Crashed once it has been silent that long, which frees its
    # pool slot; the survivor executes every other run meanwhile.
    states = wait_final(prefect_server.api_url, run_ids, timeout=short_zombie_window + 600)
    stranded = [rid for rid, st in states.items() if st.is_crashed()]
    assert stranded, "no run was left on the killed host: it was killed between runs"
    assert all("its process is gone" in (states[rid].message or "") for rid in stranded), states
    survivor_done = time.monotonic()
    assert survivor.alive(), "the surviving host's worker died too"

    reconcile = subprocess.run(
        python_argv("-m", "splash_flows", "--config", str(site.config_path), "reconcile", "--min-age", "0",
                    "--prefix", f"mw{n}", "--batch-size", str(batch), "--json"),
        env=prefect_server.env(), capture_output=True, text=True, timeout=300, check=False)
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    import json

    plan = json.loads(reconcile.stdout)
    assert plan["to_send"] and plan["flow_runs"]
    site.wait_verified(paths, timeout=max(300, n / 2))
    recovered = time.monotonic()
    later = plan["flow_runs"]
    assert all(s.is_completed() for s in wait_final(prefect_server.api_url, later, timeout=300).values())

    # no run executed twice: at most one Running state in any history; the stranded runs were never taken over
    histories = _states(prefect_server.api_url, run_ids + later)
    assert all(h.count("RUNNING") <= 1 for _, h in histories.values()), histories
    assert all(histories[rid][0] == "CRASHED" for rid in stranded)  # never taken over by the survivor
    assert all(histories[rid][0] == "COMPLETED" for rid in run_ids + later if rid not in stranded)

    ledger = site.ledger()
    try:
        rows = ledger.status(path_prefix=f"mw{n}/")
        assert sorted(r.path for r in rows) == sorted(paths)  # one ledger row per file
        for r in rows:
            assert {t: c.state for t, c in r.copies.items()} == {"data733": "verified", "lamarr": "verified",
                                                                 "cfs": "verified"}
        wanted = set(paths)
        copied = Counter((e.path, e.tier) for e in ledger.events(kind=EventKind.COPIED) if e.path in wanted)
        skipped = Counter((e.path, e.tier) for e in ledger.events(kind=EventKind.SKIPPED) if e.path in wanted)
        assert max(copied.values()) == 1  # nothing was written twice
        assert set(copied) | set(skipped) == {(p, t) for p in paths for t in ("lamarr", "cfs")}
    finally:
        ledger.close()
    for tier in ("lamarr", "cfs"):
        on_disk = [p for p in (site.tier(tier) / f"mw{n}").rglob("*") if p.is_file()]
        assert not [p for p in on_disk if ".splash-part-" in p.name], f"partial copies left on {tier}"
        assert len(on_disk) == n
        for rel in paths[:: max(1, n // 20)]:
            assert (site.tier(tier) / rel).read_bytes() == (data / rel).read_bytes()
    print(f"\n{n} files in {len(run_ids)} runs over 2 process workers; host a killed after "
          f"{killed_at - t0:.1f} s with {len(stranded)} run(s) in flight; survivor settled after "
          f"{survivor_done - killed_at:.1f} s; reconcile re-sent {len(plan['to_send'])} file(s) in {len(later)} "
          f"run(s), all verified {recovered - survivor_done:.1f} s later; total {recovered - t0:.1f} s "
          f"(load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
