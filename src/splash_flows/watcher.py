"""The file watcher: finished files on the move source tier (``data733``) become dispatcher runs, in batches.

Plain Python (no Prefect import): the Prefect side is a ``Trigger`` (``splash_flows.flows.trigger``) handed in.

When is a file ready?
  * inotify mode: it was closed after writing (watchdog ``FileClosedEvent``, Linux ``IN_CLOSE_WRITE``) -- or
    renamed into place, the usual "write a temporary name, then rename" -- AND its size and mtime stayed
    unchanged for ``quiet_period_s`` after that. Any write after the close puts it back to waiting for a close.
    So a partially written file is never sent, and a file that keeps growing is held until it stops.
  * polling mode (network mounts, where inotify sees nothing): there is no close event; size and mtime
    unchanged for the quiet period is the whole rule, so the quiet period must exceed the longest pause a
    writer makes in the middle of a file.
  * Files found by a scan (startup backfill, periodic rescan, a folder created or moved in) saw no close
    event: they wait only for the quiet period, unless inotify reported a write to them recently (then they
    wait for its close). A scan therefore also rescues files whose close event inotify dropped.
A ready file is then checked against the ledger: if this version (size, mtime) is already verified on every
move target it is not sent again. Deleted before ready: dropped with an INFO line. 0-byte files are valid.
Symlinks are never sent: one pointing outside the root is refused with a WARNING line (and a ``refused`` ledger
event); one pointing inside is skipped, its target being sent under its own name. Names that are not valid
UTF-8, and things that are not regular files (FIFOs, sockets), are refused the same way. Files the watcher
cannot read are SENT (with a WARNING): the watcher only needs to stat them, the workers may run as another
user, and the move records any read failure per file in the ledger.

Batching and triggering: ready files are grouped per folder (one scan); a batch is closed ``batch_window_s``
after its first file or at ``max_batch_files``, written to the ledger's outbox (committed), and only then sent:
ONE dispatcher run per batch. The sender sends pending outbox entries strictly oldest first; when Prefect cannot
be reached the entry stays pending and is retried every ``outbox_replay_interval_s``, so later batches queue
behind it and are replayed in order. On start, pending entries are replayed first and the files of entries
still in flight (pending, or sent within ``resend_after_s``) are not batched again.

Listening starts BEFORE the backfill scan, so nothing written during the scan is missed; rescans every
``rescan_interval_s`` (and right after an inotify queue overflow) catch dropped events. Crash safety: a file
detected but not yet in the outbox when the process dies is found again by the next startup backfill; a batch
in the outbox is replayed with its stored idempotency key, so a batch Prefect accepted just before a
``kill -9`` does not become a second run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import signal
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from splash_flows.config import Config, LocalTierConfig
from splash_flows.errors import (
    ConfigError,
    LedgerError,
    OrchestrationError,
    PathEscapeError,
    SplashFlowsError,
    TierError,
    TriggerRejected,
)
from splash_flows.ledger import EventKind, Ledger
from splash_flows.ledger.models import utcnow
from splash_flows.ledger.outbox import Outbox, OutboxRecord, verified_versions
from splash_flows.paths import normalize_relpath, safe_join

log = logging.getLogger("splash_flows.watcher")

Version = tuple[int, float]  # (size, mtime) as the ledger records a source file version


class Trigger(Protocol):
    """Starts one dispatcher run for a batch of source-tier-relative paths."""

    def trigger(self, paths: list[str], idempotency_key: str) -> str:
        """Create the run and return its flow run id. The same ``idempotency_key`` must return the same run.

        Raises ``OrchestrationError`` when the orchestrator cannot be reached (the batch is replayed later) and
        ``TriggerRejected`` when it refused this request for good."""
        ...


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher just did, for benchmarks and tests (``hook``). ``at`` is ``time.time()``.

    kinds: ``ready`` (one file passed the readiness rules; detail ``closed_at`` = wall time of its close event or
    None), ``queued`` (a batch was written to the outbox; detail ``entry_id``), ``sent`` (Prefect accepted a
    batch; detail ``entry_id``, ``flow_run_id``, ``close_to_trigger_s`` = the longest close -> trigger time in the
    batch, None when unknown), ``send_failed`` (detail ``entry_id``, ``error``, ``permanent``), ``dropped``
    (deleted before ready), ``refused`` (detail ``reason``), ``rescan`` (detail ``found``, ``seconds``)."""

    kind: str
    paths: tuple[str, ...]
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)


WatchHook = Callable[[WatchEvent], None]


@dataclass
class _Candidate:
    """A file seen but not yet ready. ``generation`` changes with every event, so a stat taken outside the lock
    is only trusted when no event arrived meanwhile."""

    closed: bool
    written: bool
    stable_since: float
    last_event: float
    next_check: float
    closed_at: float | None = None
    close_seen: bool = False  # closed by a close/rename event (not merely found by a scan)
    stat_key: tuple[int, int] | None = None  # (size, mtime_ns) at the start of the current quiet period
    generation: int = 0


@dataclass
class _Claim:
    """A file handed to a batch: not batched again while this version is in flight. ``version`` None: any
    version (loaded from the outbox at start, where versions are not stored)."""

    version: Version | None
    until: float


@dataclass
class _Batch:
    folder: str
    opened: float
    paths: list[str] = field(default_factory=list)
    closed_at: list[float | None] = field(default_factory=list)


class _OverflowSpotter(logging.Handler):
    """watchdog reports an inotify queue overflow only as a WARNING log line; this turns it into a rescan."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher._on_fs_event(event)


_WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]


def _decode(path: bytes | str) -> str:
    return os.fsdecode(path)


class Watcher:
    """Watches the move source tier's root and turns ready files into dispatcher runs through ``trigger``.

    ``start()`` starts the observer, then the backfill scan; ``stop()`` stops everything and joins its threads
    (batches already written to the outbox stay pending for the next start). Thread-safe; one per root.
    """

    def __init__(self, config: Config, ledger: Ledger, trigger: Trigger, *, hook: WatchHook | None = None) -> None:
        tier_cfg = config.tier(config.move.source)
        if not isinstance(tier_cfg, LocalTierConfig):
            raise ConfigError(f"the watcher needs the move source tier {config.move.source!r} to be a folder "
                              f"(kind local), not {tier_cfg.kind!r}")
        self.config = config
        self.settings = config.watcher
        self.tier = config.move.source
        self.targets = list(config.move.targets)
        # resolved: inotify must watch the real folder, and event paths must share one spelling with scans
        self.root = Path(os.path.realpath(tier_cfg.root))
        self.ledger = ledger
        self.outbox = Outbox(ledger)
        self.trigger = trigger
        self.hook = hook
        self.fatal: BaseException | None = None
        self.observer: BaseObserver | None = None

        self._ignore = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.settings.ignore_patterns)
                                  or r"(?!x)x")
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        self._claims: dict[str, _Claim] = {}
        self._batches: dict[str, _Batch] = {}
        self._refused: set[tuple[str, str]] = set()
        self._known_refusals = _recorded_refusals(ledger, self.tier)
        self._still_refused = 0
        self._recently_dropped: dict[str, float] = {}
        self._timing: dict[int, tuple[str, float | None]] = {}
        self._scan_requests: set[str] = set()
        self._scan_cv = threading.Condition()
        self._send_cv = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._overflow_handler = _OverflowSpotter(lambda: self.request_scan(""))
        self._started = False
        self._flush_retry_at = 0.0
        self._backfilled = False
        self._scan_idle = threading.Event()
        self._scan_idle.set()
        tick_basis = [0.1, self.settings.quiet_period_s / 4]
        if self.settings.batch_window_s > 0:
            tick_basis.append(self.settings.batch_window_s / 4)
        self._tick = max(0.01, min(tick_basis))

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load in-flight outbox entries, start listening, then replay the outbox and scan the tree."""
        if self._started:
            raise RuntimeError("a Watcher can be started once")
        self._started = True
        if not self.root.is_dir():
            raise TierError(f"watched root {self.root} does not exist or is not a folder", tier=self.tier)
        self._load_in_flight()
        self.observer = self._make_observer()
        self.observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=_WATCHED_EVENTS)
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).addHandler(self._overflow_handler)
        try:
            self.observer.start()
        except OSError as err:
            raise TierError(f"cannot watch {self.root}: {err.strerror or err} (inotify limits? see "
                            "/proc/sys/fs/inotify/max_user_watches and max_user_instances, or use watcher.mode: "
                            "polling)", tier=self.tier) from None
        for name, target in (("watcher-loop", self._loop), ("watcher-scan", self._scanner),
                             ("watcher-send", self._sender)):
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
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not finish within %g s (a trigger call still waiting on Prefect?); its outbox "
                            "entry stays pending and is replayed on the next start", thread.name, timeout)
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

    def _emit(self, kind: str, paths: tuple[str, ...], **detail: Any) -> None:
        if self.hook is not None:
            self.hook(WatchEvent(kind, paths, time.time(), detail))

    def outbox_counts(self) -> dict[str, int]:
        try:
            return self.outbox.counts()
        except LedgerError as err:
            log.error("cannot read the outbox: %s", err)
            return {}

    # ------------------------------------------------------------------------------------------ paths

    def relpath(self, abs_path: str) -> str | None:
        """The tier-relative path of an event path, or None if it is outside the root or ignored."""
        root = str(self.root)
        if not abs_path.startswith(root.rstrip(os.sep) + os.sep):
            return None
        rel = abs_path[len(root.rstrip(os.sep)) + 1:]
        if not rel or any(self._ignore.match(part) for part in rel.split(os.sep)):
            return None
        return rel.replace(os.sep, "/")

    def is_ignored_name(self, name: str) -> bool:
        return self._ignore.match(name) is not None

    def _refuse(self, rel: str, reason: str, *, record: bool = True) -> None:
        """One WARNING line (and one ``refused`` ledger event) per path and reason for the life of the process;
        a refusal the ledger already holds from before this start is only counted (``_known_refusals``) and
        summarised in one line after the backfill, not warned again at every restart."""
        key = (rel, reason)
        with self._lock:
            if key in self._refused:
                return
            self._refused.add(key)
            self._candidates.pop(rel, None)
            known = key in self._known_refusals
            self._still_refused += known
        if known:
            log.debug("still refused %s:%s: %s", self.tier, rel, reason)
            self._emit("refused", (rel,), reason=reason)
            return
        log.warning("refused %s:%s: %s", self.tier, rel, reason)
        if record:
            try:
                self.ledger.record_failed(rel, self.tier, reason, kind=EventKind.REFUSED)
            except LedgerError as err:
                log.error("cannot record the refusal of %s in the ledger: %s", rel, err)
        self._emit("refused", (rel,), reason=reason)

    def _check_name(self, rel: str) -> bool:
        """Refuse names that cannot travel (not UTF-8, or not a clean relative path)."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self._refuse(ascii(rel)[1:-1], "file name is not valid UTF-8; rename it", record=False)
            return False
        try:
            normalize_relpath(rel, tier=self.tier)
        except PathEscapeError as err:
            self._refuse(rel, str(err))
            return False
        return True

    def _symlink(self, rel: str) -> None:
        """A symlink is never sent: refused when it leads outside the root, skipped when inside."""
        try:
            target = safe_join(self.root, rel, tier=self.tier)
        except PathEscapeError as err:
            self._refuse(rel, f"symlink pointing outside the watched root ({err})")
            return
        with self._lock:
            self._candidates.pop(rel, None)
        log.debug("skipping symlink %s -> %s: its target is sent under its own name", rel, os.path.realpath(target))

    # ------------------------------------------------------------------------------------------ events

    def _on_fs_event(self, event: FileSystemEvent) -> None:
        """Called on the observer thread: cheap bookkeeping only (no I/O but an lstat on create)."""
        src = _decode(event.src_path)
        dest = _decode(event.dest_path) if event.dest_path else ""
        log.debug("event %s %s%s", event.event_type, src, f" -> {dest}" if dest else "")
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            rel_dir = self.relpath(dest or src) if isinstance(event, DirMovedEvent) else self.relpath(src)
            if rel_dir is not None:
                self.request_scan(rel_dir)
            return
        if isinstance(event, DirDeletedEvent):
            return
        if isinstance(event, FileMovedEvent):
            if src:
                self._forget(src, "renamed")
            if dest:
                self._touch(dest, closed=True, written=False)
            return
        if isinstance(event, FileDeletedEvent):
            self._forget(src, "deleted")
        elif isinstance(event, FileClosedEvent):
            self._touch(src, closed=True, written=False)
        elif isinstance(event, FileModifiedEvent):
            self._touch(src, closed=self.settings.mode == "polling", written=True)
        elif isinstance(event, FileCreatedEvent):
            with contextlib.suppress(OSError):
                if stat_mod.S_ISLNK(os.lstat(src).st_mode):
                    rel = self.relpath(src)
                    if rel is not None:
                        self._symlink(rel)
                    return
            self._touch(src, closed=self.settings.mode == "polling", written=False, created=True)

    def _touch(self, abs_path: str, *, closed: bool, written: bool, created: bool = False) -> None:
        rel = self.relpath(abs_path)
        if rel is None or not self._check_name(rel):
            return
        now = time.monotonic()
        with self._lock:
            cand = self._candidates.get(rel)
            if cand is not None and created:
                # watchdog also reports files already inside a new folder as "created"; a scan of that folder
                # may have been first. A create says nothing about writing: keep what is known.
                return
            if cand is None:
                cand = _Candidate(closed=closed, written=written, stable_since=now, last_event=now, next_check=now,
                                  close_seen=closed)
                self._candidates[rel] = cand
            else:
                cand.close_seen = closed
                cand.closed = closed
                cand.written = written or (cand.written and not closed)
                cand.stable_since = now
                cand.last_event = now
                cand.next_check = now
                cand.stat_key = None
                cand.generation += 1
            if closed and self.settings.mode == "inotify":
                cand.closed_at = time.time()
        self._wake.set()

    def _forget(self, abs_path: str, why: str) -> None:
        rel = self.relpath(abs_path)
        if rel is None:
            return
        with self._lock:
            was_candidate = self._candidates.pop(rel, None) is not None
            in_batch = False
            for batch in self._batches.values():
                if rel in batch.paths:
                    i = batch.paths.index(rel)
                    del batch.paths[i], batch.closed_at[i]
                    in_batch = True
            if in_batch:
                self._claims.pop(rel, None)
        if was_candidate or in_batch:
            self._dropped(rel, f"{why} before it was {'sent' if in_batch else 'ready'}")

    def _dropped(self, rel: str, reason: str) -> None:
        """One INFO line per dropped file (a scan that listed it just before the deletion does not repeat it)."""
        now = time.monotonic()
        with self._lock:
            last = self._recently_dropped.get(rel)
            self._recently_dropped[rel] = now
            if len(self._recently_dropped) > 10_000:
                self._recently_dropped = {r: t for r, t in self._recently_dropped.items() if now - t < 60}
        if last is not None and now - last < 60:
            log.debug("dropped %s again: %s", rel, reason)
            return
        log.info("dropped %s:%s: %s", self.tier, rel, reason)
        self._emit("dropped", (rel,), reason=reason)

    # ------------------------------------------------------------------------------------------ readiness

    def _loop(self) -> None:
        next_rescan = time.monotonic() + self.settings.rescan_interval_s
        while not self._stop.is_set():
            self._wake.wait(self._tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            self.check_candidates(now)
            self.flush_batches(now)
            if now >= next_rescan:
                self.request_scan("")
                next_rescan = now + self.settings.rescan_interval_s
            if self.observer is not None and not self.observer.is_alive() and not self._done.is_set():
                raise TierError(f"the file observer on {self.root} stopped (root deleted or unmounted?)",
                                tier=self.tier)
        self.flush_batches(time.monotonic(), force=True, notify=False)

    def check_candidates(self, now: float) -> int:
        """Stat the candidates due a check; move the ready ones into batches. Returns how many became ready."""
        quiet = self.settings.quiet_period_s
        with self._lock:
            due = [(rel, c.generation) for rel, c in self._candidates.items() if c.closed and c.next_check <= now]
        if not due:
            return 0
        observed: list[tuple[str, int, os.stat_result | None, OSError | None]] = []
        for rel, gen in due:
            try:
                observed.append((rel, gen, os.lstat(self.root / rel), None))
            except FileNotFoundError:
                observed.append((rel, gen, None, None))
            except OSError as err:
                observed.append((rel, gen, None, err))
        ready: list[tuple[str, os.stat_result, float | None]] = []
        unconfirmed: list[tuple[str, int, os.stat_result]] = []
        dropped: list[str] = []
        odd: list[tuple[str, str]] = []
        with self._lock:
            for rel, gen, st, stat_err in observed:
                cand = self._candidates.get(rel)
                if cand is None or cand.generation != gen:
                    continue  # an event arrived meanwhile: look again next tick
                if stat_err is not None:
                    self._candidates.pop(rel)
                    odd.append((rel, f"cannot stat: {stat_err.strerror or stat_err}"))
                    continue
                if st is None:
                    self._candidates.pop(rel)
                    dropped.append(rel)
                    continue
                if not stat_mod.S_ISREG(st.st_mode):
                    self._candidates.pop(rel)
                    odd.append((rel, "symlink" if stat_mod.S_ISLNK(st.st_mode) else "not a regular file"))
                    continue
                key = (st.st_size, st.st_mtime_ns)
                if cand.stat_key != key:
                    if cand.stat_key is not None:
                        cand.stable_since = now
                    cand.stat_key = key
                    cand.next_check = max(now, cand.stable_since + quiet)
                    if cand.next_check > now:
                        continue
                if now - cand.stable_since >= quiet:
                    if self.settings.mode == "inotify" and not cand.close_seen:
                        unconfirmed.append((rel, gen, st))  # found by a scan: is a writer still holding it?
                    else:
                        self._candidates.pop(rel)
                        ready.append((rel, st, cand.closed_at))
                else:
                    cand.next_check = cand.stable_since + quiet
        if unconfirmed:
            writers = files_open_for_writing([self.root / rel for rel, _, _ in unconfirmed])
            with self._lock:
                for rel, gen, st in unconfirmed:
                    cand = self._candidates.get(rel)
                    if cand is None or cand.generation != gen:
                        continue
                    if writers is not None and os.path.realpath(self.root / rel) in writers:
                        log.debug("%s is still open for writing: waiting for its close event", rel)
                        cand.closed = False
                        cand.written = True
                    else:
                        self._candidates.pop(rel)
                        ready.append((rel, st, None))
        for rel in dropped:
            self._dropped(rel, "deleted before it was ready")
        for rel, what in odd:
            if what == "symlink":
                self._symlink(rel)
            else:
                self._refuse(rel, what)
        escaped = []
        for rel, _st, _closed in ready:
            try:
                safe_join(self.root, rel, tier=self.tier)
            except PathEscapeError as err:  # a symlinked folder on the way (polling snapshots, races)
                self._refuse(rel, str(err))
                escaped.append(rel)
        ready = [r for r in ready if r[0] not in escaped]
        if ready:
            self._accept(ready, now)
        return len(ready)

    def _accept(self, ready: list[tuple[str, os.stat_result, float | None]], now: float) -> None:
        """Ready files: skip those already verified (this version) or in flight; batch the rest."""
        try:
            verified = verified_versions(self.ledger, self.tier, self.targets, [r for r, _, _ in ready])
        except LedgerError as err:
            log.error("cannot check the ledger for %d ready file(s), sending them anyway: %s", len(ready), err)
            verified = {}
        unreadable: list[str] = []
        accepted: list[tuple[str, float | None]] = []
        sizes: dict[str, int] = {}
        with self._lock:
            for rel, st, closed_at in ready:
                version = (st.st_size, st.st_mtime)
                if verified.get(rel) == version:
                    log.debug("%s is already verified on %s; not sent again", rel, ", ".join(self.targets))
                    continue
                claim = self._claims.get(rel)
                if claim is not None and claim.version in (None, version):
                    log.debug("%s is already in flight; not sent again", rel)
                    continue
                self._claims[rel] = _Claim(version, now + self.settings.resend_after_s)
                folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
                batch = self._batches.get(folder)
                if batch is None:
                    batch = self._batches[folder] = _Batch(folder, now)
                elif rel in batch.paths:  # rewritten while its batch was open: the run copies the current file
                    continue
                batch.paths.append(rel)
                batch.closed_at.append(closed_at)
                accepted.append((rel, closed_at))
                sizes[rel] = st.st_size
                if not os.access(self.root / rel, os.R_OK):
                    unreadable.append(rel)
        for rel in unreadable:
            log.warning("%s:%s is not readable by the watcher (uid %d); sending it anyway: the move records "
                        "whether the workers can read it", self.tier, rel, os.getuid())
        for rel, closed_at in accepted:
            self._emit("ready", (rel,), closed_at=closed_at, size=sizes[rel])

    # ------------------------------------------------------------------------------------------ batches

    def flush_batches(self, now: float, *, force: bool = False, notify: bool = True) -> int:
        """Write due batches (full, or older than the window; all with ``force``) to the outbox. Returns how many."""
        if now < self._flush_retry_at and not force:
            return 0
        window, limit = self.settings.batch_window_s, self.settings.max_batch_files
        with self._lock:
            due: list[_Batch] = []
            for folder, batch in list(self._batches.items()):
                if not batch.paths:
                    del self._batches[folder]
                elif force or len(batch.paths) >= limit or now - batch.opened >= window:
                    del self._batches[folder]
                    due.append(batch)
        written = 0
        for i, batch in enumerate(due):
            for start in range(0, len(batch.paths), limit):
                paths = batch.paths[start:start + limit]
                closes = [c for c in batch.closed_at[start:start + limit] if c is not None]
                try:
                    rec = self.outbox.add(self.settings.deployment, paths)
                except LedgerError as err:
                    log.error("cannot write a batch of %d file(s) in %s to the outbox (retrying in %g s): %s",
                              len(paths), batch.folder or "/", self.settings.outbox_replay_interval_s, err)
                    self._flush_retry_at = now + self.settings.outbox_replay_interval_s
                    with self._lock:  # put back everything not yet written, ahead of newer files
                        for rest in [_Batch(batch.folder, batch.opened, batch.paths[start:],
                                            batch.closed_at[start:]), *due[i + 1:]]:
                            cur = self._batches.get(rest.folder)
                            if cur is not None:
                                rest.paths += cur.paths
                                rest.closed_at += cur.closed_at
                            self._batches[rest.folder] = rest
                    return written
                written += 1
                with self._lock:
                    self._timing[rec.id] = (batch.folder, min(closes) if closes else None)
                log.debug("outbox entry %d: %d file(s) in %s", rec.id, len(paths), batch.folder or "/")
                self._emit("queued", tuple(paths), entry_id=rec.id)
        if written and notify:
            with self._send_cv:
                self._send_cv.notify_all()
        return written

    # ------------------------------------------------------------------------------------------ sending

    def _load_in_flight(self) -> None:
        """Files of pending entries, and of entries sent within ``resend_after_s``, are not batched again."""
        since = utcnow() - timedelta(seconds=self.settings.resend_after_s)
        records = self.outbox.in_flight(since)
        now, wall = time.monotonic(), utcnow()
        pending = 0
        for rec in records:
            age = (wall - rec.sent_at).total_seconds() if rec.sent_at is not None else 0.0
            until = now + max(0.0, self.settings.resend_after_s - age)
            for rel in rec.paths:
                self._claims[rel] = _Claim(None, until)
            pending += rec.state == "pending"
        if pending:
            log.info("%d batch(es) pending in the outbox from before: replaying them first", pending)

    def _sender(self) -> None:
        failing = False
        interval = self.settings.outbox_replay_interval_s
        while not self._stop.is_set():
            try:
                rec = self.outbox.next_pending()
            except LedgerError as err:
                log.error("cannot read the outbox (retrying in %g s): %s", interval, err)
                with self._send_cv:
                    self._send_cv.wait(interval)
                continue
            if rec is None:
                with self._send_cv:
                    if not self._stop.is_set():
                        self._send_cv.wait(interval)
                continue
            ok = self._send(rec, failing)
            if ok is None:  # transient failure: wait, then retry the same (oldest) entry
                failing = True
                with self._send_cv:
                    if not self._stop.is_set():
                        self._send_cv.wait(interval)
            else:
                failing = False

    def _send(self, rec: OutboxRecord, failing: bool) -> bool | None:
        """Send one entry. True: sent; False: refused for good (marked failed); None: try again later."""
        started = time.monotonic()
        try:
            run_id = self.trigger.trigger(list(rec.paths), rec.idempotency_key)
        except TriggerRejected as err:
            log.error("outbox entry %d (%d file(s)) refused by Prefect for good, marked failed: %s",
                      rec.id, len(rec.paths), err)
            self._ledger_call(self.outbox.mark_failed, rec.id, str(err))
            with self._lock:
                self._timing.pop(rec.id, None)
            self._emit("send_failed", rec.paths, entry_id=rec.id, error=str(err), permanent=True)
            return False
        except OrchestrationError as err:
            if not failing:
                pending = self.outbox_counts().get("pending", "?")
                log.warning("cannot trigger %s (%s batch(es) wait in the outbox; retrying every %g s): %s",
                            self.settings.deployment, pending, self.settings.outbox_replay_interval_s, err)
            else:
                log.debug("trigger still failing: %s", err)
            self._ledger_call(self.outbox.record_attempt, rec.id, str(err))
            self._emit("send_failed", rec.paths, entry_id=rec.id, error=str(err), permanent=False)
            return None
        elapsed = time.monotonic() - started
        if failing:
            log.info("Prefect accepts triggers again: replaying the outbox in order")
        self._ledger_call(self.outbox.mark_sent, rec.id, run_id)
        with self._lock:
            timing = self._timing.pop(rec.id, None)
        first_close = timing[1] if timing is not None else None
        latency = time.time() - first_close if first_close is not None else None
        if timing is None:
            how = ", replayed from the outbox"
        elif latency is None:
            how = ", found by a scan"
        else:
            how = f", close->trigger {latency:.2f} s"
        log.info("batch %d: %d file(s) in %s -> flow run %s (trigger %.2f s%s)", rec.id, len(rec.paths),
                 os.path.dirname(rec.paths[0]) or "/", run_id, elapsed, how)
        self._emit("sent", rec.paths, entry_id=rec.id, flow_run_id=run_id, close_to_trigger_s=latency)
        return True

    def _ledger_call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except LedgerError as err:
            log.error("cannot update the outbox (the entry is replayed with the same idempotency key): %s", err)

    # ------------------------------------------------------------------------------------------ scanning

    def request_scan(self, prefix: str = "") -> None:
        """Ask the scan thread to scan ``prefix`` (tier-relative folder; "" = the whole tree)."""
        with self._scan_cv:
            self._scan_requests.add(prefix)
            self._scan_idle.clear()
            self._scan_cv.notify_all()

    def wait_scans_idle(self, timeout: float) -> bool:
        """Block until no scan is requested or running (tests and benchmarks)."""
        return self._scan_idle.wait(timeout)

    def _scanner(self) -> None:
        while not self._stop.is_set():
            with self._scan_cv:
                while not self._scan_requests and not self._stop.is_set():
                    self._scan_idle.set()
                    self._scan_cv.wait()
                if self._stop.is_set():
                    return
                prefixes = {""} if "" in self._scan_requests else set(self._scan_requests)
                self._scan_requests.clear()
            for prefix in sorted(prefixes):
                self.rescan(prefix)

    def rescan(self, prefix: str = "") -> int:
        """Walk ``prefix`` (the whole tree by default) and offer every file not verified (this version) and not
        in flight as a candidate. Returns how many new candidates it found. Also usable directly (tests)."""
        started = time.monotonic()
        now = started
        with self._lock:
            for rel in [r for r, c in self._claims.items() if c.until <= now]:
                del self._claims[rel]
        found = 0
        try:
            for folder_files in self._walk(prefix):
                if self._stop.is_set():
                    break
                try:
                    verified = verified_versions(self.ledger, self.tier, self.targets, [r for r, _ in folder_files])
                except LedgerError as err:
                    log.error("rescan: cannot read the ledger, treating %d file(s) as not yet verified: %s",
                              len(folder_files), err)
                    verified = {}
                for rel, version in folder_files:
                    if verified.get(rel) != version:
                        found += self._offer(rel, version)
        except TierError as err:
            log.error("rescan of %s failed: %s", prefix or "the tree", err)
        seconds = time.monotonic() - started
        first_full = not prefix and not self._backfilled
        if not prefix:
            self._backfilled = True
        if first_full and self._still_refused:
            log.info("%d path(s) still refused, as before this start (`splash-flows status --all` lists them)",
                     self._still_refused)
        if found and not prefix:  # a full scan that finds files means events were missed (or the watcher was down)
            log.info("%s found %d file(s) to send in %.1f s", "backfill" if first_full else "rescan", found, seconds)
        else:  # scans of new folders routinely find the files written before their watch was in place
            log.debug("scan of %s: %d file(s) to send (%.1f s)", prefix or "/", found, seconds)
        if found:
            self._wake.set()
        self._emit("rescan", (), prefix=prefix, found=found, seconds=seconds)
        return found

    def _offer(self, rel: str, version: Version) -> int:
        now = time.monotonic()
        with self._lock:
            cand = self._candidates.get(rel)
            if cand is not None:
                # a write inotify reported recently means the writer may still hold it open: wait for its close;
                # otherwise its close event was lost (queue overflow) or never comes (hard link): quiet period only
                if not (cand.written and now - cand.last_event < self.settings.rescan_interval_s):
                    cand.closed = True
                return 0
            claim = self._claims.get(rel)
            if claim is not None and claim.until > now and claim.version in (None, version):
                return 0
            if any(rel in b.paths for b in self._batches.values()):
                return 0
            self._candidates[rel] = _Candidate(closed=True, written=False, stable_since=now, last_event=now,
                                               next_check=now)
            return 1

    def _walk(self, prefix: str) -> Iterator[list[tuple[str, Version]]]:
        """Regular files under ``prefix``, one folder at a time, skipping ignored names; symlinks handled."""
        if prefix:
            try:
                start = safe_join(self.root, prefix, tier=self.tier)
            except PathEscapeError as err:
                self._refuse(prefix, f"symlink pointing outside the watched root ({err})")
                return
        else:
            start = self.root
        if not self.root.is_dir():
            raise TierError(f"watched root {self.root} does not exist or is not a folder", tier=self.tier)
        stack = [start]
        while stack:
            folder = stack.pop()
            files: list[tuple[str, Version]] = []
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except OSError as err:
                log.warning("rescan: cannot list %s: %s", folder, err.strerror or err)
                continue
            for entry in sorted(entries, key=lambda e: e.name):
                if self.is_ignored_name(entry.name):
                    continue
                rel = self.relpath(entry.path)
                if rel is None or not self._check_name(rel):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    log.warning("rescan: cannot stat %s: %s", entry.path, err.strerror or err)
                    continue
                if stat_mod.S_ISLNK(st.st_mode):
                    self._symlink(rel)
                elif stat_mod.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif stat_mod.S_ISREG(st.st_mode):
                    files.append((rel, (st.st_size, st.st_mtime)))
                else:
                    self._refuse(rel, "not a regular file")
            for i in range(0, len(files), 500):
                yield files[i:i + 500]

    # ------------------------------------------------------------------------------------------ inspection

    def pending_files(self) -> int:
        """Files seen but not yet ready, plus ready files not yet written to the outbox."""
        with self._lock:
            return len(self._candidates) + sum(len(b.paths) for b in self._batches.values())


def files_open_for_writing(paths: list[Path]) -> set[str] | None:
    """The real paths among ``paths`` that a process on this host holds open for writing, from ``/proc``.

    Used for files a scan found (no close event seen) in inotify mode. Processes whose ``/proc/PID/fd`` this
    user may not read are invisible: run the watcher as the detector's user (or root) for a complete answer.
    Returns None when ``/proc`` is not available.
    """
    wanted = {os.path.realpath(p) for p in paths}
    if not os.path.isdir("/proc/self/fd"):
        return None
    found: set[str] = set()
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or another user's process
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target not in wanted or target in found:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                    flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.add(target)
    return found


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


def _recorded_refusals(ledger: Ledger, tier: str) -> set[tuple[str, str]]:
    """(path, reason) of the refusals on ``tier`` the ledger holds (latest reason per path never registered)."""
    from splash_flows.ledger.overview import refusals

    try:
        return {(r.path, r.reason) for r in refusals(ledger) if r.tier == tier}
    except LedgerError as err:
        log.error("cannot read earlier refusals from the ledger (each is warned again): %s", err)
        return set()
