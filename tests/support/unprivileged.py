"""Run a piece of a test as an unprivileged user, so permission errors really happen when the suite runs as root.

Root reads a mode-000 file and writes into a mode-0555 folder, so a test of those error paths proves nothing in
CI (which runs as root). ``run_unprivileged(fn, *args)`` forks; the child drops to ``nobody`` (no supplementary
groups) and runs ``fn`` there; its return value (or its exception, as text) comes back through a pipe. Not root:
``fn`` simply runs in a forked child as the current (already unprivileged) user.

Forked rather than started afresh because the interpreter may live where ``nobody`` cannot read it (a pyenv under
``/root``): the child keeps the parent's loaded modules. So import what ``fn`` needs before calling (a module first
imported in the child may be unreadable there). ``unprivileged_dir()`` makes a folder the child may write.
"""

from __future__ import annotations

import os
import pickle
import pwd
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
USER = "nobody"


def _ids() -> tuple[int, int]:
    entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


@contextmanager
def unprivileged_dir() -> Iterator[Path]:
    """A fresh folder under /tmp owned by the unprivileged user (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="splash-unprivileged-", dir="/tmp"))
    try:
        if os.geteuid() == 0:
            os.chown(path, *_ids())
        yield path
    finally:
        for sub in [path, *path.rglob("*")]:  # give root's rmtree its way back into mode-000 folders
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o700)
        shutil.rmtree(path, ignore_errors=True)


class UnprivilegedError(AssertionError):
    """``fn`` raised in the unprivileged child; the message holds its traceback."""


def run_unprivileged(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a forked child running as ``nobody`` (when we are root). Returns its (picklable) result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                uid, gid = _ids()
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                assert os.geteuid() == uid and os.getegid() == gid
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
                payload = pickle.dumps(("error", traceback.format_exc()))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        except BaseException:  # noqa: BLE001 - a child must never run the rest of the test session
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise UnprivilegedError(f"the unprivileged child died without an answer (status {status})")
    kind, value = pickle.loads(data)  # our own child's answer
    if kind == "error":
        raise UnprivilegedError(f"raised as {USER}:\n{value}")
    result: T = value
    return result
