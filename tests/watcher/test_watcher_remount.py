"""Files that vanish from the watched tree and come back (issue 13: the source volume unmounted and remounted).

A file the watcher sent is "in flight" (not batched again) for ``resend_after_s`` (an hour), so that a run still
queued is not doubled. A file that vanished cannot be copied by that run: when it comes back, whatever is not
verified must be sent again at once, and whatever is verified and unchanged must not be. Real folders, real
renames and (as root) real mounts; a fake trigger (no Prefect); the move run is ``move_files`` called directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.services.move import move_files
from tests.support.watching import wait_for
from tests.watcher.conftest import Harness, with_watcher

MakeHarness = Callable[..., Harness]


def _vanished(h: Harness) -> set[str]:
    return {p for e in h.events.of("vanished") for p in e.paths}


def _sent_twice(h: Harness, *rels: str) -> None:
    wait_for(lambda: all(h.sent_count(r) >= 2 for r in rels), f"{', '.join(rels)} to be sent again", timeout=30)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# watchdog warns when a folder comes back to a path it still held a (dead) watch for, and replaces that watch
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_folder_moved_away_and_back_resends_what_is_not_verified(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context, tmp_path: Path, mode: str) -> None:
    """Three files sent; the run verifies two; the folder leaves the tree and comes back, one verified file
    rewritten meanwhile: the unverified one and the rewritten one are sent again, the verified unchanged one
    is not."""
    h = make_harness(with_watcher(watch_config, mode=mode))
    kept, unverified, rewritten = "scan_away/kept.edf", "scan_away/unverified.edf", "scan_away/rewritten.edf"
    for rel in (kept, unverified, rewritten):
        _write(h.root / rel, os.urandom(500))
    h.wait_sent(kept, unverified, rewritten)
    move_files(ctx_sqlite, [kept, rewritten]).raise_for_failures()  # the run got to two of them

    away = tmp_path / "away"
    (h.root / "scan_away").rename(away)
    wait_for(lambda: {kept, unverified, rewritten} <= _vanished(h), "the watcher to see the folder leave")
    _write(away / "rewritten.edf", os.urandom(600))
    away.rename(h.root / "scan_away")

    _sent_twice(h, unverified, rewritten)
    h.barrier()
    assert (h.sent_count(kept), h.sent_count(unverified), h.sent_count(rewritten)) == (1, 2, 2)
    move_files(ctx_sqlite, [unverified, rewritten]).raise_for_failures()
    for rel in (kept, unverified, rewritten):
        assert Path(watch_config.tiers["cfs"].root, rel).read_bytes() == (h.root / rel).read_bytes()


# ------------------------------------------------------------------------------------------ real mounts


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


class Volume:
    """The data733 volume: ``mount()`` puts it on the watched root, ``unmount()`` takes it away (``umount -l``,
    as an operator or automounter does). ``kind`` "bind": a folder bind-mounted (the fault matrix's layout; the
    kernel keeps the files' inodes, so inotify watches survive); "ext4": a file system image on a loop device,
    whose last unmount ends every inotify watch on it (a remount is a new file system to the kernel)."""

    def __init__(self, kind: str, base: Path, root: Path) -> None:
        self.kind, self.root = kind, root
        self.mounted = False
        if kind == "bind":
            self.source = base / "disk733"
            self.source.mkdir()
            return
        self.source = base / "disk733.img"
        with open(self.source, "wb") as fh:
            fh.truncate(16 << 20)
        made = _run("mkfs.ext4", "-q", "-F", str(self.source))
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image here: {made.stderr.strip()}")

    def mount(self) -> None:
        argv = (["mount", "--bind", str(self.source), str(self.root)] if self.kind == "bind"
                else ["mount", "-o", "loop", str(self.source), str(self.root)])
        done = _run(*argv)
        if done.returncode != 0:
            pytest.skip(f"{' '.join(argv[:3])} is not permitted here: {done.stderr.strip()}")
        self.mounted = True

    def unmount(self) -> None:
        done = _run("umount", "-l", str(self.root))
        assert done.returncode == 0, done.stderr
        self.mounted = False


@pytest.fixture(params=["bind", "ext4"])
def volume(request: pytest.FixtureRequest, watch_config: Config, tmp_path: Path) -> Iterator[Volume]:
    if os.geteuid() != 0:
        pytest.skip("mounting a volume needs root (CI runs as root)")
    if request.param == "ext4" and not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    vol = Volume(request.param, tmp_path, Path(watch_config.tiers[watch_config.move.source].root))
    vol.mount()
    lost = vol.root / "lost+found"
    if lost.exists():
        lost.rmdir()  # ext4's own folder: not a file to move, but the watcher would list it
    yield vol
    if vol.mounted:
        vol.unmount()


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_source_volume_unmounted_and_remounted_resends_what_is_not_verified(
        watch_config: Config, make_harness: MakeHarness, ctx_sqlite: Context, volume: Volume, mode: str) -> None:
    """The whole watched root is a mount. Unmounted after the files were sent (one verified, one not), then
    mounted again: the unverified file is sent again, the verified one is not, and a file written after the
    remount is sent on its close event (the watch follows the remounted volume)."""
    h = make_harness(with_watcher(watch_config, mode=mode))
    kept, unverified = "scan_mnt/kept.edf", "scan_mnt/unverified.edf"
    for rel in (kept, unverified):
        _write(h.root / rel, os.urandom(500))
    h.wait_sent(kept, unverified)
    move_files(ctx_sqlite, [kept]).raise_for_failures()

    volume.unmount()
    wait_for(lambda: {kept, unverified} <= _vanished(h), "the watcher to see the volume go")
    volume.mount()

    _sent_twice(h, unverified)
    late = "scan_mnt/after_remount.edf"
    _write(h.root / late, b"written after the remount")
    h.wait_sent(late)  # long before the next rescan (rescan_interval_s 600 s): the watch follows the volume
    h.barrier()
    assert (h.sent_count(kept), h.sent_count(unverified), h.sent_count(late)) == (1, 2, 1)
