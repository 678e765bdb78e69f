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
from splash_flows.watcher.base import WatcherBase, _Accepted

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
            with self._mark_cv:
                skip = set(self._unmarked)  # accepted by Prefect, "sent" not yet recorded: not sent again
            try:
                rec = self.outbox.next_pending(skip)
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
        line = (f"batch {rec.id}: {len(rec.paths)} file(s) in {os.path.dirname(rec.paths[0]) or '/'} -> flow run "
                f"{run_id} (trigger {elapsed:.2f} s{how})")
        with self._mark_cv:
            self._unmarked.add(rec.id)
            self._to_mark.append(_Accepted(rec.id, tuple(rec.paths), run_id, line, latency))
            self._mark_cv.notify_all()
        return "sent"

    def _marker(self) -> None:
        """Record accepted entries as sent, apart from the sender: on a SQLite ledger a write waits for the lock
        that a burst's flow runs hold (their register, copy and catalogue steps), and measured, the sender
        waited 2.5-7 s there per entry while the next batches queued behind it. The sender goes on with the
        next entry meanwhile, skipping the accepted ones (``_unmarked``). A crash before the record only means
        the entry is replayed with its idempotency key on the next start: Prefect returns the same run. If the
        record fails, the entry is released to the sender, which triggers it again (same key, same run)."""
        while True:
            with self._mark_cv:
                while not self._to_mark and not self._stop.is_set():
                    self._mark_cv.wait()
                if not self._to_mark:
                    return  # stopping, nothing left to record
                todo, self._to_mark = self._to_mark, []
            self._mark(todo)

    def drain_marks(self) -> None:
        """Record what the sender had accepted when it stopped (called by ``stop`` once the threads ended)."""
        with self._mark_cv:
            todo, self._to_mark = self._to_mark, []
        self._mark(todo)

    def _mark(self, todo: list[_Accepted]) -> None:
        """Record each accepted entry as sent (then log and emit ``sent``), or release it to the sender."""
        for acc in todo:
            try:
                self.outbox.mark_sent(acc.entry_id, acc.run_id)
            except LedgerError as err:
                log.error("cannot record outbox entry %d as sent (it is triggered again with the same "
                          "idempotency key: the same run): %s", acc.entry_id, err)
                ok = False
            else:
                ok = True
            with self._mark_cv:
                self._unmarked.discard(acc.entry_id)
            if ok:
                log.info("%s", acc.line)
                self._emit("sent", acc.paths, entry_id=acc.entry_id, flow_run_id=acc.run_id,
                           close_to_trigger_s=acc.close_to_trigger_s)
            else:
                with self._send_cv:
                    self._send_cv.notify_all()

    def _ledger_call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except LedgerError as err:
            log.error("cannot update the outbox (the entry is replayed with the same idempotency key): %s", err)

