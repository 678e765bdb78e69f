"""Batching: ready files of one folder become one outbox entry (one dispatcher run)."""

from __future__ import annotations

import logging
import time

from splash_flows.errors import LedgerError
from splash_flows.watcher.base import WatcherBase, _Batch, chunk_bounds

log = logging.getLogger("splash_flows.watcher")

FLUSH_GROUP = 20  # batches written to the outbox in one transaction (a backfill flushes hundreds a second)


class BatchingMixin(WatcherBase):
    """Ready files grouped per folder, written to the outbox when due."""

    def flush_batches(self, now: float, *, force: bool = False, notify: bool = True) -> int:
        """Write due batches (full, older than the window, or idle -- no file joined for ``batch_idle_s``; all
        with ``force``) to the outbox, cut into runs of at most ``max_batch_files`` files and
        ``max_batch_bytes`` bytes (``chunk_bounds``). Returns how many entries were written."""
        if now < self._flush_retry_at and not force:
            return 0
        window, idle = self.settings.batch_window_s, self.settings.batch_idle_s
        max_files, max_bytes = self.settings.max_batch_files, self.settings.max_batch_bytes
        with self._lock:
            due: list[_Batch] = []
            for folder, batch in list(self._batches.items()):
                if not batch.paths:
                    del self._batches[folder]
                elif (force or now - batch.opened >= window
                      or (idle > 0 and now - max(batch.last_added, batch.opened) >= idle)):
                    del self._batches[folder]
                    due.append(batch)
                else:
                    # due only if full: send the full chunks, keep the rest filling (a burst is runs of
                    # max_batch_files, not 1000 + 6 + 1000 + 9 ...; each run costs its own Prefect overhead).
                    # The rest keeps the batch's opening time: no file waits longer than the window.
                    cut = _full_part(batch.sizes, max_files, max_bytes)
                    if cut:
                        due.append(batch.part(0, cut))
                        if cut < len(batch.paths):
                            self._batches[folder] = batch.part(cut)
                        else:
                            del self._batches[folder]
        written = 0
        for first in range(0, len(due), FLUSH_GROUP):
            group = due[first:first + FLUSH_GROUP]
            runs: list[tuple[_Batch, list[str], list[float]]] = []
            for batch in group:
                start = 0
                for stop in chunk_bounds(batch.sizes, max_files, max_bytes):
                    runs.append((batch, batch.paths[start:stop],
                                 [c for c in batch.closed_at[start:stop] if c is not None]))
                    start = stop
            with self._lock:  # the version each file was accepted at (None: its claim was trimmed: any)
                versions = [[c.version if (c := self._claims.get(rel)) is not None else None for rel in paths]
                            for _, paths, _ in runs]
            try:  # the runs of up to FLUSH_GROUP batches in one transaction: all written, or none
                recs = self.outbox.add_many(self.settings.deployment,
                                            [(paths, v) for (_, paths, _), v in zip(runs, versions, strict=True)],
                                            source_tier=self.tier)
            except LedgerError as err:
                log.error("cannot write %d batch(es) of %d file(s) to the outbox (retrying in %g s): %s",
                          len(runs), sum(len(p) for _, p, _ in runs), self.settings.outbox_replay_interval_s, err)
                self._flush_retry_at = now + self.settings.outbox_replay_interval_s
                with self._lock:  # put back everything not yet written, ahead of newer files
                    for rest in due[first:]:
                        cur = self._batches.get(rest.folder)
                        if cur is not None:
                            rest.extend(cur)
                        self._batches[rest.folder] = rest
                return written
            written += len(recs)
            with self._lock:
                for rec, (batch, _, closes) in zip(recs, runs, strict=True):
                    self._timing[rec.id] = (batch.folder, min(closes) if closes else None, time.time())
                self._trim_claims()
            for rec, (batch, paths, _) in zip(recs, runs, strict=True):
                log.debug("outbox entry %d: %d file(s) in %s", rec.id, len(paths), batch.folder or "/")
                self._emit("queued", tuple(paths), entry_id=rec.id)
        if written and notify:
            with self._send_cv:
                self._send_cv.notify_all()
        return written


def _full_part(sizes: list[int], max_files: int, max_bytes: int) -> int:
    """How many of a batch's files (from its start) make full chunks: 0 when not even the first is full."""
    bounds = chunk_bounds(sizes, max_files, max_bytes)
    last_start = bounds[-2] if len(bounds) > 1 else 0
    tail = sizes[last_start:]
    if len(tail) >= max_files or sum(tail) >= max_bytes:
        return len(sizes)
    return last_start
