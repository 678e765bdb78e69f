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
    wait for its close). A scan therefore also rescues files whose close event inotify dropped. The files a
    scan of a folder created while watched finds (closed before its watch was in place) skip the quiet period
    when the ``/proc`` check sees every process and no writer (``ready_on_close``).
A ready file is then checked against the ledger: if this version (size, mtime) is already verified on every
move target it is not sent again. Deleted before ready: dropped with an INFO line. 0-byte files are valid.
Symlinks are never sent: one pointing outside the root is refused with a WARNING line (and a ``refused`` ledger
event); one pointing inside is skipped, its target being sent under its own name. Names that are not valid
UTF-8, and things that are not regular files (FIFOs, sockets), are refused the same way. Files the watcher
cannot read are SENT (with a WARNING): the watcher only needs to stat them, the workers may run as another
user, and the move records any read failure per file in the ledger.

Batching and triggering: ready files are grouped per folder (one scan); a batch is closed ``batch_window_s``
after its first file, after ``batch_idle_s`` without a new file, or at ``max_batch_files`` / ``max_batch_bytes``
(cut into runs of at most that many), written to the ledger's outbox (committed), and only then sent:
ONE dispatcher run per batch. The sender sends pending outbox entries strictly oldest first (the "sent" record
of an accepted one is written by a thread of its own, ``watcher-mark``, so a busy ledger lock does not hold the
next trigger; a crash before that record replays the entry with its key: the same run); when Prefect cannot
be reached (refused, a 5xx, no answer within ``trigger_timeout_s``) the entry stays pending and is retried after
0.5 s, 1 s, 2 s ... up to every ``outbox_replay_interval_s``, so later batches queue behind it and are replayed in
order. On start, pending entries are replayed first and the files of entries
still in flight (pending, or sent within ``resend_after_s``) are not batched again: the ledger's
``outbox_paths`` says which, per path and version, so nothing per file is held in memory or loaded at start.

Listening starts BEFORE the backfill scan, so nothing written during the scan is missed; rescans every
``rescan_interval_s`` (and right after an inotify queue overflow) catch dropped events; most periodic ones are
light (folders a full scan found all verified, unchanged since, are not listed: ``ledger.scan_state``), every
``full_rescan_every``-th, the backfill and the overflow's are full. Crash safety: a file
detected but not yet in the outbox when the process dies is found again by the next startup backfill; a batch
in the outbox is replayed with its stored idempotency key, so a batch Prefect accepted just before a
``kill -9`` does not become a second run.

What is a file to move at all is ``splash_flows.selection.MoveRule`` (shared with reconcile and the dispatcher).
Layout: ``base`` (state, types, path rules), ``readiness`` (events, quiet periods, rewritten files marked
stale), ``batching`` (per-folder batches into the outbox), ``outbox`` (sending in order), ``scan`` (backfill and
rescans over ``tiers.local.list_tree``: one streamed pass in chunks, paced by the loop when it finds many new
files), ``core`` (``Watcher``: observer, threads, stop).
"""

from splash_flows.watcher.base import Trigger, Version, WatchEvent, WatchHook
from splash_flows.watcher.core import Watcher, run_until_signalled
from splash_flows.watcher.readiness import files_open_for_writing

__all__ = ["Trigger", "Version", "WatchEvent", "WatchHook", "Watcher", "files_open_for_writing", "run_until_signalled"]
