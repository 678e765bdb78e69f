"""Batching: ready files of one folder become one outbox entry (one dispatcher run)."""

from __future__ import annotations

import logging

from splash_flows.errors import LedgerError
from splash_flows.watcher.base import WatcherBase, _Batch

log = logging.getLogger("splash_flows.watcher")


class BatchingMixin(WatcherBase):
    """Ready files grouped per folder, written to the outbox when due."""

    def flush_batches(self, now: float, *, force: bool = False, notify: bool = True) -> int:
        """Write due batches (full, older than the window, or idle -- no file joined for ``batch_idle_s``; all
        with ``force``) to the outbox. Returns how many."""
        if now < self._flush_retry_at and not force:
            return 0
        window, limit = self.settings.batch_window_s, self.settings.max_batch_files
        idle = self.settings.batch_idle_s
        with self._lock:
            due: list[_Batch] = []
            for folder, batch in list(self._batches.items()):
                if not batch.paths:
                    del self._batches[folder]
                elif (force or now - batch.opened >= window
                      or (idle > 0 and now - max(batch.last_added, batch.opened) >= idle)):
                    del self._batches[folder]
                    due.append(batch)
                elif len(batch.paths) >= limit:
                    # due only because it is full: send the full chunks, keep the rest filling (a burst of 1000
                    # is 5 runs of 200, not 200 + 6 + 200 + 9 ...; each run costs its own Prefect overhead).
                    # The rest keeps the batch's opening time: no file waits longer than the window.
                    cut = len(batch.paths) - len(batch.paths) % limit
                    due.append(_Batch(folder, batch.opened, batch.paths[:cut], batch.closed_at[:cut]))
                    if cut < len(batch.paths):
                        self._batches[folder] = _Batch(folder, batch.opened, batch.paths[cut:],
                                                       batch.closed_at[cut:], batch.last_added)
                    else:
                        del self._batches[folder]
        written = 0
        for i, batch in enumerate(due):
            for start in range(0, len(batch.paths), limit):
                paths = batch.paths[start:start + limit]
                closes = [c for c in batch.closed_at[start:start + limit] if c is not None]
                with self._lock:  # the version each file was accepted at (None: its claim was trimmed: any)
                    versions = [c.version if (c := self._claims.get(rel)) is not None else None for rel in paths]
                try:
                    rec = self.outbox.add(self.settings.deployment, paths, versions, source_tier=self.tier)
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
                    self._trim_claims()
                log.debug("outbox entry %d: %d file(s) in %s", rec.id, len(paths), batch.folder or "/")
                self._emit("queued", tuple(paths), entry_id=rec.id)
        if written and notify:
            with self._send_cv:
                self._send_cv.notify_all()
        return written

