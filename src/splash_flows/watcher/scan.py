"""Scanning: backfill, periodic rescans and new folders offer files the events did not."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator

from splash_flows.errors import (
    LedgerError,
    PathEscapeError,
    TierError,
)
from splash_flows.ledger.outbox import in_flight_versions, is_in_flight, verified_in_folders
from splash_flows.ledger.scan_state import Settled, settled_folders, update_settled
from splash_flows.paths import display_path, safe_join
from splash_flows.selection import scan_tree
from splash_flows.watcher.base import Version, WatcherBase, _Candidate

log = logging.getLogger("splash_flows.watcher")

Found = tuple[str, Version, int]  # (path, (size, mtime), mtime_ns) as the scan's lstat saw it
SCAN_CHUNK = 2000  # files per ledger comparison (one read transaction of IN lists of ``IN_CHUNK``)
WALK_AHEAD = 4  # chunks the walk thread may list ahead of the ledger comparison
SCAN_BACKLOG = 20_000  # candidates a paced scan lets wait before it waits for the loop (memory stays flat)
# a file a scan finds whose mtime is older than this (and than the quiet period) is ready once no process holds
# it open for writing, without waiting the quiet period: a margin over the quiet period against clock steps
SETTLED_AGE_S = 60.0
SETTLE_MARGIN_NS = 2_000_000_000  # a folder changed this recently before a scan does not settle (coarse mtimes)
# (folder, its mtime in ns before it was listed, files listed, could settle: a leaf folder holding only files to
# move, listed without trouble) for each folder a chunk completes
_Folder = tuple[str, int | None, int, bool]
# a chunk's files, the folders it completes, and the (start, end) slices of its files that are each the whole
# listing of a leaf folder (looked up as one index range: ``verified_in_folders``); the rest by name
_Chunk = tuple[list[Found], list[_Folder], list[tuple[int, int]]]


class ScanMixin(WatcherBase):
    """Backfill at start, rescans on a clock and after an overflow, scans of new folders."""

    def _scanner(self) -> None:
        while not self._stop.is_set():
            with self._scan_cv:
                while not self._scan_requests and not self._stop.is_set():
                    self._scan_idle.set()
                    self._scan_cv.wait()
                if self._stop.is_set():
                    return
                prefixes = {""} if "" in self._scan_requests else set(self._scan_requests)
                light = self._scan_light
                fresh = set(self._scan_fresh)
                self._scan_requests.clear()
                self._scan_fresh.clear()
                self._scan_light = False
            for prefix in sorted(prefixes):
                self.rescan(prefix, pace=True, light=light and not prefix, new_folder=prefix in fresh)

    def rescan(self, prefix: str = "", *, pace: bool = False, light: bool = False, new_folder: bool = False) -> int:
        """Walk ``prefix`` (the whole tree by default) and offer every file not verified (this version) and not
        in flight as a candidate. Returns how many new candidates it found. Also usable directly (tests).

        One pass, streamed: the walk yields files in chunks of ``SCAN_CHUNK`` across folders, each compared
        with the ledger in one read transaction while the walk goes on in a thread of its own (``stat`` and
        SQLite both release the GIL); nothing per file is kept but the candidates it offers. ``pace``
        (the scan thread): wait while the loop drains a large backlog of candidates (``_wait_backlog``).

        Settled folders (``ledger.scan_state``): every scan records the leaf folders whose files it found all
        verified, with the folder's mtime, and forgets those where it found one that is not. ``light`` (most
        periodic rescans, ``watcher.full_rescan_every``): a settled folder whose mtime is unchanged is not
        listed at all -- no file was added, removed or renamed in it. What a light rescan cannot see is a file
        rewritten in place with its inotify events lost, or a copy the ledger no longer holds verified: the
        full scans (start-up, after an overflow, every ``full_rescan_every``-th rescan) catch those.

        ``new_folder`` (a folder created or moved in while watched, inotify mode with ``ready_on_close``): its
        files were closed before the folder's watch was in place, or are still open. Each is ready as soon as
        the check for writers sees every process on the host and none holds it open for writing -- what its
        missed close event would have said -- instead of after the quiet period (``_Candidate.fresh``)."""
        started = time.monotonic()
        now = started
        settle_before = time.time_ns() - SETTLE_MARGIN_NS  # only folders untouched for a while settle
        with self._lock:
            for rel in [r for r, c in self._claims.items() if c.until <= now]:
                del self._claims[rel]
            # a full walk meets every claimed file still there; the others vanished (e.g. an unmount). A light
            # one skips settled folders, so it cannot tell.
            unmet = set(self._claims) if not prefix and not light else set()
        found = 0
        complete = False
        since = self._in_flight_since()
        dirty: set[str] = set()  # folders still being listed that hold a file not verified (bounded: open ones)
        try:
            for chunk, folders, leaves in self._walk_ahead(prefix, light):
                if self._stop.is_set():
                    break
                if unmet:
                    unmet.difference_update(f[0] for f in chunk)
                try:
                    verified = verified_in_folders(self.ledger, self.tier, self.targets,
                                                   [f[0] for f in chunk], leaves)
                except LedgerError as err:
                    log.error("rescan: cannot read the ledger, treating %d file(s) as not yet verified: %s",
                              len(chunk), err)
                    verified = {}
                # only the files not verified in this version go on (a steady-state rescan offers none), and of
                # those only the ones not in flight in this version (the ledger's outbox_paths: no claim per
                # file in memory, so a backfill's memory stays flat and a restart needs no per-file state)
                changed = [f for f in chunk if verified.get(f[0]) != f[1]]
                dirty.update(f[0].rpartition("/")[0] for f in changed)
                if folders:
                    self._settle(folders, dirty, settle_before)
                if changed:
                    try:
                        in_flight = in_flight_versions(self.ledger, [f[0] for f in changed], since)
                    except LedgerError as err:
                        log.error("rescan: cannot read the outbox, offering %d file(s) (each is checked again "
                                  "when ready): %s", len(changed), err)
                        in_flight = {}
                    if in_flight:
                        changed = [f for f in changed if not is_in_flight(in_flight, f[0], f[1])]
                if changed:
                    found += self._offer_found(changed, new_folder=new_folder)
                    if pace:
                        self._wait_backlog()
            else:
                complete = True
        except TierError as err:
            log.error("rescan of %s failed: %s", prefix or "the tree", err)
        if complete and unmet:
            self._release_claims(unmet, "not found by a full rescan")
        if complete and not prefix:
            self._forget_settled_outbox()
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

    def _offer_found(self, found: list[Found], *, new_folder: bool = False) -> int:
        """Offer files a scan found (not verified in this version) as candidates, under one lock. The scan's
        ``lstat`` is the first observation of the quiet period, so a file unchanged at the next check (a quiet
        period later) is ready without a third one. ``new_folder``: checked at once (``rescan``). Returns how
        many became candidates."""
        now = time.monotonic()
        on_close = self.settings.mode == "inotify" and self.settings.ready_on_close
        fresh = new_folder and on_close
        # a file last modified long before this scan looked has already been quiet longer than the quiet period
        # (its mtime says so: any write moves it): ready, like a new folder's, once the check for writers sees
        # every process and none holds it open for writing (docs/PERFORMANCE.md, section 4, "Settled files")
        old_before_ns = (time.time_ns() - int(max(self.settings.quiet_period_s, SETTLED_AGE_S) * 1e9)
                         if on_close and not fresh else -1)
        window = self.settings.rescan_interval_s
        n = 0
        earliest = math.inf
        with self._lock:
            batched = {rel for b in self._batches.values() for rel in b.paths} if self._batches else set()
            for rel, version, mtime_ns in found:
                cand = self._candidates.get(rel)
                if cand is not None:
                    # a write inotify reported recently means the writer may still hold it open: wait for its
                    # close; otherwise its close event was lost (queue overflow) or never comes (hard link)
                    if not (cand.written and now - cand.last_event < window):
                        cand.closed = True
                        if fresh and not cand.close_seen and not cand.written:
                            # only "created" so far (watchdog reports a new folder's files so): same as unseen
                            cand.fresh = True
                            cand.next_check = now
                        self._earliest_check = min(self._earliest_check, cand.next_check)
                    continue
                claim = self._claims.get(rel)
                if claim is not None and claim.until > now and claim.version in (None, version):
                    continue
                if rel in batched:
                    continue
                settled = fresh or mtime_ns < old_before_ns
                next_check = now if settled else now + self.settings.quiet_period_s
                self._candidates[rel] = _Candidate(closed=True, written=False, stable_since=now, last_event=now,
                                                   next_check=next_check, stat_key=(version[0], mtime_ns),
                                                   fresh=settled)
                earliest = min(earliest, next_check)
                n += 1
            if n:
                self._earliest_check = min(self._earliest_check, earliest)
        return n

    def _settle(self, folders: list[_Folder], dirty: set[str], before_ns: int) -> None:
        """Record the folders completed in this chunk as settled -- leaf folders listed without trouble, last
        changed before ``before_ns``, every file verified -- or forget them; only what differs from the ledger
        is written. A ledger error is logged: settled folders only spare light rescans some work (and a
        failed forget leaves a folder skipped only while its mtime stays unchanged, until the next full scan)."""
        settle: dict[str, Settled] = {}
        unsettle: list[str] = []
        for folder, mtime_ns, files, clean in folders:
            if clean and mtime_ns is not None and mtime_ns < before_ns and folder not in dirty:
                settle[folder] = (mtime_ns, files)
            else:
                unsettle.append(folder)
            dirty.discard(folder)
        try:
            known = settled_folders(self.ledger, self.tier, [f[0] for f in folders])
            settle = {f: s for f, s in settle.items() if known.get(f) != s}
            update_settled(self.ledger, self.tier, settle, [f for f in unsettle if f in known])
        except LedgerError as err:
            log.error("rescan: cannot record which of %d folder(s) are settled: %s", len(folders), err)

    def _skip_settled(self, children: list[tuple[str, int]]) -> set[str]:
        """For a light rescan's walk: the folders among ``children`` ((path, mtime_ns)) settled at that mtime."""
        try:
            known = settled_folders(self.ledger, self.tier, [rel for rel, _ in children])
        except LedgerError as err:
            log.error("light rescan: cannot read settled folders, listing %d folder(s): %s", len(children), err)
            return set()
        return {rel for rel, mtime_ns in children if (s := known.get(rel)) is not None and s[0] == mtime_ns}

    def _wait_backlog(self) -> None:
        """Pace a scan run by the scan thread: while more than ``SCAN_BACKLOG`` found files wait to become
        ready, wait for the loop to hand them to batches and the outbox, so a backfill of a million new files
        holds a bounded number of candidates in memory instead of one per file."""
        limit = max(SCAN_BACKLOG, 4 * self.settings.max_batch_files)
        with self._backlog_cv:
            while len(self._candidates) > limit and not self._stop.is_set():
                self._wake.set()
                self._backlog_cv.wait(1.0)

    def _walk_ahead(self, prefix: str, light: bool = False) -> Iterator[_Chunk]:
        """``_walk``'s chunks, listed by a helper thread at most ``WALK_AHEAD`` chunks ahead of the consumer
        (memory bounded); the walk's errors are raised here, in the consumer. Stops early when the consumer
        does."""
        chunks: queue.Queue[_Chunk | BaseException | None] = queue.Queue(maxsize=WALK_AHEAD)
        done = threading.Event()

        def put(item: _Chunk | BaseException | None) -> bool:
            while not done.is_set():
                try:
                    chunks.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for chunk in self._walk(prefix, light):
                    if not put(chunk):
                        return
            except BaseException as err:  # noqa: BLE001 -- handed to the consumer, which raises it
                put(err)
                return
            put(None)

        walker = threading.Thread(target=produce, name="watcher-walk", daemon=True)
        walker.start()
        try:
            while True:
                item = chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            done.set()
            walker.join()

    def _walk(self, prefix: str, light: bool = False) -> Iterator[_Chunk]:
        """Files to move under ``prefix`` in chunks of about ``SCAN_CHUNK`` (``list_tree`` with ``MoveRule``'s
        ignores, each name checked once by ``MoveRule.refusal_in``): symlinks, FIFOs, sockets, devices and odd
        names handled; a folder that cannot be listed is reported (once per process), never taken for an empty
        one. Each chunk comes with the folders whose files it completes (``_Folder``); ``light``: settled
        folders with an unchanged mtime are not listed (``rescan``). The walk is ``selection.scan_tree``, the
        one ``reconcile`` makes too."""
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
        pending: list[Found] = []
        done: list[_Folder] = []
        leaves: list[tuple[int, int]] = []
        for ruled in scan_tree(self.root, start, self.rule, skip=self._skip_settled if light else None):
            listing = ruled.listing
            folder = listing.folder
            if listing.error is not None:
                self._refuse(display_path(folder or "."), f"cannot list folder: {listing.error}", record=False)
                done.append((folder, None, 0, False))
                continue
            for rel, why in listing.problems:
                self._refuse(display_path(rel), why, record=False)
            for rel, what in listing.specials:
                if self._check_name(rel):
                    self._refuse(rel, f"{what}, not a regular file")
            for rel in listing.symlinks:
                if self._check_name(rel):
                    self._symlink(rel)
            for refused in ruled.refused:
                self._refuse(refused.path, refused.reason)
            if ruled.leaf:
                leaves.append((len(pending), len(pending) + len(ruled.files)))
            pending += [(rel, (st.st_size, st.st_mtime), st.st_mtime_ns) for rel, st in ruled.files]
            if folder:  # a folder settles only when all it holds are files to move (its record stands for them)
                done.append((folder, listing.mtime_ns, len(ruled.files), ruled.settleable))
            if len(pending) >= SCAN_CHUNK:
                yield pending, done, leaves
                pending, done, leaves = [], [], []
        if pending or done:
            yield pending, done, leaves

