"""A Prefect server kept for one folder (the demo's): started once, reused while it answers, stopped when idle.

Why: a flow called without ``PREFECT_API_URL`` makes Prefect start a *temporary* server for that one process:
it imports the whole server (about 8 s of CPU here), checks its database migrations and stops again when the
process exits -- every ``make demo`` paid it, with nothing to copy as well (measured: 22 s of a 40 s demo).
This module runs the very same server -- Prefect's own ASGI app, in Prefect's ephemeral mode (no UI, only the
services a temporary server runs), same database under ``PREFECT_HOME`` -- but detached from the demo process,
so the next demo on the same folder finds it answering and pays nothing. It stops by itself after
``idle_minutes`` without a demo (``touch``), on ``stop``, or on SIGTERM/SIGINT.

Where things are, under the Prefect home (``DIR/.prefect`` for the demo): ``splash-server.json`` (pid, port,
API URL of the running server), ``splash-server.log`` (its output), ``splash-server.used`` (touched by every
use; its age is the idle time) and ``splash-server.lock`` (serialises starting).

A new folder's server does not create Prefect's database from its 115 SQLite migrations (about 12 s of CPU here):
the first server of an installation saves its freshly migrated, still empty database (and Prefect's
block-registration memo) as a template under ``~/.cache/splash-flows/prefect-VERSION/``
(``$XDG_CACHE_HOME`` or ``$SPLASH_FLOWS_PREFECT_TEMPLATE`` to move it), and every later new folder starts
from a copy of it. One template per Prefect version: another version migrates its own.

Run as ``python -m splash_flows.flows.local_server --home H --port P --idle MINUTES`` (what ``ensure_server``
starts); nothing else imports Prefect's server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splash_flows.errors import OrchestrationError
from splash_flows.processes import child_env, free_port, python_argv

INFO_FILE = "splash-server.json"
LOG_FILE = "splash-server.log"
USED_FILE = "splash-server.used"
LOCK_FILE = "splash-server.lock"
MODULE = "splash_flows.flows.local_server"
#: Minutes a kept server waits for the next demo before it stops: long enough to re-run the demo and try its
#: commands, short enough that nothing lingers (``demo --server-idle``; ``demo --stop-server`` stops it now).
DEFAULT_IDLE_MINUTES = 10.0
DB_FILE = "prefect.db"
MEMO_FILE = "memo_store.toml"
TEMPLATE_ENV = "SPLASH_FLOWS_PREFECT_TEMPLATE"
#: What Prefect's own temporary server sets (``prefect.server.api.server.SubprocessASGIServer``).
EPHEMERAL_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


@dataclass(frozen=True)
class ServerHandle:
    """A kept server: its process id, port and API URL; ``started`` when this call started it."""

    home: Path
    pid: int
    port: int
    started: bool = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _read_info(home: Path) -> ServerHandle | None:
    try:
        data = json.loads((home / INFO_FILE).read_text(encoding="utf-8"))
        return ServerHandle(home=home, pid=int(data["pid"]), port=int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and runs this module (not a process that reused the number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in cmdline


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check now."""
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(home: Path) -> ServerHandle | None:
    """The kept server of ``home`` if its process is alive (it may still be starting), else None."""
    info = _read_info(home)
    return info if info is not None and _is_our_server(info.pid) else None


def touch(home: Path) -> None:
    """Record a use of the server (its idle clock restarts)."""
    (home / USED_FILE).touch()


@contextlib.contextmanager
def _lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_server(home: Path, *, idle_minutes: float = DEFAULT_IDLE_MINUTES) -> ServerHandle:
    """The kept server of ``home``: the running one, or a new one started now (detached, not waited for: see
    ``wait_until_healthy``). Two callers at once start one server."""
    with _lock(home):
        touch(home)
        current = running_server(home)
        if current is not None:
            return current
        port = free_port()
        with open(home / LOG_FILE, "ab") as log:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                python_argv("-m", MODULE, "--home", str(home), "--port", str(port), "--idle", f"{idle_minutes:g}"),
                env=child_env({"PREFECT_HOME": str(home)}), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
        handle = ServerHandle(home=home, pid=popen.pid, port=port, started=True)
        (home / INFO_FILE).write_text(json.dumps({"pid": popen.pid, "port": port}), encoding="utf-8")
        return handle


def wait_until_healthy(handle: ServerHandle, timeout: float = 300.0) -> float:
    """Wait for the server's health check; return the seconds waited. Raises OrchestrationError with the end
    of its log when the process died or did not answer within ``timeout``."""
    start = time.monotonic()
    while not healthy(handle.api_url, timeout=1.0):
        if not _is_our_server(handle.pid):
            raise OrchestrationError(f"the demo's Prefect server (pid {handle.pid}) exited; last lines of "
                                     f"{handle.home / LOG_FILE}:\n{_tail(handle.home / LOG_FILE)}")
        if time.monotonic() - start > timeout:
            raise OrchestrationError(f"the demo's Prefect server at {handle.api_url} did not answer in "
                                     f"{timeout:.0f} s; see {handle.home / LOG_FILE}")
        time.sleep(0.2)
    return time.monotonic() - start


def stop_server(home: Path, timeout: float = 20.0) -> bool:
    """Stop the kept server of ``home``; True if one was running."""
    with _lock(home):
        handle = running_server(home)
        if handle is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_our_server(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _is_our_server(handle.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (home / INFO_FILE).unlink()
        return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def template_dir(prefect_version: str) -> Path:
    """Where the migrated, empty Prefect database of ``prefect_version`` is kept for new folders."""
    if explicit := os.environ.get(TEMPLATE_ENV):
        return Path(explicit) / f"prefect-{prefect_version}"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "splash-flows" / f"prefect-{prefect_version}"


def _own_database() -> bool:
    """Whether Prefect keeps its database in ``PREFECT_HOME`` (not a database the user configured)."""
    return not any(os.environ.get(k) for k in ("PREFECT_API_DATABASE_CONNECTION_URL",
                                               "PREFECT_SERVER_DATABASE_CONNECTION_URL"))


def seed_from_template(home: Path, template: Path) -> bool:
    """Give a new ``home`` a copy of the template database (and block memo); True if it did. A home that has a
    database keeps it; without a template nothing happens (the server migrates a new one, see ``save_template``)."""
    if (home / DB_FILE).exists() or not (template / DB_FILE).is_file():
        return False
    if (template / MEMO_FILE).is_file() and not (home / MEMO_FILE).exists():
        shutil.copyfile(template / MEMO_FILE, home / MEMO_FILE)
    partial = home / f".{DB_FILE}.{os.getpid()}.tmp"
    shutil.copyfile(template / DB_FILE, partial)
    _fsync(partial)
    os.replace(partial, home / DB_FILE)
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_template(home: Path, template: Path) -> bool:
    """Save ``home``'s database as the template; True if it did. Only for a database just created by a server
    that has taken no request yet (``serve`` calls it inside Prefect's start-up for a new home). A consistent
    copy (SQLite's backup API), fsynced and renamed into place last: a concurrent reader sees all of it or none."""
    if (template / DB_FILE).exists() or not (home / DB_FILE).is_file():
        return False
    template.mkdir(parents=True, exist_ok=True)
    if (home / MEMO_FILE).is_file():
        shutil.copyfile(home / MEMO_FILE, template / f".{MEMO_FILE}.{os.getpid()}.tmp")
        os.replace(template / f".{MEMO_FILE}.{os.getpid()}.tmp", template / MEMO_FILE)
    partial = template / f".{DB_FILE}.{os.getpid()}.tmp"
    source = sqlite3.connect(f"file:{home / DB_FILE}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    _fsync(partial)  # a cache, but a torn one would break every new folder
    os.replace(partial, template / DB_FILE)
    return True


def prepare_template(timeout: float = 300.0) -> Path | None:
    """Make the template database now, without a demo: start a server on a temporary Prefect home (it migrates
    a new database and saves it as the template, see ``serve``), wait for it to answer, stop it. What ``make
    install`` runs (``splash-flows demo --prepare``), so that the first demo of an installation does not wait
    for Prefect's migrations. Returns the template folder, or None when Prefect's database is not its own
    (``PREFECT_API_DATABASE_CONNECTION_URL`` set: nothing to prepare). Idempotent: an existing template is
    kept. Raises OrchestrationError when the server fails or no template was written."""
    import tempfile
    from importlib.metadata import version

    if not _own_database():
        return None
    template = template_dir(version("prefect"))
    if (template / DB_FILE).is_file():
        return template
    home = Path(tempfile.mkdtemp(prefix="splash-prefect-template-"))
    try:
        handle = ensure_server(home, idle_minutes=max(1.0, timeout / 60.0))
        try:
            wait_until_healthy(handle, timeout=timeout)
        finally:
            stop_server(home)
        if not (template / DB_FILE).is_file():
            raise OrchestrationError(f"the Prefect server on {home} answered but saved no template in {template}; "
                                     f"last lines of its log:\n{_tail(home / LOG_FILE)}")
        return template
    finally:
        shutil.rmtree(home, ignore_errors=True)


def serve(home: Path, port: int, idle_minutes: float) -> None:  # pragma: no cover - runs as its own process
    """Run Prefect's server app on 127.0.0.1:``port`` until idle for ``idle_minutes`` or signalled."""
    os.environ.update(EPHEMERAL_ENV)
    os.environ["PREFECT_HOME"] = str(home)
    from importlib.metadata import version

    import uvicorn

    template = template_dir(version("prefect")) if _own_database() else None
    new_home = not (home / DB_FILE).exists()  # only a database migrated by this start may become the template
    seeded = template is not None and seed_from_template(home, template)
    print(f"database {'copied from ' + str(template) if seeded else 'in ' + str(home)}", flush=True)

    def app() -> Any:
        """Prefect's app; once its start-up (migrations, block registration) is done and before uvicorn takes
        any request, a database migrated here becomes the template (no flow run can be in it yet)."""
        from prefect.server.api.server import create_app

        from splash_flows.flows.prefect_server import immediate_sqlite_writes

        immediate_sqlite_writes()  # no 503 "database is locked" on a read-then-write (flows/prefect_server.py)
        prefect_app = create_app()
        startup = prefect_app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(asgi: Any) -> AsyncIterator[Any]:
            async with startup(asgi) as state:
                if template is not None and new_home and not seeded:
                    try:
                        if save_template(home, template):
                            print(f"saved the migrated database as the template {template}", flush=True)
                    except (OSError, sqlite3.Error) as err:  # only a lost shortcut: a new folder migrates its own
                        print(f"could not save the template {template}: {err}", flush=True)
                yield state

        prefect_app.router.lifespan_context = lifespan
        return prefect_app

    config = uvicorn.Config(app, factory=True, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)

    def idle_watch() -> None:
        while not server.should_exit:
            time.sleep(5)
            try:
                idle = time.time() - (home / USED_FILE).stat().st_mtime
            except OSError:
                idle = 0.0
            if idle > idle_minutes * 60:
                print(f"idle for {idle / 60:.0f} min: stopping", flush=True)
                server.should_exit = True

    threading.Thread(target=idle_watch, name="idle-watch", daemon=True).start()
    try:
        server.run()
    finally:
        info = _read_info(home)
        if info is not None and info.pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (home / INFO_FILE).unlink()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - runs as its own process
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_MINUTES, help="minutes without use before stopping")
    args = ap.parse_args(argv)
    serve(args.home.resolve(), args.port, args.idle)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
