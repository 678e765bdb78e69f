"""The fault matrix's machinery: one site run by ``splash-flows up``'s processes (``LocalStack``), a detector-like
burst of 7.3.3 files, a fault injected at a seeded random point, the operator's recovery, and an audit.

The site, as production has it: the source tier ``data733`` is a mount of the acquisition disk (a bind mount of
``disk733``, where the "detector" writes), ``cfs`` is a size-capped tmpfs (so it can fill up), the ledger is a
PostgreSQL server of its own (so it can be killed), the catalogue is the fake SciCat server (so it can fail).
Each fault works in a proposal folder of its own, so one stack serves the whole matrix.

The audit reads the disks, the ledger and the catalogue, never Prefect's run states:

- lost: a written file not verified on every target, or whose bytes there are not the detector's;
- duplicated: more than one ledger row for a path or a copy, more than one dataset for a scan, a stray file;
- partial: a file under a final name whose bytes differ from the detector's (``.part`` leftovers are counted
  apart: they are never under a final name);
- wrongly deleted: a file gone from data733 without a ``pruned`` event, a deletion the policy did not allow at
  the true time, or a deletion that relied on a copy found bad.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.checksum import new_hasher
from splash_flows.cli.up import LocalStack
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import Context, build_context
from splash_flows.errors import PruneRefused
from splash_flows.ledger.models import CatalogueScan, Copy, CopyState, Event, EventKind, SourceFile
from splash_flows.processes import ChildFailed, free_port
from tests.fakes.scicat_server import FakeSciCat
from tests.support.postgres import PostgresServer

FAULTS = ["kill_watcher", "kill_runner", "kill_worker", "kill_prefect_server", "kill_postgres", "enospc",
          "catalogue_outage", "bit_flip", "clock_jump", "source_unmounted"]
PASSWORD_VAR = "SPLASH_FAULTS_SCICAT_PASSWORD"
TARGETS = ("lamarr", "cfs")
CFS_SIZE = "512m"
#: The pool of ``run_733_dispatcher`` (the move runs inside it): the only pool the burst uses, so kill_worker
#: starts a process worker for it alone (`up --workers` starts one per pool; the idle ones add only start-up).
WORKER_POOL = "dispatcher_733_pool"
#: How often the operator's ``reconcile`` runs while the matrix waits for a fault's burst to be safe.
RECONCILE_EVERY_S = 5.0
DISPATCHER = "dispatcher/run_733_dispatcher"


def say(text: str) -> None:
    """Progress on the terminal even under pytest's capture (the seed must be seen when a run hangs)."""
    with open("/dev/tty", "w") if os.path.exists("/dev/tty") and os.isatty(0) else contextlib.nullcontext() as tty:
        if tty is not None:
            tty.write(text + "\n")
    print(text, flush=True)


def xxh(path: Path) -> str:
    h = new_hasher("xxh3_128")
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_root(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


# ---------------------------------------------------------------------------------------------- the site


@dataclass
class Site:
    """Folders, mounts, ledger server, fake catalogue and the ``up`` stack of one matrix run."""

    base: Path
    pg: PostgresServer
    fake: FakeSciCat
    workers: bool = False
    prefect_db: str = ""  # the Prefect server's database URL (empty: its SQLite file under the stack's root)
    mounted: bool = False
    notes: list[str] = field(default_factory=list)
    stack: LocalStack | None = None
    started_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    supervision: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.base / "site"

    @property
    def disk733(self) -> Path:
        """The acquisition disk: the detector writes here; the flows see it through the data733 mount."""
        return self.base / "disk733"

    def tier(self, name: str) -> Path:
        return self.root / name

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.disk733.mkdir(parents=True, exist_ok=True)
        for name in ("data733", "lamarr", "cfs", "hpss"):
            self.tier(name).mkdir(exist_ok=True)
        self.mounted = os.geteuid() == 0 and self._mount()
        if not self.mounted:
            self.notes.append("mount not permitted here: data733 is the acquisition folder itself and cfs an "
                              "ordinary folder; the enospc and source_unmounted faults are skipped")
        data = default_config_data(self.root)
        data["tiers"]["data733"]["root"] = str(self.tier("data733") if self.mounted else self.disk733)
        data["ledger"]["url"] = self.pg.create_database(f"faults_{os.getpid()}_{int(time.time())}")
        data["catalogue"] = {"kind": "scicat", "url": self.fake.url, "username": "ingestor",
                             "password": f"${{{PASSWORD_VAR}}}", "retry": {"max_attempts": 2, "backoff_base": 0.2},
                             "admin_groups": ["ingestor"]}
        data["move"].update({"concurrency": 2, "recover_after_s": 5})
        data["dataset"] = {"settle_seconds": 5, "contact_email": "beamline733@example.org"}
        data["watcher"] = {"quiet_period_s": 1.0, "batch_window_s": 0.5, "rescan_interval_s": 10}
        data["up"] = {"port": free_port()}
        path = self.root / "splash-flows.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        load_config_file(path, {PASSWORD_VAR: "x"})  # valid

    def _mount(self) -> bool:
        done = run_root("mount", "-t", "tmpfs", "-o", f"size={CFS_SIZE}", "tmpfs", str(self.tier("cfs")))
        if done.returncode != 0:
            self.notes.append(f"mount -t tmpfs refused: {done.stderr.strip()}")
            return False
        if not self.mount_source():
            run_root("umount", str(self.tier("cfs")))
            return False
        return True

    def mount_source(self) -> bool:
        done = run_root("mount", "--bind", str(self.disk733), str(self.tier("data733")))
        if done.returncode != 0:
            self.notes.append(f"mount --bind refused: {done.stderr.strip()}")
        return done.returncode == 0

    def unmount_source(self) -> None:
        done = run_root("umount", "-l", str(self.tier("data733")))
        assert done.returncode == 0, done.stderr

    def resize_cfs(self, size_bytes: int) -> None:
        done = run_root("mount", "-o", f"remount,size={max(size_bytes, 4096)}", str(self.tier("cfs")))
        assert done.returncode == 0, done.stderr

    def cfs_used(self) -> int:
        st = os.statvfs(self.tier("cfs"))
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    @property
    def config_path(self) -> Path:
        return self.root / "splash-flows.yaml"

    def context(self) -> Context:
        return build_context(load_config_file(self.config_path, {PASSWORD_VAR: self.fake.users["ingestor"]}))

    def start(self) -> None:
        began = time.monotonic()
        self.stack = LocalStack(self.root, limit=2, workers=self.workers, ui=False, poll=0.5,
                                extra_env={PASSWORD_VAR: self.fake.users["ingestor"],
                                           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                                           **({"PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_db}
                                              if self.prefect_db else {})})
        self.stack.start(say=lambda line: self.supervision.append(line))
        self.started_s = time.monotonic() - began
        say(f"fault matrix: `up` stack started in {self.started_s:.1f} s (load {os.getloadavg()[0]:.1f})")
        self._thread = threading.Thread(target=self._supervise, name="faults-supervisor", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        assert self.stack is not None
        while not self._stop.wait(0.3):
            try:
                with self._lock:
                    self.stack.supervise()
            except ChildFailed as err:
                self.supervision.append(f"fatal: {err}")

    def use_workers(self, workers: bool) -> None:
        """Swap the stack's executor: Prefect process workers (``up --workers``'s layout) for the pool the burst
        uses, or back to the in-process runner. The server, watcher and ledger stay up."""
        assert self.stack is not None
        if self.stack.workers == workers:
            return
        with self._lock:
            self.stack.use_executor(workers=workers, pools=[WORKER_POOL] if workers else None)
        self.workers = workers

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.stack is not None:
            self.stack.stop()
        if self.mounted:
            run_root("umount", "-l", str(self.tier("data733")))
            run_root("umount", "-l", str(self.tier("cfs")))

    def pid(self, name: str) -> int:
        assert self.stack is not None
        return self.stack.supervisor.pids()[name]

    def children(self) -> dict[str, int]:
        assert self.stack is not None
        return self.stack.supervisor.pids()


def kill_group(pid: int) -> None:
    """SIGKILL a child and everything in its process group (a flow-run subprocess of a worker included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def kill_postgres(pg: PostgresServer) -> int:
    """SIGKILL the PostgreSQL postmaster (its backends exit when they see it gone); returns its pid."""
    pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    return pid


def restart_postgres(pg: PostgresServer) -> None:
    """Start the killed server again on the same data directory and port (crash recovery replays its WAL)."""
    deadline = time.monotonic() + 60
    while _backends_alive(pg) and time.monotonic() < deadline:  # the orphaned backends notice and exit
        time.sleep(0.5)
    opts = f"-p {pg.port} -c listen_addresses=127.0.0.1 -k {pg.base} -c fsync=off -c max_connections=200"
    pg._run([str(pg.bindir / "pg_ctl"), "-D", str(pg.datadir), "-o", opts, "-l", str(pg.base / "server.log"),
             "-w", "-t", "120", "start"])


def _backends_alive(pg: PostgresServer) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "cwd").resolve() == pg.datadir.resolve():
                return True
    return False


# ---------------------------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """A burst of simulated 7.3.3 scans (EDF + sidecar; hi/lo sets with their ``.gb``) under one proposal."""

    staging: Path
    proposal: str
    files: list[str]            # tier-relative, in the detector's write order
    checksums: dict[str, str]
    written: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    stranded: list[Any] = field(default_factory=list)  # flow runs a killed worker left Running/Pending

    @classmethod
    def make(cls, staging: Path, proposal: str, scans: int, seed: int) -> Workload:
        paths = simulate_acquisitions(staging, scans, proposal=proposal, seed=seed, hi_lo_every=3, small=True,
                                      when=datetime.now(UTC))
        rel = [p.relative_to(staging).as_posix() for p in paths]
        return cls(staging, proposal, rel, {r: xxh(staging / r) for r in rel})

    @property
    def prefix(self) -> str:
        return self.proposal

    def write(self, disk: Path, rng: random.Random) -> None:
        """Write every file the way the detector does: open, a few chunks with pauses, close; sidecars after
        their image. Runs in a thread; ``written`` counts closed files."""
        for rel in self.files:
            data = (self.staging / rel).read_bytes()
            dst = disk / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            piece = max(1, len(data) // 4)
            with open(dst, "wb") as fh:
                for i in range(0, len(data), piece):
                    fh.write(data[i:i + piece])
                    fh.flush()
                    time.sleep(0.005)
            self.written += 1
            time.sleep(rng.uniform(0.01, 0.06))
        self.done.set()


# ---------------------------------------------------------------------------------------------- audit


@dataclass
class Outcome:
    """One row of the table."""

    fault: str
    seed: int
    files: int
    lost: int = 0
    duplicated: int = 0
    partial: int = 0
    wrongly_deleted: int = 0
    recover_s: float | None = None
    wall_s: float = 0.0
    part_leftovers: int = 0
    events: dict[str, int] = field(default_factory=dict)
    said: str = ""
    skipped: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.partial or self.wrongly_deleted or self.problems)


def prefix_filter(prefix: str) -> Any:
    return SourceFile.path.startswith(prefix.rstrip("/") + "/")


def complete(ctx: Context, work: Workload) -> tuple[bool, str]:
    """Every written file verified on every target, every scan catalogued or excluded, every verified copy on a
    tier with a retention rule given its due date (the ledger's invariant, as the ledger says)."""
    with ctx.ledger.session() as sess:
        verified = dict(sess.execute(
            select(Copy.tier, func.count()).join(SourceFile, SourceFile.id == Copy.file_id)
            .where(prefix_filter(work.prefix), Copy.tier.in_(TARGETS), Copy.state == CopyState.VERIFIED)
            .group_by(Copy.tier)).all())
        scans = Counter(sess.scalars(select(CatalogueScan.state).where(
            CatalogueScan.scan_key.startswith(work.prefix + "/"))))
        undated = sess.scalar(select(func.count()).select_from(Copy).join(SourceFile, SourceFile.id == Copy.file_id)
                              .where(prefix_filter(work.prefix), Copy.state == CopyState.VERIFIED,
                                     Copy.tier.in_(list(ctx.config.retention.rules)), Copy.prune_due_at.is_(None)))
    n = len(work.files)
    cat_open = sum(v for k, v in scans.items() if k not in ("catalogued", "excluded"))
    ok = all(verified.get(t, 0) == n for t in TARGETS) and cat_open == 0 and bool(scans) and not undated
    return ok, f"verified {verified} of {n}; scans {dict(scans)}; {undated} copies without a due date"


def audit(ctx: Context, site: Site, work: Workload, out: Outcome, *, pruned_ok: Callable[[Event], bool]) -> None:
    """Fill ``out``'s counts from the disks, the ledger and the catalogue."""
    p = work.prefix
    with ctx.ledger.session() as sess:
        rows = list(sess.execute(select(SourceFile.id, SourceFile.path).where(prefix_filter(p))).all())
        copies = list(sess.execute(select(Copy.file_id, Copy.tier, Copy.state).join(
            SourceFile, SourceFile.id == Copy.file_id).where(prefix_filter(p))).all())
        events = list(sess.scalars(select(Event).where(Event.path.startswith(p + "/")).order_by(Event.id)))
    for path, c in Counter(path for _, path in rows).items():
        if c > 1:
            out.duplicated += c - 1
            out.problems.append(f"{c} ledger rows for {path}")
    for (f, t), c in Counter((f, t) for f, t, _ in copies).items():
        if c > 1:
            out.duplicated += c - 1
            out.problems.append(f"{c} copy rows for file {f} on {t}")
    state = {(f, t): s for f, t, s in copies}
    ids = {path: fid for fid, path in rows}
    pruned = {(e.path, e.tier) for e in events if e.kind == EventKind.PRUNED}
    out.events = dict(Counter(str(e.kind) for e in events))
    for e in events:
        if e.kind == EventKind.PRUNED and not pruned_ok(e):
            out.wrongly_deleted += 1
            out.problems.append(f"deletion not allowed: {e.tier}:{e.path}")
    for rel in work.files:
        want = work.checksums[rel]
        fid = ids.get(rel)
        for tier in TARGETS:
            path = site.tier(tier) / rel
            good = path.is_file() and xxh(path) == want
            if fid is None or state.get((fid, tier)) != CopyState.VERIFIED or not good:
                out.lost += 1
                out.problems.append(f"{tier}:{rel} not verified with the detector's bytes "
                                    f"(ledger {state.get((fid, tier)) if fid else 'no row'}, on disk {good})")
                break
        src = site.disk733 / rel
        if not src.exists() and (rel, "data733") not in pruned:
            out.wrongly_deleted += 1
            out.problems.append(f"data733:{rel} gone without a pruned event")
    for tier in ("data733", *TARGETS):
        base = (site.disk733 if tier == "data733" else site.tier(tier)) / p
        if not base.exists():
            continue
        for path in base.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(site.disk733 if tier == "data733" else site.tier(tier)).as_posix()
            if path.name.endswith(".part"):
                out.part_leftovers += 1
            elif rel not in work.checksums:
                out.duplicated += 1
                out.problems.append(f"stray file {tier}:{rel}")
            elif xxh(path) != work.checksums[rel]:
                out.partial += 1
                out.problems.append(f"{tier}:{rel} under its final name with other bytes")
    keys = Counter(d.get("scientificMetadata", {}).get("splash_scan_key") for d in site.fake.datasets.values())
    for k, c in keys.items():
        if isinstance(k, str) and k.startswith(p + "/") and c > 1:
            out.duplicated += c - 1
            out.problems.append(f"{c} datasets for scan {k}")


# ---------------------------------------------------------------------------------------------- one fault


@dataclass
class Fault:
    """A fault to inject while the burst arrives (``inject`` at the chosen point, ``clear`` once it is over) or
    after it (``after``). ``expect`` names an event kind the ledger must show (None: nothing required)."""

    name: str
    inject: Callable[[Site, random.Random, Workload], None] | None = None
    clear: Callable[[Site, random.Random, Workload], None] | None = None
    after: Callable[[Site, random.Random, Workload, Outcome], None] | None = None
    expect: tuple[str, ...] = ()
    needs_mount: bool = False
    workers: bool = False


def _kill(name: str) -> Callable[[Site, random.Random, Workload], None]:
    def inject(site: Site, rng: random.Random, work: Workload) -> None:
        kill_group(site.pid(name))
    return inject


def _kill_worker(site: Site, rng: random.Random, work: Workload) -> None:
    """SIGKILL a process worker while it runs a flow (its flow-run process with it); waits up to 60 s for a
    busy one (the worker may still be starting), then takes any."""
    deadline = time.monotonic() + 60
    while True:
        workers = sorted(n for n in site.children() if n.startswith("worker-"))
        busy = [n for n in workers if _has_children(site.pid(n))]
        if busy or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    kill_group(site.pid(rng.choice(busy or workers)))
    work.stranded = _active_runs(site)  # before `up` restarts the worker: every active run was the dead one's


def _active_runs(site: Site) -> list[Any]:
    from splash_flows.flows.run_api import PrefectRunAPI

    assert site.stack is not None
    with PrefectRunAPI.open(site.stack.api_url) as api:
        return [r.id for r in api.active_runs([d.id for d in api.client.read_deployments()])]


def _crash_stranded(site: Site, rng: random.Random, work: Workload) -> None:
    """What the zombie-run automation (``flows/zombies.py``, made by the stack's init) does two minutes after a
    worker dies: its runs stay Running/Pending on the server, holding the pool's concurrency slots, so nothing
    else would run. The matrix marks them Crashed at once to stay short; the automation itself is proven by
    tests/integration (a worker killed mid-batch, two hosts with one killed). Their files are re-sent by
    ``reconcile``."""
    from splash_flows.flows.run_api import PrefectRunAPI

    assert site.stack is not None
    with PrefectRunAPI.open(site.stack.api_url) as api:
        for run_id in work.stranded:
            state = api.read_run(run_id).state
            if state is not None and not state.is_final():
                api.crash(run_id, "its process worker was killed (SIGKILL)")


def _has_children(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return any((task / "children").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir())
    return False


def _kill_pg(site: Site, rng: random.Random, work: Workload) -> None:
    kill_postgres(site.pg)
    time.sleep(rng.uniform(2.0, 6.0))
    restart_postgres(site.pg)


def _fill_cfs(site: Site, rng: random.Random, work: Workload) -> None:
    """Cap cfs below what the burst still has to put there (15-50 % of the bytes not yet on cfs): the next
    copies hit ENOSPC mid-file."""
    left = sum((work.staging / r).stat().st_size for r in work.files if not (site.tier("cfs") / r).exists())
    site.resize_cfs(site.cfs_used() + int(left * rng.uniform(0.15, 0.5)))


def _free_cfs(site: Site, rng: random.Random, work: Workload) -> None:
    deadline = time.monotonic() + 120
    with contextlib.closing(site.context()) as ctx:
        while time.monotonic() < deadline and not _event_like(ctx, work, "failed", "No space"):
            time.sleep(0.5)
    site.resize_cfs(512 * 1024 * 1024)  # the operator frees space


def _event_like(ctx: Context, work: Workload, kind: str, text: str) -> bool:
    with ctx.ledger.session() as sess:
        for e in sess.scalars(select(Event).where(Event.kind == kind, Event.path.startswith(work.prefix + "/"))):
            if text in str(e.detail):
                return True
    return False


def _catalogue_down(site: Site, rng: random.Random, work: Workload) -> None:
    site.fake.drop_next(2, after_processing=True)   # answers lost after the request took effect ("timeouts")
    site.fake.drop_next(3)                          # no answer at all
    site.fake.fail_next(10**6, 500)                 # then 500s until it recovers


def _catalogue_up(site: Site, rng: random.Random, work: Workload) -> None:
    time.sleep(rng.uniform(5.0, 15.0))
    site.fake.clear_faults()


def _unmount(site: Site, rng: random.Random, work: Workload) -> None:
    site.unmount_source()


def _remount(site: Site, rng: random.Random, work: Workload) -> None:
    time.sleep(rng.uniform(3.0, 8.0))
    assert site.mount_source(), site.notes


def flip(path: Path, rng: random.Random) -> None:
    """Silent corruption: one bit changes; size and mtime stay."""
    st = path.stat()
    with open(path, "r+b") as fh:
        offset = rng.randrange(st.st_size)
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << rng.randrange(8))]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _bit_flip(site: Site, rng: random.Random, work: Workload, out: Outcome) -> None:
    """After the burst: flip a bit in a lamarr copy, prune (its re-check must refuse and mark it at_risk), flip a
    bit in a cfs copy, ``reconcile --verify`` (both repaired), prune again: the deletions rely on good copies."""
    from splash_flows.services.prune import execute_prune
    from splash_flows.services.verify import verify_copies

    images = [r for r in work.files if r.endswith(".edf")]
    a, b = rng.sample(images, 2)
    later = datetime.now(UTC) + timedelta(days=181)
    with contextlib.closing(site.context()) as ctx:
        flip(site.tier("lamarr") / a, rng)
        report = execute_prune(ctx, tier="data733", clock=lambda: later)
        if not any(c.path == a for c in report.at_risk):
            out.problems.append(f"prune did not catch lamarr:{a}")
        flip(site.tier("cfs") / b, rng)
        verified = verify_copies(ctx, tiers=list(TARGETS), seed=out.seed)
        found = sorted((f.tier, f.path) for f in verified.findings if f.repaired_from)
        if found != sorted([("lamarr", a), ("cfs", b)]):
            out.problems.append(f"reconcile --verify repaired {found}, expected lamarr:{a} and cfs:{b}")
        execute_prune(ctx, tier="data733", clock=lambda: later)
    out.said = (f"prune refused data733:{Path(a).name} (lamarr at_risk); verify repaired lamarr:{Path(a).name}, "
                f"cfs:{Path(b).name}")


def _clock_jump(site: Site, rng: random.Random, work: Workload, out: Outcome) -> None:
    """After the burst: the host clock a year ahead, then a year behind, then right again. Due dates must not move
    (they come from the ledger and the acquisition time) and no prune may delete."""
    from splash_flows.ledger import prune as lp
    from splash_flows.services.prune import execute_prune, schedule_all

    real = datetime.now(UTC)
    with contextlib.closing(site.context()) as ctx:
        before = _due_dates(ctx, work)
        refused = []
        for shift in (timedelta(days=365), -timedelta(days=365)):
            jumped = real + shift
            schedule_all(ctx, clock=lambda jumped=jumped: jumped)
            try:
                execute_prune(ctx, clock=lambda jumped=jumped: jumped, check_clock=True)
            except PruneRefused as err:
                refused.append(str(err)[:60])
        execute_prune(ctx, check_clock=True)
        if _due_dates(ctx, work) != before:
            out.problems.append("due dates moved with the clock")
        if len(refused) != 2:
            out.problems.append(f"prune ran under a jumped clock ({refused})")
        out.said = f"prune refused twice; {len(before)} due dates unchanged; now due: " \
                   f"{lp.count_due(ctx.ledger, tiers=['data733', 'lamarr', 'cfs'], until=real)}"


def _due_dates(ctx: Context, work: Workload) -> dict[tuple[str, str], datetime | None]:
    with ctx.ledger.session() as sess:
        return {(p, t): d for p, t, d in sess.execute(
            select(SourceFile.path, Copy.tier, Copy.prune_due_at).join(SourceFile, SourceFile.id == Copy.file_id)
            .where(prefix_filter(work.prefix))).all()}


def faults() -> dict[str, Fault]:
    return {f.name: f for f in [
        Fault("kill_watcher", _kill("watcher")),
        Fault("kill_runner", _kill("runner")),
        Fault("kill_worker", _kill_worker, _crash_stranded, workers=True),
        Fault("kill_prefect_server", _kill("server")),
        Fault("kill_postgres", _kill_pg),
        Fault("enospc", _fill_cfs, _free_cfs, expect=("failed",), needs_mount=True),
        Fault("catalogue_outage", _catalogue_down, _catalogue_up, expect=("catalogue_pending",)),
        Fault("bit_flip", after=_bit_flip, expect=("at_risk", "prune_refused", "repaired")),
        Fault("clock_jump", after=_clock_jump, expect=("prune_refused",)),
        Fault("source_unmounted", _unmount, _remount, needs_mount=True),
    ]}


def recover(site: Site, work: Workload, deadline_s: float) -> tuple[bool, str]:
    """What the operator does (README, Recovery): when nothing is queued or running any more and the ledger still
    says a file is not safe or a scan not catalogued, ``reconcile`` (at most every RECONCILE_EVERY_S). Polls the
    ledger every 0.25 s; no timed assertion. Re-sending while runs are still queued would only pile duplicate
    runs onto a loaded machine."""
    from splash_flows.flows.deploy import trigger_deployment
    from splash_flows.services.reconcile import heal, plan_reconcile

    assert site.stack is not None
    start = time.monotonic()
    next_reconcile = start + RECONCILE_EVERY_S
    detail = ""
    ctx: Context | None = None
    try:
        while time.monotonic() - start < deadline_s:
            try:
                ctx = ctx or site.context()
                ok, detail = complete(ctx, work)
                if ok:
                    return True, detail
                if time.monotonic() >= next_reconcile and not runs_in_flight(site):
                    next_reconcile = time.monotonic() + RECONCILE_EVERY_S
                    plan = plan_reconcile(ctx, prefix=work.prefix, min_age=0)
                    if plan.to_send:
                        trigger_deployment(site.stack.api_url, plan.batches(50),
                                           config_path=str(site.config_path), tags=["faults"])
                    heal(ctx)
            except Exception as err:  # noqa: BLE001 - a server still coming back: try again, say so at the end
                import traceback

                detail = f"{type(err).__name__}: {str(err)[:200]} at " + " < ".join(
                    f"{f.name}:{f.lineno}" for f in traceback.extract_tb(err.__traceback__)[-4:])
                if ctx is not None:
                    ctx.close()
                ctx = None
            time.sleep(0.25)
    finally:
        if ctx is not None:
            ctx.close()
    return False, detail


def runs_in_flight(site: Site) -> int:
    """Dispatcher runs (the burst's) due now that are not final (Scheduled for now or earlier, Pending, Running),
    from the server; the periodic housekeeping runs (catalogue retry, flight check) do not count."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from splash_flows.flows.run_api import PrefectRunAPI

    assert site.stack is not None
    soon = datetime.now(UTC) + timedelta(seconds=5)
    with PrefectRunAPI.open(site.stack.api_url) as api:
        dispatcher = api.deployment_id(DISPATCHER)
        runs = api.client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dispatcher])))
    return sum(1 for r in runs if r.state is not None and not (
        r.state.is_scheduled() and r.state.state_details.scheduled_time is not None
        and r.state.state_details.scheduled_time > soon))


def quiesce(site: Site, timeout: float = 300.0) -> None:
    """Wait until no flow run is queued or running (a late run of the burst must not touch the copies an
    after-fault corrupts on purpose)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if not runs_in_flight(site):
                return
        time.sleep(0.25)


def run_fault(site: Site, fault: Fault, seed: int, scans: int, staging: Path, index: int,
              deadline_s: float) -> Outcome:
    """Write the burst, inject ``fault`` at the seeded point, recover, audit."""
    rng = random.Random(seed)
    proposal = f"ALS-{9000 + index:05d}"
    work = Workload.make(staging / proposal, proposal, scans, seed)
    out = Outcome(fault.name, seed, len(work.files))
    if fault.needs_mount and not site.mounted:
        out.skipped = "mount not permitted"
        return out
    point = rng.randint(1, max(1, len(work.files) - 2))
    began = time.monotonic()
    site.use_workers(fault.workers)
    say(f"fault {fault.name}: seed {seed}, {len(work.files)} files, injected after file {point} "
        f"(replay: SPLASH_FAULT_SEED={seed} SPLASH_FAULTS_ONLY={fault.name})")
    writer = threading.Thread(target=work.write, args=(site.disk733, random.Random(seed + 1)), daemon=True)
    writer.start()
    injected_at = time.monotonic()
    if fault.inject is not None:
        while work.written < point and not work.done.is_set():
            time.sleep(0.02)
        injected_at = time.monotonic()
        fault.inject(site, rng, work)
        if fault.clear is not None:
            fault.clear(site, rng, work)
    writer.join()
    written = time.monotonic()
    ok, detail = recover(site, work, deadline_s)
    if fault.after is not None and ok:
        quiesce(site)
        fault.after(site, rng, work, out)
        ok, detail = recover(site, work, deadline_s)
    recovered = time.monotonic()
    out.recover_s = recovered - injected_at if ok else None
    if not ok:
        out.problems.append(f"not recovered after {deadline_s:.0f} s: {detail}")
    site.use_workers(False)
    with contextlib.closing(site.context()) as ctx:
        audit(ctx, site, work, out, pruned_ok=lambda e: _pruned_ok(ctx, e, fault.name))
    out.wall_s = time.monotonic() - began
    say(f"fault {fault.name}: burst written {written - began:.1f} s, safe {recovered - written:.1f} s later, "
        f"{out.wall_s:.1f} s in all (load {os.getloadavg()[0]:.1f})")
    for kind in fault.expect:
        if not out.events.get(kind) and not _global_event(site, kind):
            out.problems.append(f"the ledger has no {kind} event")
    shutil.rmtree(work.staging, ignore_errors=True)
    return out


def _global_event(site: Site, kind: str) -> bool:
    """Events without a path (a refused prune run) count for the fault that caused them."""
    with contextlib.closing(site.context()) as ctx, ctx.ledger.session() as sess:
        return bool(sess.scalar(select(func.count()).select_from(Event).where(Event.kind == kind)))


def _pruned_ok(ctx: Context, e: Event, fault: str) -> bool:
    """A deletion is allowed only in the bit-flip run (prune at a time the policy makes due), and only when no
    copy of that file was at risk before it (no at_risk event for the file earlier than the deletion without
    a repair of that copy in between)."""
    if fault != "bit_flip" or e.tier != "data733":
        return False
    with ctx.ledger.session() as sess:
        kinds = [(k, t) for k, t in sess.execute(select(Event.kind, Event.tier).where(
            Event.path == e.path, Event.id < e.id).order_by(Event.id))]
    risk: dict[str | None, bool] = {}
    for k, tier in kinds:
        if k == EventKind.AT_RISK:
            risk[tier] = True
        elif k == EventKind.REPAIRED:
            risk[tier] = False
    return not any(risk.values())


# ---------------------------------------------------------------------------------------------- the table


HEADER = ("fault", "seed", "files", "lost", "duplicated", "partial", "wrongly deleted", "recover s", "ledger says")


def table(rows: list[Outcome]) -> str:
    """The matrix as a Markdown table (reads in 80+ columns; README embeds it)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        if r.skipped:
            cells = [r.fault, str(r.seed), str(r.files), "-", "-", "-", "-", "-", f"skipped: {r.skipped}"]
        else:
            key = {k: v for k, v in sorted(r.events.items()) if k in (
                "failed", "catalogue_pending", "at_risk", "repaired", "prune_refused", "pruned", "refused")}
            said = r.said or ", ".join(f"{k} {v}" for k, v in key.items()) or "copied/verified only"
            rec = f"{r.recover_s:.1f}" if r.recover_s is not None else "NOT RECOVERED"
            cells = [r.fault, str(r.seed), str(r.files), str(r.lost), str(r.duplicated), str(r.partial),
                     str(r.wrongly_deleted), rec, said]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def started_site(base: Path, pg: PostgresServer, fake: FakeSciCat, *, workers: bool,
                 prefect_db: str = "") -> Iterator[Site]:
    site = Site(base, pg, fake, workers=workers, prefect_db=prefect_db)
    try:
        site.prepare()
        site.start()
        yield site
    finally:
        site.stop()
