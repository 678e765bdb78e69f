"""Scanning: backfill, periodic rescans and new folders offer files the events did not."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from splash_flows.errors import (
    LedgerError,
    PathEscapeError,
    TierError,
)
from splash_flows.ledger.outbox import verified_versions
from splash_flows.paths import display_path, safe_join
from splash_flows.tiers.local import list_tree
from splash_flows.watcher.base import Version, WatcherBase, _Candidate

log = logging.getLogger("splash_flows.watcher")


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
        """Files to move under ``prefix``, one folder at a time (``list_tree`` with ``MoveRule``'s ignores):
        symlinks, FIFOs, sockets, devices and odd names handled; a folder that cannot be listed is reported
        (once per process), never taken for an empty one."""
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
        for listing in list_tree(self.root, start, self.rule.ignored_name):
            if listing.error is not None:
                self._refuse(display_path(listing.folder or "."), f"cannot list folder: {listing.error}",
                             record=False)
                continue
            for rel, why in listing.problems:
                self._refuse(display_path(rel), why, record=False)
            for rel, what in listing.specials:
                if self._check_name(rel):
                    self._refuse(rel, f"{what}, not a regular file")
            for rel in listing.symlinks:
                if self._check_name(rel):
                    self._symlink(rel)
            files = [(rel, (st.st_size, st.st_mtime)) for rel, st in listing.files if self._check_name(rel)]
            for i in range(0, len(files), 500):
                yield files[i:i + 500]

