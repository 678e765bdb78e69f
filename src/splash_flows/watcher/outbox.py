"""Sending: the outbox's pending entries become dispatcher runs, in order, exactly once."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from splash_flows.errors import (
    LedgerError,
    OrchestrationError,
    OrchestratorBusy,
    TriggerRejected,
)
from splash_flows.ledger.outbox import OutboxRecord
from splash_flows.watcher.base import WatcherBase

log = logging.getLogger("splash_flows.watcher")


def replay_delay(attempts: int, longest: float) -> float:
    """Seconds before the next attempt at an entry that failed ``attempts`` + 1 times: 0.5, 1, 2, ... s, never
    more than ``longest`` (``outbox_replay_interval_s``)."""
    return float(min(longest, 0.5 * 2.0 ** min(attempts, 30)))


#: Seconds before replaying an entry Prefect answered "busy" (503, 429), before the jitter.
BUSY_RETRY_S = 0.2


def busy_delay(longest: float) -> float:
    """Seconds before replaying an entry Prefect answered "busy" (``OrchestratorBusy``): 0.2-0.4 s, whatever the
    number of attempts, never more than ``longest``. The server is up and answered at once; its write lock
    (SQLite) is free again within milliseconds, so a doubling back-off only adds latency: measured, a burst's
    triggers waited 4-16 s behind 0.5, 1, 2, 4 s back-offs for 503s that cleared in well under a second."""
    return min(longest, BUSY_RETRY_S * (1.0 + random.random()))  # jitter: watchers do not retry in step


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
            outcome = self._send(rec, failing)
            if outcome in ("retry", "busy"):  # transient failure: wait, then retry the same (oldest) entry
                failing = True
                delay = busy_delay(interval) if outcome == "busy" else replay_delay(attempts, interval)
                with self._send_cv:
                    if not self._stop.is_set():
                        self._send_cv.wait(delay)
                attempts += outcome == "retry"
            else:
                failing, attempts = False, 0

    def _send(self, rec: OutboxRecord, failing: bool) -> str:
        """Send one entry. ``sent``; ``refused`` for good (marked failed); ``retry`` later (after a back-off);
        ``busy``: Prefect answered that it is busy, retry in a moment. A streak of busy answers is recorded in
        the outbox entry once (its first), not per quick retry: each record is a ledger write, which on a SQLite
        ledger waits for the write lock the flow runs of the burst hold."""
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
            return "refused"
        except OrchestrationError as err:
            busy = isinstance(err, OrchestratorBusy)
            if busy and not failing:  # expected in a burst on a SQLite-backed server: retried in a moment
                log.info("Prefect is busy (%s); retrying in a moment", err)
            elif not failing:
                pending = self.outbox_counts().get("pending", "?")
                log.warning("cannot trigger %s (%s batch(es) wait in the outbox; retrying, at most every "
                            "%g s): %s",
                            self.settings.deployment, pending, self.settings.outbox_replay_interval_s, err)
            else:
                log.debug("trigger still failing: %s", err)
            if not (busy and failing):
                self._ledger_call(self.outbox.record_attempt, rec.id, str(err))
            self._emit("send_failed", rec.paths, entry_id=rec.id, error=str(err), permanent=False)
            return "busy" if busy else "retry"
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
        elif latency is None or first_close is None:
            how = ", found by a scan"
        else:
            how = f", close->queued {timing[2] - first_close:.2f} s, close->trigger {latency:.2f} s"
        log.info("batch %d: %d file(s) in %s -> flow run %s (trigger %.2f s%s)", rec.id, len(rec.paths),
                 os.path.dirname(rec.paths[0]) or "/", run_id, elapsed, how)
        self._emit("sent", rec.paths, entry_id=rec.id, flow_run_id=run_id, close_to_trigger_s=latency)
        return "sent"

    def _ledger_call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except LedgerError as err:
            log.error("cannot update the outbox (the entry is replayed with the same idempotency key): %s", err)

