"""Recovery on any tree (issue 9 items 1, 2, 3, 17): odd names, other programs' files, unreadable folders and
a run killed between its copy and its catalogue step. Real files, real FIFOs and sockets, real SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splash_flows.beamlines.bl733.simulator import simulate_acquisitions
from splash_flows.cli.main import app
from splash_flows.config import default_config_data, load_config_file
from splash_flows.context import Context, build_context
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger.models import CopyState
from splash_flows.services.catalogue import catalogue_batch
from splash_flows.services.move import move_files
from splash_flows.services.prune import schedule_prune
from splash_flows.services.reconcile import plan_reconcile

runner = CliRunner()
OLD = 1_700_000_000.0
GOOD = ["ALS-11111_Smith/20260101/s1_2m.edf", "ALS-11111_Smith/20260101/s1_2m.txt", "top.edf"]
#: other programs' half-written, temporary and lock files: never files to move (issue 9 item 2)
JUNK = [".DS_Store", "ALS-11111_Smith/20260101/frame_0009.edf.tmp", "ALS-11111_Smith/x.edf.part",
        "ALS-11111_Smith/notes.txt.swp", "ALS-11111_Smith/notes.txt~", "ALS-11111_Smith/~lock.edf",
        "ALS-11111_Smith/.~lock.plan.ods#", "ALS-11111_Smith/~$report.docx", ".git/objects/ab"]
BAD_FILE = b"ALS-11111_Smith/bad_\xff\xfe.edf"         # not UTF-8 (a Latin-1 name from a Windows share)
BAD_DIR_FILE = b"caf\xe9/inside.edf"                     # a folder whose name is not UTF-8


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A config file (embedded default rooted in tmp_path/site, short recovery wait) and the data733 root."""
    data = default_config_data(tmp_path / "site")
    data["move"]["recover_after_s"] = 0
    data.setdefault("dataset", {})["settle_seconds"] = 0
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "splash.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path, Path(data["tiers"]["data733"]["root"])


def odd_tree(root: Path) -> list[socket.socket]:
    """GOOD files, JUNK, two non-UTF-8 names, a FIFO and a socket under ``root`` (all old enough to send)."""
    for rel in GOOD + JUNK:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(100))
    broot = os.fsencode(root)
    for raw in (BAD_FILE, BAD_DIR_FILE):
        full = os.path.join(broot, raw)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(b"data")
        os.utime(full, (OLD, OLD))
    os.mkfifo(root / "ALS-11111_Smith/pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "ALS-11111_Smith/ctl.sock"))
    for rel in GOOD + JUNK:
        os.utime(root / rel, (OLD, OLD))
    return [sock]


def test_reconcile_plan_on_a_tree_with_odd_names_refuses_each_in_one_line_and_goes_on(
        site: tuple[Path, Path]) -> None:
    cfg_path, root = site
    socks = odd_tree(root)
    ctx = build_context(load_config_file(cfg_path))
    try:
        plan = plan_reconcile(ctx, min_age=60)
    finally:
        ctx.close()
        for s in socks:
            s.close()
    assert sorted(plan.to_send) == sorted(GOOD)  # no junk, nothing ignored, no odd name
    refused = {r.path: r.reason for r in plan.refused}
    assert refused == {
        "ALS-11111_Smith/bad_\\xff\\xfe.edf": "file name is not valid UTF-8; rename it",
        "caf\\xe9/inside.edf": "file name is not valid UTF-8; rename it",
        "ALS-11111_Smith/pipe": "a FIFO, not a regular file",
        "ALS-11111_Smith/ctl.sock": "a socket, not a regular file",
    }
    assert plan.unreadable == []


def test_reconcile_and_status_commands_work_on_an_odd_tree(site: tuple[Path, Path]) -> None:
    """The documented recovery (README "Recovery") run as an operator would, on a tree with odd names."""
    cfg_path, root = site
    socks = odd_tree(root)
    try:
        dry = runner.invoke(app, ["--config", str(cfg_path), "reconcile", "--dry-run", "--json"])
        assert dry.exit_code == 0, dry.output
        out = json.loads(dry.stdout)
        assert sorted(out["to_send"]) == sorted(GOOD) and len(out["refused"]) == 4
        ctx = build_context(load_config_file(cfg_path))
        try:
            move_files(ctx, GOOD).raise_for_failures()  # what the dispatcher runs reconcile triggered would do
        finally:
            ctx.close()
        real = runner.invoke(app, ["--config", str(cfg_path), "reconcile"])
        assert real.exit_code == 0, real.output
        assert "refused ALS-11111_Smith/bad_\\xff\\xfe.edf: file name is not valid UTF-8" in real.stdout
        assert "0 file(s) to send, 3 verified everywhere" in real.stdout
        status = runner.invoke(app, ["--config", str(cfg_path), "status", "--json"])
        assert status.exit_code == 0, status.output
        assert sorted(r["path"] for r in json.loads(status.stdout)) == sorted(GOOD)
        ctx = build_context(load_config_file(cfg_path))
        try:
            refused = {e.path for e in ctx.ledger.events(kind="refused")}
        finally:
            ctx.close()
        assert {"ALS-11111_Smith/bad_\\xff\\xfe.edf", "caf\\xe9/inside.edf", "ALS-11111_Smith/pipe"} <= refused
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def locked_site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A site with a folder of mode 000 (``P/locked``) beside readable ones."""
    data = default_config_data(tmp_path / "site")
    for tier in data["tiers"].values():
        Path(tier["root"]).mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "splash.yaml"
    cfg.write_text(yaml.safe_dump(data))
    root = Path(data["tiers"]["data733"]["root"])
    for rel in ("P/a.edf", "P/locked/b.edf", "Q/c.edf"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
        os.utime(root / rel, (OLD, OLD))
    (root / "P/locked").chmod(0o000)
    try:
        yield cfg, root
    finally:
        (root / "P/locked").chmod(0o755)


def without_file_permission_override(argv: list[str]) -> list[str]:
    """``argv`` run without the capabilities that let root read any folder whatever its mode (tests run as
    root; the permission error must be real). ``setpriv`` (util-linux) drops them from the bounding set, so
    the exec'd command has them neither permitted nor effective."""
    if os.geteuid() != 0:
        return argv  # an ordinary user meets the permission error anyway
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root's file-permission override")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *argv]


def test_an_unlistable_folder_is_named_and_reconcile_exits_non_zero(locked_site: tuple[Path, Path]) -> None:
    """Issue 9 item 17: a folder that cannot be listed is not silently left out as if it had vanished."""
    cfg, _root = locked_site
    argv = [sys.executable, "-m", "splash_flows", "--config", str(cfg), "reconcile", "--dry-run", "--min-age", "0"]
    proc = subprocess.run(without_file_permission_override(argv), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "would send P/a.edf" in proc.stdout and "would send Q/c.edf" in proc.stdout  # the rest goes on
    errors = [line for line in proc.stderr.splitlines() if "P/locked" in line]
    assert len(errors) == 1 and "Permission denied" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_local_tier_walk_without_a_problem_sink_raises_naming_the_folder(locked_site: tuple[Path, Path]) -> None:
    cfg, _root = locked_site
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from splash_flows.config import load_config_file
        from splash_flows.context import build_context
        from splash_flows.errors import WalkIncomplete
        ctx = build_context(load_config_file(Path(sys.argv[1])))
        seen = []
        try:
            for st in ctx.tier("data733").walk():
                seen.append(st.path)
        except WalkIncomplete as err:
            print("SEEN", seen)
            print("ERROR", err)
    """)
    argv = [sys.executable, "-c", script, str(cfg)]
    proc = subprocess.run(without_file_permission_override(argv), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SEEN ['P/a.edf', 'Q/c.edf']" in proc.stdout
    assert "ERROR data733: walk incomplete, could not read: P/locked (Permission denied)" in proc.stdout


# ---------------------------------------------------------------------------------------------- item 3

KILL_BETWEEN_COPY_AND_CATALOGUE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from splash_flows.config import load_config_file
    from splash_flows.context import build_context
    from splash_flows.services.move import move_files
    ctx = build_context(load_config_file(Path(sys.argv[1])))
    move_files(ctx, sys.argv[2:]).raise_for_failures()   # registered, copied, verified on every target
    os.kill(os.getpid(), signal.SIGKILL)                 # ... and the runner dies before the catalogue step
""")


def _killed_run(cfg_path: Path, paths: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_COPY_AND_CATALOGUE, str(cfg_path), *paths],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _simulated(root: Path, n: int, proposal: str, seed: int) -> list[str]:
    written = simulate_acquisitions(root, n, small=True, hi_lo_every=0, autoexpose_every=0, proposal=proposal,
                                    seed=seed)
    return [p.relative_to(root).as_posix() for p in written]


def _orphans(ctx: Context, paths: list[str]) -> tuple[list[str], list[str]]:
    """(paths with no catalogue state, paths with a verified copy on a ruled tier without a due date)."""
    states = ledger_cat.file_states(ctx.ledger)
    rules = set(ctx.config.retention.rules)
    no_state = [p for p in paths if ("data733", p) not in states]
    with ctx.ledger.session() as sess:
        from sqlalchemy import select

        from splash_flows.ledger.models import Copy, SourceFile
        rows = sess.execute(select(SourceFile.path, Copy.tier, Copy.state, Copy.prune_due_at)
                            .join(Copy, Copy.file_id == SourceFile.id).where(SourceFile.path.in_(paths))).all()
    undated = sorted({p for p, tier, state, due in rows if tier in rules and state == CopyState.VERIFIED
                      and due is None})
    return no_state, undated


def test_a_run_killed_between_copy_and_catalogue_is_finished_by_the_next_unrelated_run(
        site: tuple[Path, Path]) -> None:
    cfg_path, root = site
    killed = _simulated(root, 3, "ALS-00622", seed=1)
    _killed_run(cfg_path, killed)
    ctx = build_context(load_config_file(cfg_path))
    try:
        no_state, undated = _orphans(ctx, killed)
        assert no_state == killed and undated == killed  # what the kill left: verified, outside everything
        # a later run of other files: its catalogue and scheduling steps (as run_move calls them)
        later = _simulated(root / "later", 1, "ALS-00623", seed=2)
        later = [f"later/{p}" for p in later]
        report = move_files(ctx, later)
        report.raise_for_failures()
        cat = catalogue_batch(ctx, later)
        cat.raise_for_failures()
        schedule_prune(ctx, report.register.sources)
        assert _orphans(ctx, killed) == ([], [])  # within one step: catalogued and scheduled
        assert len(ctx.catalogue().search(proposal="ALS-00622")) == 3
        assert _orphans(ctx, later) == ([], [])
    finally:
        ctx.close()


def test_reconcile_finishes_what_a_killed_run_left(site: tuple[Path, Path]) -> None:
    cfg_path, root = site
    killed = _simulated(root, 2, "ALS-00622", seed=3)
    _killed_run(cfg_path, killed)
    dry = runner.invoke(app, ["--config", str(cfg_path), "reconcile", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    would = json.loads(dry.stdout)["would_heal"]
    assert len(would["uncatalogued_scans"]) == 2 and would["unscheduled_files"] == len(killed)
    result = runner.invoke(app, ["--config", str(cfg_path), "reconcile"])
    assert result.exit_code == 0, result.output
    assert "healed:" in result.stdout
    ctx = build_context(load_config_file(cfg_path))
    try:
        assert _orphans(ctx, killed) == ([], [])
    finally:
        ctx.close()
