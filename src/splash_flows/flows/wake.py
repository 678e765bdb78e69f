"""A nudge from the watcher to the in-process runner on the same host: "a run was just created, poll now".

Why: the runner finds new runs by polling the Prefect server (one read every ``--poll`` seconds, 0.25 s by
default): on average half a poll interval passes between the watcher's trigger and the runner's claim. When
both run on one host (``splash-flows up``, the flow-733 VM), the watcher's trigger sends one datagram after
Prefect accepted the run, and the runner polls at once. The run is still created, claimed and executed through
Prefect exactly as before (the nudge carries nothing but "poll"): a lost nudge costs one poll interval, a
nudge without a run costs one read, and a runner that is not listening (process workers, another host) is
simply not nudged.

The socket is a Linux abstract Unix datagram socket (no file to clean up, no path-length limit): its name is
``SPLASH_FLOWS_RUNNER_WAKE`` in both processes' environment (``up`` sets it per stack root). Unset: no nudge.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("splash_flows.runner")

#: Environment variable naming the runner's wake socket (shared by the watcher and the runner of one stack).
WAKE_ENV = "SPLASH_FLOWS_RUNNER_WAKE"


def wake_name(root: str) -> str:
    """The wake socket name of the stack rooted at ``root`` (one per stack, so two stacks never nudge each
    other's runner)."""
    return "splash-flows-runner-" + hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]


def _address(name: str) -> str:
    return "\0" + name  # Linux abstract namespace


def send_wake(name: str | None = None, deployment_id: str | None = None) -> bool:
    """Nudge the runner listening on ``name`` (default: ``$SPLASH_FLOWS_RUNNER_WAKE``), saying which deployment
    has a new run (the runner then polls that deployment's pool without first reading which are due). Never
    blocks, never raises: True if a runner received it, False when none listens (or no name is set)."""
    name = name if name is not None else os.environ.get(WAKE_ENV)
    if not name:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto((deployment_id or "poll").encode("ascii", "replace")[:64], _address(name))
    except OSError:  # nobody listens (ECONNREFUSED), its queue is full (EAGAIN: it will poll anyway)
        return False
    return True


class WakeListener:
    """The runner's end: a thread that calls ``on_wake(payload)`` for every datagram received on ``name``."""

    def __init__(self, name: str, on_wake: Callable[[bytes], None]) -> None:
        self.name = name
        self.on_wake = on_wake
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(_address(name))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.5)  # a blocked recv is not interrupted by close(): look at _closed twice a second
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="runner-wake", daemon=True)

    def start(self) -> WakeListener:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                payload = self._sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.on_wake(payload)

    def close(self) -> None:
        """Stop listening (idempotent)."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        with contextlib.suppress(OSError):
            self._sock.close()


def listen(name: str | None, on_wake: Callable[[bytes], None]) -> WakeListener | None:
    """Start a ``WakeListener`` on ``name`` (default ``$SPLASH_FLOWS_RUNNER_WAKE``); None when no name is set or
    another runner of this stack already listens there (it alone is nudged; this one polls)."""
    name = name if name is not None else os.environ.get(WAKE_ENV)
    if not name:
        return None
    try:
        listener = WakeListener(name, on_wake).start()
    except OSError as err:
        log.info("not listening for the watcher's nudges on %s (%s): runs are found by polling", name, err)
        return None
    log.debug("listening for the watcher's nudges on %s", name)
    return listener
