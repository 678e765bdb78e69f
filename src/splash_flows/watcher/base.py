"""State shared by the watcher's parts: types, the path rules and the ``WatcherBase`` class."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from watchdog.observers.api import BaseObserver

from splash_flows.config import Config, LocalTierConfig
from splash_flows.errors import (
    ConfigError,
    LedgerError,
    PathEscapeError,
)
from splash_flows.ledger import EventKind, Ledger
from splash_flows.ledger.models import utcnow
from splash_flows.ledger.outbox import Outbox
from splash_flows.paths import safe_join
from splash_flows.selection import MoveRule

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
    (deleted before ready), ``refused`` (detail ``reason``), ``rescan`` (detail ``found``, ``seconds``),
    ``vanished`` (files sent, then gone from the tree before their copies were known verified: sent again if
    they come back unverified; detail ``reason``)."""

    kind: str
    paths: tuple[str, ...]
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)


WatchHook = Callable[[WatchEvent], None]


@dataclass(slots=True)
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
    reopened: bool = False  # written again after a close (or after it was sent): waits the quiet period
    stat_key: tuple[int, int] | None = None  # (size, mtime_ns) at the start of the current quiet period
    generation: int = 0
    # found in a folder created while watched, or by a scan with an mtime older than the quiet period (and
    # ``scan.SETTLED_AGE_S``): ready once no writer holds it, without a quiet period
    fresh: bool = False


CLAIM_CACHE = 20_000  # claims kept in memory once their files are in the outbox (the ledger answers for the rest)


@dataclass(slots=True)
class _Claim:
    """A file handed to a batch: not batched again while this version is in flight. ``version`` None: any
    version. Once its batch is in the outbox the ledger's ``outbox_paths`` says the same durably
    (``in_flight_versions``); the claim stays as a fast path and for the "written again after it was sent"
    rule, but only the ``CLAIM_CACHE`` most recent are kept (``_trim_claims``), so memory does not grow with a
    backfill."""

    version: Version | None
    until: float


@dataclass(frozen=True)
class _Accepted:
    """An outbox entry Prefect accepted, waiting for its ``mark_sent`` (and its log line)."""

    entry_id: int
    paths: tuple[str, ...]
    run_id: str
    line: str  # the log line saying so
    close_to_trigger_s: float | None


@dataclass
class _Batch:
    folder: str
    opened: float
    paths: list[str] = field(default_factory=list)
    closed_at: list[float | None] = field(default_factory=list)
    last_added: float = 0.0  # monotonic time the latest file joined (the batch closes when it stays idle)
    sizes: list[int] = field(default_factory=list)  # bytes of each file when it became ready (max_batch_bytes)

    def part(self, start: int, stop: int | None = None) -> _Batch:
        """Files ``start:stop`` as a batch of the same folder and opening time."""
        return _Batch(self.folder, self.opened, self.paths[start:stop], self.closed_at[start:stop],
                      self.last_added, self.sizes[start:stop])

    def extend(self, other: _Batch) -> None:
        """Append ``other``'s files (same folder) after this batch's."""
        self.paths += other.paths
        self.closed_at += other.closed_at
        self.sizes += other.sizes

    def remove(self, i: int) -> None:
        """Drop the ``i``-th file."""
        del self.paths[i], self.closed_at[i], self.sizes[i]


def chunk_bounds(sizes: list[int], max_files: int, max_bytes: int) -> list[int]:
    """Where a batch of files with these ``sizes`` is cut into runs: the end index of each chunk. A chunk closes
    at ``max_files`` files or before the file that would take it over ``max_bytes`` (a single larger file is a
    chunk of its own). The last bound is ``len(sizes)``; every chunk but the last is full."""
    bounds: list[int] = []
    start, held = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_files or held + size > max_bytes):
            bounds.append(i)
            start, held = i, 0
        held += size
    if len(sizes) > start or not bounds:
        bounds.append(len(sizes))
    return bounds


class _OverflowSpotter(logging.Handler):
    """watchdog reports an inotify queue overflow only as a WARNING log line; this turns it into a rescan."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()


def _decode(path: bytes | str) -> str:
    return os.fsdecode(path)


class WatcherBase:
    """The watcher's shared state and path rules; the mixins of this package add readiness, batching,
    sending and scanning, and ``core.Watcher`` puts them together."""

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

        self.rule = MoveRule.from_config(config)  # what is a file to move: shared with reconcile and dispatch
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        # no closed candidate is due a check before this (lowered wherever a next_check is set): a loop tick
        # with nothing due returns without walking a backfill's thousands of waiting candidates
        self._earliest_check = 0.0
        self._claims: dict[str, _Claim] = {}
        self._batches: dict[str, _Batch] = {}
        self._refused: set[tuple[str, str]] = set()
        self._known_refusals = _recorded_refusals(ledger, self.tier)
        self._still_refused = 0
        self._recently_dropped: dict[str, float] = {}
        self._timing: dict[int, tuple[str, float | None, float]] = {}  # entry -> folder, first close, queued at
        self._scan_requests: set[str] = set()
        self._scan_light = False  # the pending whole-tree request may be light (``ScanMixin.rescan``)
        self._scan_fresh: set[str] = set()  # requested prefixes that are folders created while watched
        self._scan_cv = threading.Condition()
        self._backlog_cv = threading.Condition()  # the loop drained candidates: a paced scan goes on
        self._send_cv = threading.Condition()
        # entries Prefect accepted whose "sent" is not yet recorded in the ledger (``OutboxMixin._marker``)
        self._mark_cv = threading.Condition()
        self._to_mark: list[_Accepted] = []
        self._unmarked: set[int] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._overflow_handler = _OverflowSpotter(lambda: self.request_scan(""))
        self._started = False
        self._root_identity: tuple[int, int] | None = None  # (device, inode) of the root folder (core._check_root)
        self._flush_retry_at = 0.0
        self._backfilled = False
        self._scan_idle = threading.Event()
        self._scan_idle.set()
        tick_basis = [0.1, self.settings.quiet_period_s / 4]
        if self.settings.batch_window_s > 0:
            tick_basis.append(self.settings.batch_window_s / 4)
        if self.settings.batch_idle_s > 0:
            tick_basis.append(self.settings.batch_idle_s / 2)
        self._tick = max(0.01, min(tick_basis))

    def _emit(self, kind: str, paths: tuple[str, ...], **detail: Any) -> None:
        if self.hook is not None:
            self.hook(WatchEvent(kind, paths, time.time(), detail))

    def outbox_counts(self) -> dict[str, int]:
        try:
            return self.outbox.counts()
        except LedgerError as err:
            log.error("cannot read the outbox: %s", err)
            return {}

    def _trim_claims(self) -> None:
        """Forget the oldest claims beyond ``CLAIM_CACHE`` (call with ``_lock`` held, after their batches were
        written to the outbox: the ledger answers for them from then on). Claims are kept in the order they
        were made, so the oldest go first."""
        excess = len(self._claims) - CLAIM_CACHE
        if excess > 0:
            for rel in list(itertools.islice(self._claims, excess)):
                del self._claims[rel]

    def _in_flight_since(self) -> datetime:
        """Entries sent at or after this time still hold their files in flight (``resend_after_s``)."""
        return utcnow() - timedelta(seconds=self.settings.resend_after_s)

    # ------------------------------------------------------------------------------------------ paths

    def relpath(self, abs_path: str) -> str | None:
        """The tier-relative path of an event path, or None if it is outside the root or ignored."""
        root = str(self.root)
        if not abs_path.startswith(root.rstrip(os.sep) + os.sep):
            return None
        rel = abs_path[len(root.rstrip(os.sep)) + 1:]
        if not rel:
            return None
        rel = rel.replace(os.sep, "/")
        return None if self.rule.ignored(rel) else rel

    def is_ignored_name(self, name: str) -> bool:
        """Whether a file or folder of this name is never a file to move (``MoveRule``)."""
        return self.rule.ignored_name(name)

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
        """Refuse names that cannot travel (not UTF-8, or not a clean relative path): ``MoveRule.refusal``."""
        refusal = self.rule.refusal(rel)
        if refusal is None:
            return True
        self._refuse(refusal.path, refusal.reason)
        return False

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

    # --- files that vanish after they were sent

    def _release_claims(self, rels: Iterable[str] | None, why: str, *, under: str | None = None) -> list[str]:
        """Forget that ``rels`` (or every claimed file under folder ``under``; or, both None, every claimed
        file) are in flight: the files are gone (deleted, moved out, their volume unmounted), so the run they
        were sent to cannot copy them. If they come back, the ledger alone decides: sent again unless verified
        in the version they have then. (Otherwise a file whose run failed while it was away would wait
        ``resend_after_s`` -- an hour -- to be sent again.) Returns the released paths."""
        with self._lock:
            if rels is not None:
                released = [rel for rel in rels if self._claims.pop(rel, None) is not None]
            else:
                prefix = f"{under}/" if under else ""
                released = [rel for rel in self._claims if rel.startswith(prefix)]
                for rel in released:
                    del self._claims[rel]
        # the ledger's in-flight marks (outbox_paths) too: memory keeps only the newest claims, and a restart
        # reads what is in flight from the ledger alone
        try:
            rows = Outbox(self.ledger).release(released if rels is not None else None,
                                               under=under if rels is None else None)
        except LedgerError as err:
            rows = 0
            log.error("could not release the in-flight marks of files gone from %s (%s): they are sent again "
                      "after watcher.resend_after_s: %s", self.tier, why, err)
        if released or rows:
            log.info("%d file(s) sent lately are gone from %s (%s); each is sent again if it comes back "
                     "not verified: %s%s", max(len(released), rows), self.tier, why, ", ".join(released[:3]),
                     ", ..." if len(released) > 3 else "")
            self._emit("vanished", tuple(released), reason=why)
        return released

    def _forget_settled_outbox(self) -> None:
        """After each whole-tree scan: drop the per-path rows of outbox entries no longer in flight
        (``Outbox.forget_settled``), so ``outbox_paths`` holds about one row per file in flight, not per file
        ever sent, and delete the entries settled more than ``outbox_keep_days`` ago (``Outbox.purge``). A
        failure is logged; the rows only cost space."""
        outbox = Outbox(self.ledger)
        try:
            n = outbox.forget_settled(self._in_flight_since())
            purged = outbox.purge(utcnow() - timedelta(days=self.settings.outbox_keep_days))
        except LedgerError as err:
            log.error("could not drop the outbox's settled rows (they only cost space): %s", err)
            return
        if n:
            log.debug("dropped %d outbox path row(s) no longer in flight", n)
        if purged:
            log.info("deleted %d outbox entr%s settled more than %g day(s) ago (watcher.outbox_keep_days)", purged,
                     "y" if purged == 1 else "ies", self.settings.outbox_keep_days)

    # --- scans (requests only; the scanning is in scan.py)

    def request_scan(self, prefix: str = "", *, light: bool = False, new_folder: bool = False) -> None:
        """Ask the scan thread to scan ``prefix`` (tier-relative folder; "" = the whole tree). ``light``: a
        periodic whole-tree rescan that may pass over settled folders (``ScanMixin.rescan``); any full request
        pending at the same time (an overflow's) makes it full. ``new_folder``: ``prefix`` was just created or
        moved in while watched (``ScanMixin.rescan``'s ``new_folder``)."""
        with self._scan_cv:
            if not prefix:
                self._scan_light = light and (self._scan_light or "" not in self._scan_requests)
            elif new_folder:
                self._scan_fresh.add(prefix)
            self._scan_requests.add(prefix)
            self._scan_idle.clear()
            self._scan_cv.notify_all()

    def wait_scans_idle(self, timeout: float) -> bool:
        """Block until no scan is requested or running (tests and benchmarks)."""
        return self._scan_idle.wait(timeout)

    # ------------------------------------------------------------------------------------------ inspection

    def pending_files(self) -> int:
        """Files seen but not yet ready, plus ready files not yet written to the outbox."""
        with self._lock:
            return len(self._candidates) + sum(len(b.paths) for b in self._batches.values())


def _recorded_refusals(ledger: Ledger, tier: str) -> set[tuple[str, str]]:
    """(path, reason) of the refusals on ``tier`` the ledger holds (latest reason per path never registered)."""
    from splash_flows.ledger.overview import refusals

    try:
        return {(r.path, r.reason) for r in refusals(ledger) if r.tier == tier}
    except LedgerError as err:
        log.error("cannot read earlier refusals from the ledger (each is warned again): %s", err)
        return set()
