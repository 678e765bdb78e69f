"""Readiness: file system events and quiet periods decide when a file is finished."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat as stat_mod
import time
from pathlib import Path

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
)

from splash_flows.errors import (
    LedgerError,
    PathEscapeError,
)
from splash_flows.ledger.outbox import InFlight, in_flight_versions, is_in_flight, verified_versions
from splash_flows.paths import safe_join
from splash_flows.tiers.local import file_kind
from splash_flows.watcher.base import WatcherBase, _Batch, _Candidate, _Claim, _decode

log = logging.getLogger("splash_flows.watcher")

# candidates checked per loop tick: a backfill's settled files are all due at once (a 20,000-file backlog);
# their stats, real paths and the writers check are held for one check at a time
CHECK_PER_TICK = 5000

#: The events ``ReadinessMixin._on_fs_event`` acts on: the observer is told to deliver these and no others.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]


class ReadinessMixin(WatcherBase):
    """Events in, ready files out: when is a file finished (see the package docstring)."""

    # ------------------------------------------------------------------------------------------ events

    def _on_fs_event(self, event: FileSystemEvent) -> None:
        """Called on the observer thread: cheap bookkeeping only (no I/O but an lstat on create)."""
        src = _decode(event.src_path)
        dest = _decode(event.dest_path) if event.dest_path else ""
        log.debug("event %s %s%s", event.event_type, src, f" -> {dest}" if dest else "")
        if isinstance(event, DirMovedEvent | DirDeletedEvent) and src:
            # a folder gone (moved out of the tree: no dest) or renamed: what was sent from it is no longer there
            rel_gone = self.relpath(src)
            if rel_gone is not None:
                self._release_claims(None, "its folder was removed or moved away", under=rel_gone)
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            rel_dir = self.relpath(dest) if isinstance(event, DirMovedEvent) else self.relpath(src)
            if rel_dir is not None:
                self.request_scan(rel_dir, new_folder=True)
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
                mode = os.lstat(src).st_mode
                if not stat_mod.S_ISREG(mode):  # a symlink, FIFO, socket or device: say so now, not at restart
                    rel = self.relpath(src)
                    if rel is not None and self._check_name(rel):
                        if stat_mod.S_ISLNK(mode):
                            self._symlink(rel)
                        else:
                            self._refuse(rel, f"{file_kind(mode)}, not a regular file")
                    return
            self._touch(src, closed=self.settings.mode == "polling", written=False, created=True)

    def _touch(self, abs_path: str, *, closed: bool, written: bool, created: bool = False) -> None:
        rel = self.relpath(abs_path)
        if rel is None or not self._check_name(rel):
            return
        now = time.monotonic()
        with self._lock:
            cand = self._candidates.get(rel)
            # a write after a close, or to a file already sent: the writer reopened it; its next close alone does
            # not say it is finished (it may reopen it again), so it waits the quiet period after that close
            reopened = written and (rel in self._claims or (cand is not None and (cand.close_seen or cand.reopened)))
            if cand is not None and created:
                # watchdog also reports files already inside a new folder as "created"; a scan of that folder
                # may have been first. A create says nothing about writing: keep what is known.
                return
            if cand is None:
                cand = _Candidate(closed=closed, written=written, stable_since=now, last_event=now, next_check=now,
                                  close_seen=closed, reopened=reopened)
                self._candidates[rel] = cand
            else:
                cand.reopened = cand.reopened or reopened
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
            self._earliest_check = min(self._earliest_check, cand.next_check)
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
                    batch.remove(i)
                    in_batch = True
            if in_batch:
                self._claims.pop(rel, None)
        if was_candidate or in_batch:
            self._dropped(rel, f"{why} before it was {'sent' if in_batch else 'ready'}")
        else:  # sent already (or never seen): if it was in flight, its run cannot copy it now
            self._release_claims((rel,), why)

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

    def _quiet_for(self, cand: _Candidate) -> float:
        """The quiet period this candidate waits: none for a file closed after writing in inotify mode (with
        ``ready_on_close``: the close is the detector's "finished"), the configured one otherwise (polling mode,
        files found by a scan, files reopened for writing after a close or after they were sent)."""
        if (self.settings.mode == "inotify" and self.settings.ready_on_close and (cand.close_seen or cand.fresh)
                and not cand.reopened):
            return 0.0  # a fresh one is then ready only if no writer holds it (``check_candidates``)
        return self.settings.quiet_period_s

    def check_candidates(self, now: float) -> int:
        """Stat the candidates due a check; move the ready ones into batches. Returns how many became ready."""
        with self._lock:
            if now < self._earliest_check:
                return 0
            due: list[tuple[str, int]] = []
            earliest = math.inf
            for rel, c in self._candidates.items():
                if c.closed:
                    if c.next_check <= now:
                        if len(due) < CHECK_PER_TICK:
                            due.append((rel, c.generation))
                        else:  # the rest next tick: what one check holds per file stays bounded
                            earliest = now
                    elif c.next_check < earliest:
                        earliest = c.next_check
            self._earliest_check = earliest  # the due ones lower it again below if they stay candidates
        if not due:
            return 0
        if earliest <= now:
            self._wake.set()  # more are due: the loop comes back without waiting a tick
        observed: list[tuple[str, int, os.stat_result | None, OSError | None]] = []
        root = f"{self.root}/"  # a string join per file: a backfill checks thousands per tick
        for rel, gen in due:
            try:
                observed.append((rel, gen, os.lstat(root + rel), None))
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
                quiet = self._quiet_for(cand)
                key = (st.st_size, st.st_mtime_ns)
                if cand.stat_key != key:
                    if cand.stat_key is not None:
                        cand.stable_since = now
                    cand.stat_key = key
                    cand.next_check = max(now, cand.stable_since + quiet)
                    if cand.next_check > now:
                        self._earliest_check = min(self._earliest_check, cand.next_check)
                        continue
                if now - cand.stable_since >= quiet:
                    if self.settings.mode == "inotify" and not cand.close_seen:
                        unconfirmed.append((rel, gen, st))  # found by a scan: is a writer still holding it?
                    else:
                        self._candidates.pop(rel)
                        ready.append((rel, st, cand.closed_at))
                else:
                    cand.next_check = cand.stable_since + quiet
                    self._earliest_check = min(self._earliest_check, cand.next_check)
        if unconfirmed:
            real = _real_paths(self.root, [rel for rel, _, _ in unconfirmed])
            seen = writers_seen(list(real.values()))
            writers = seen[0] if seen is not None else None
            sees_all = seen is not None and seen[1]
            with self._lock:
                for rel, gen, st in unconfirmed:
                    cand = self._candidates.get(rel)
                    if cand is None or cand.generation != gen:
                        continue
                    if writers is not None and real[rel] in writers:
                        log.debug("%s is still open for writing: waiting for its close event", rel)
                        cand.closed = False
                        cand.written = True
                    elif cand.fresh and not sees_all:
                        # without the quiet period only a check that saw every process may say "closed"
                        cand.fresh = False
                        cand.next_check = cand.stable_since + self.settings.quiet_period_s
                        self._earliest_check = min(self._earliest_check, cand.next_check)
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
        escaped = set()
        inside: dict[str, bool] = {"": True}  # folder -> resolves inside the root (one realpath per folder)
        for rel, _st, _closed in ready:
            folder = rel.rpartition("/")[0]
            if folder not in inside:
                try:
                    safe_join(self.root, folder, tier=self.tier)
                    inside[folder] = True
                except PathEscapeError:
                    inside[folder] = False
            if inside[folder]:
                continue  # the file itself is no symlink (lstat above): it resolves where its folder does
            try:
                safe_join(self.root, rel, tier=self.tier)
            except PathEscapeError as err:  # a symlinked folder on the way (polling snapshots, races)
                self._refuse(rel, str(err))
                escaped.add(rel)
        ready = [r for r in ready if r[0] not in escaped]
        if ready:
            self._accept(ready, now)
        return len(ready)

    def _note_changed(self, changed: list[tuple[str, os.stat_result]]) -> None:
        """Files verified at an older version that were rewritten in place: their copies become ``stale`` in the
        ledger now (``status`` says so), before the new version is sent."""
        if not changed:
            return
        try:
            marked = self.ledger.mark_source_changed(
                self.tier, [(rel, st.st_size, st.st_mtime) for rel, st in changed], seen_by="watcher")
        except LedgerError as err:
            log.error("cannot mark %d rewritten file(s) stale in the ledger: %s", len(changed), err)
            return
        for rel in marked:
            log.info("%s:%s was rewritten after it was verified: its copies are stale; sending the new version",
                     self.tier, rel)

    def _accept(self, ready: list[tuple[str, os.stat_result, float | None]], now: float) -> None:
        """Ready files: skip those already verified (this version) or in flight (a claim in memory, or a pending
        or recently sent outbox entry in the ledger); batch the rest."""
        in_flight: InFlight = {}
        try:
            verified = verified_versions(self.ledger, self.tier, self.targets, [r for r, _, _ in ready])
            unclaimed = [rel for rel, st, _ in ready if verified.get(rel) != (st.st_size, st.st_mtime)
                         and rel not in self._claims]
            if unclaimed:
                in_flight = in_flight_versions(self.ledger, unclaimed, self._in_flight_since())
        except LedgerError as err:
            log.error("cannot check the ledger for %d ready file(s), sending them anyway: %s", len(ready), err)
            verified = {}
        self._note_changed([(rel, st) for rel, st, _ in ready if verified.get(rel) not in (None, (
            st.st_size, st.st_mtime))])
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
                if (claim is not None and claim.version in (None, version)) or is_in_flight(in_flight, rel, version):
                    log.debug("%s is already in flight; not sent again", rel)
                    continue
                self._claims.pop(rel, None)  # re-inserted last: claims stay oldest first (_trim_claims)
                self._claims[rel] = _Claim(version, now + self.settings.resend_after_s)
                folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
                batch = self._batches.get(folder)
                if batch is None:
                    batch = self._batches[folder] = _Batch(folder, now)
                elif rel in batch.paths:  # rewritten while its batch was open: the run copies the current file
                    continue
                batch.paths.append(rel)
                batch.closed_at.append(closed_at)
                batch.sizes.append(st.st_size)
                batch.last_added = now
                accepted.append((rel, closed_at))
                sizes[rel] = st.st_size
                if not _readable(st, f"{self.root}/{rel}"):
                    unreadable.append(rel)
        for rel in unreadable:
            log.warning("%s:%s is not readable by the watcher (uid %d); sending it anyway: the move records "
                        "whether the workers can read it", self.tier, rel, os.getuid())
        for rel, closed_at in accepted:
            self._emit("ready", (rel,), closed_at=closed_at, size=sizes[rel])


def _readable(st: os.stat_result, path: str) -> bool:
    """Whether this process may read the file: for a file it owns (not as root, whose capabilities the kernel
    weighs) the owner's mode bit decides, as POSIX ACLs never override the owner, with no system call; any
    other file is asked of the kernel (``access``)."""
    euid = os.geteuid()
    if euid and st.st_uid == euid:
        return bool(st.st_mode & stat_mod.S_IRUSR)
    return os.access(path, os.R_OK)


def _real_paths(root: Path, rels: list[str]) -> dict[str, str]:
    """The real path of each of ``rels`` (regular files, not symlinks, as ``lstat`` just said), resolving each
    folder once: a backfill's thousands of files per check cost one ``realpath`` per folder, not per file."""
    folders: dict[str, str] = {}
    out: dict[str, str] = {}
    for rel in rels:
        folder, _, name = rel.rpartition("/")
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = os.path.realpath(root / folder) if folder else os.path.realpath(root)
        out[rel] = os.path.join(real, name)
    return out


def files_open_for_writing(paths: list[Path] | list[str], *, resolved: bool = False) -> set[str] | None:
    """The real paths among ``paths`` that a process on this host holds open for writing, from ``/proc``.

    Used for files a scan found (no close event seen) in inotify mode. Processes whose ``/proc/PID/fd`` this
    user may not read are invisible: run the watcher as the detector's user (or root) for a complete answer.
    ``resolved``: ``paths`` are real paths already. Returns None when ``/proc`` is not available.
    """
    seen = writers_seen([str(p) for p in paths] if resolved else [os.path.realpath(p) for p in paths])
    return None if seen is None else seen[0]


def _proc_hides_processes() -> bool:
    """Whether ``/proc`` is mounted with ``hidepid`` (other users' processes not even listed) and this process
    is not root: then no listing of ``/proc`` can show that no one else holds a file open."""
    if os.geteuid() == 0:
        return False
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and fields[4] == "/proc" and "hidepid=" in line:
                    value = line.split("hidepid=", 1)[1].split(",", 1)[0].split()[0]
                    return value not in ("0", "off")
    except OSError:
        return True
    return False


def writers_seen(real_paths: list[str]) -> tuple[set[str], bool] | None:
    """``files_open_for_writing`` for real paths, and whether every process's open files could be read (False
    when some ``/proc/PID/fd`` was not readable by this user, or ``/proc`` hides other users' processes from
    it: a writer may have been missed)."""
    wanted = set(real_paths)
    if not os.path.isdir("/proc/self/fd"):
        return None
    found: set[str] = set()
    complete = not _proc_hides_processes()
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:  # gone meanwhile
            continue
        except OSError:  # another user's process: its open files are invisible
            complete = False
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
    return found, complete


