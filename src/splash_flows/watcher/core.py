"""The ``Watcher``: lifecycle (observer, threads, stop) of the parts in this package."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from splash_flows.errors import (
    ConfigError,
    SplashFlowsError,
    TierError,
)
from splash_flows.watcher.batching import BatchingMixin
from splash_flows.watcher.outbox import OutboxMixin
from splash_flows.watcher.readiness import WATCHED_EVENTS, ReadinessMixin
from splash_flows.watcher.scan import ScanMixin

log = logging.getLogger("splash_flows.watcher")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher._on_fs_event(event)


class Watcher(ReadinessMixin, BatchingMixin, OutboxMixin, ScanMixin):
    """Watches the move source tier's root and turns ready files into dispatcher runs through ``trigger``.

    ``start()`` starts the observer, then the backfill scan; ``stop()`` stops everything and joins its threads
    (batches already written to the outbox stay pending for the next start). Thread-safe; one per root.
    """

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load in-flight outbox entries, start listening, then replay the outbox and scan the tree."""
        if self._started:
            raise RuntimeError("a Watcher can be started once")
        self._started = True
        if not self.root.is_dir():
            raise TierError(f"watched root {self.root} does not exist or is not a folder", tier=self.tier)
        self._load_in_flight()
        self._root_identity = _identity(self.root)
        self.observer = self._make_observer()
        self.observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=WATCHED_EVENTS)
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).addHandler(self._overflow_handler)
        try:
            self.observer.start()
        except OSError as err:
            raise TierError(f"cannot watch {self.root}: {err.strerror or err} (inotify limits? see "
                            "/proc/sys/fs/inotify/max_user_watches and max_user_instances, or use watcher.mode: "
                            "polling)", tier=self.tier) from None
        for name, target in (("watcher-loop", self._loop), ("watcher-scan", self._scanner),
                             ("watcher-send", self._sender), ("watcher-mark", self._marker)):
            thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        self.request_scan("")
        log.info("watching %s (tier %s, %s mode, quiet period %g s) -> deployment %s",
                 self.root, self.tier, self.settings.mode, self.settings.quiet_period_s, self.settings.deployment)

    def _make_observer(self) -> BaseObserver:
        if self.settings.mode == "polling":
            from watchdog.observers.polling import PollingObserverVFS

            # lstat: a symlinked folder is reported as one (refused) entry, never walked into
            return PollingObserverVFS(os.lstat, os.scandir, polling_interval=self.settings.poll_interval_s)
        try:
            from watchdog.observers.inotify import InotifyObserver
        except ImportError as err:  # not Linux
            raise ConfigError(f"watcher.mode inotify is not available here ({err}); use mode: polling") from None
        # full events: a file moved in from outside the tree is a "moved" event (complete), not a "created" one
        return InotifyObserver(generate_full_events=True)

    def request_stop(self) -> None:
        """Ask the watcher to stop (safe from a signal handler); ``wait`` then returns."""
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop was requested or a thread failed. True if so, False on timeout."""
        return self._done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the observer, write ready files to the outbox, join every thread. Idempotent."""
        self._done.set()
        if self._stop.is_set():
            return
        if self.observer is not None:
            with contextlib.suppress(RuntimeError):  # never started
                self.observer.stop()
                self.observer.join(timeout)
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).removeHandler(self._overflow_handler)
        self._stop.set()
        self._wake.set()
        with self._scan_cv:
            self._scan_cv.notify_all()
        with self._send_cv:
            self._send_cv.notify_all()
        with self._mark_cv:
            self._mark_cv.notify_all()
        with self._backlog_cv:
            self._backlog_cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not finish within %g s (a trigger call still waiting on Prefect?); its outbox "
                            "entry stays pending and is replayed on the next start", thread.name, timeout)
        self.drain_marks()
        pending = self.outbox_counts().get("pending", 0)
        log.info("watcher stopped%s", f"; {pending} batch(es) pending in the outbox" if pending else "")

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as err:  # a crashed thread must stop the watcher loudly, not die silently
            self.fatal = err
            log.critical("watcher thread %s crashed, stopping: %s", threading.current_thread().name, err,
                         exc_info=True)
            self._done.set()

    def _loop(self) -> None:
        next_rescan = time.monotonic() + self.settings.rescan_interval_s
        periodic = 0
        while not self._stop.is_set():
            self._wake.wait(self._tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            self._check_root()
            self.check_candidates(now)
            self.flush_batches(now)
            with self._backlog_cv:
                self._backlog_cv.notify_all()
            if now >= next_rescan:
                periodic += 1  # every full_rescan_every-th one is full, the others light
                self.request_scan("", light=periodic % self.settings.full_rescan_every != 0)
                next_rescan = now + self.settings.rescan_interval_s
            if self.observer is not None and not self.observer.is_alive() and not self._done.is_set():
                raise TierError(f"the file observer on {self.root} stopped (root deleted or unmounted?)",
                                tier=self.tier)
        self.flush_batches(time.monotonic(), force=True, notify=False)

    def _check_root(self) -> None:
        """Notice the watched root being unmounted or (re)mounted: the folder at its path is another one then
        (device and inode differ), without an event for any file under it. Every file in flight is released
        (``_release_claims``: its run could not copy it while it was away), inotify watches the folder now at the
        path (a remounted file system is a new one to the kernel: the old watches ended with the unmount), and a
        full rescan sends what is there and not verified."""
        identity = _identity(self.root)
        if identity == self._root_identity:
            return
        self._root_identity = identity
        log.warning("the watched root %s %s (unmounted or remounted?): rescanning it", self.root,
                    "is gone" if identity is None else "is another folder now")
        self._release_claims(None, "the watched root was unmounted or remounted")
        if self.settings.mode == "inotify" and identity is not None and self.observer is not None:
            try:
                self.observer.unschedule_all()
                self.observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=WATCHED_EVENTS)
            except OSError as err:  # gone again meanwhile: the next change of identity tries again
                log.error("cannot watch %s again: %s", self.root, err.strerror or err)
        self.request_scan("")


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def run_until_signalled(watcher: Watcher) -> int:
    """Start ``watcher`` and run until SIGTERM or SIGINT; stop it cleanly. Returns the process exit code
    (0 after a signal, 1 when a watcher thread crashed). Must be called from the main thread."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        watcher.request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        watcher.start()
        while not watcher.wait(1.0):
            pass
    except SplashFlowsError:
        watcher.stop()
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    watcher.stop()
    return 1 if watcher.fatal is not None else 0
