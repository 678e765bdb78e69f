"""Sending: the outbox's pending entries become dispatcher runs, in order, exactly once."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from splash_flows.errors import (
    LedgerError,
    OrchestrationError,
    TriggerRejected,
)
from splash_flows.ledger.outbox import OutboxRecord
from splash_flows.watcher.base import WatcherBase

log = logging.getLogger("splash_flows.watcher")


def replay_delay(attempts: int, longest: float) -> float:
    """Seconds before the next attempt at an entry that failed ``attempts`` + 1 times: 0.5, 1, 2, ... s, never
    more than ``longest`` (``outbox_replay_interval_s``)."""
    return float(min(longest, 0.5 * 2.0 ** min(attempts, 30)))


class OutboxMixin(WatcherBase):
    """Sends pending outbox entries oldest first; replays them while Prefect cannot be reached."""

    def _load_in_flight(self) -> None:
        """Say what the outbox holds from before. Files of pending entries, and of entries sent within
        ``resend_after_s``, are not batched again in the version batched: the scans and ``_accept`` ask the
        ledger (``in_flight_versions``), so nothing per file is loaded here (a restart in the middle of a
        million-file backfill reads no entry and ``stat``-s no file)."""
        pending = self.outbox_counts().get("pending", 0)
        if pending:
            log.info("%d batch(es) pending in the outbox from before: replaying them first", pending)

    def _sender(self) -> None:
        """Send pending entries oldest first. After a transient failure the same entry is tried again after
        0.5 s, then after twice as long each time, up to ``outbox_replay_interval_s`` (a 503 from a busy
        server usually clears within a second; an outage is not hammered)."""
        failing = False
        interval = self.settings.outbox_replay_interval_s
        attempts = 0
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
                        self._send_cv.wait(replay_delay(attempts, interval))
                attempts += 1
            else:
                failing, attempts = False, 0

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
                log.warning("cannot trigger %s (%s batch(es) wait in the outbox; retrying, at most every "
                            "%g s): %s",
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

