"""The catalogue step (seed ``move.py`` step 3): describe every moved 7.3.3 scan in the catalogue, and give users
their data back (``download_dataset``).

Plain functions over ``Context`` (ledger, tiers, catalogue); the Prefect task only calls ``catalogue_batch``.

What one step does (``catalogue_batch``):

1. ``retry_pending`` first: scans left ``pending_catalogue`` by an earlier step are ingested again from the
   ledger (the ledger knows their files, checksums and copies; the raw files are re-read for metadata).
2. The batch's files are grouped into scans (``group_scans``: a hi/lo pair and its ``.gb`` are one scan). The
   scan's *whole* file set is used, not only this batch's share: the files of its folder the ledger knows and
   those on the source tier, so how the watcher cut the batches does not change the dataset.
3. Per scan: excluded stems (``dataset.exclude_stems``) are recorded ``excluded`` and not catalogued. A scan
   with a file on the source tier that is not yet verified on the archive tier, or (for up to
   ``dataset.settle_seconds``) missing an expected file, waits (``pending_catalogue``, reason given) and is
   picked up by a later step. Otherwise its metadata is read (``read_scan``; bad content becomes errors on the
   dataset, never a failure), the dataset is created if absent (``upsert``, idempotent), one location per
   tier holding every file verified is added, the preview attached, and the scan recorded ``catalogued``
   with its pid.

Outages and refusals (issue item 6):

* ``CatalogueUnavailable`` (SciCat down, 5xx, timeouts after the adapter's own retries) never fails the step:
  the scan is recorded ``pending_catalogue`` with the error and re-ingested by a later step or
  ``splash-flows catalog retry``. After the first outage in a step the remaining scans are queued without
  being tried, so an outage costs one retry cycle per step, not one per scan.
* Any other ``CatalogueError`` (a 4xx: our bug or bad data) marks that scan ``failed`` and is reported in
  ``CatalogueReport.failed``; the other scans go on, and ``raise_for_failures`` makes the step fail loudly
  naming every failed scan and its cause.

Pruned copies (issue 5 item 5): a location is ``verified`` while every file of the scan is verified on that tier
and ``pruned`` (history, not missing data) once every file was deleted there by pruning. A prune queues the
scan's update in the ledger (``pending_catalogue`` *with its pid*: the dataset exists, only its locations wait)
and applies it at once (``update_locations``); ``retry_pending`` applies what an outage left queued, sending only
the locations that changed. ``catalog download`` never reads a pruned copy: it goes by the ledger's verified
copies, not by the catalogue.

How a pending catalogue shows in the Prefect run: the transfers are verified and their results stand, so the
run is *Completed* -- but under the state name ``CataloguePending`` with a message saying which scans wait
and why, and the catalogue task logs a WARNING. Failing the run instead would say the data is at risk when
it is not, and would invite re-running the transfers, which cannot help a catalogue that is down; the
catalogue work is not dropped but durably queued in the ledger, where ``status`` shows it per file.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from splash_flows.beamlines.bl733.dataset import dataset_for_scan
from splash_flows.beamlines.bl733.edf import beamline_zone
from splash_flows.beamlines.bl733.metadata import ScanMetadata, read_scan
from splash_flows.beamlines.bl733.scans import Role, Scan, group_scans, is_results_path
from splash_flows.beamlines.bl733.thumbnail import thumbnail_png
from splash_flows.catalogue.base import BatchingCatalogue, Catalogue, CatalogueEntry, DatasetDoc, LocationDoc
from splash_flows.config import Config
from splash_flows.context import Context
from splash_flows.errors import (
    BatchError,
    CatalogueError,
    CatalogueUnavailable,
    LedgerError,
    MetadataError,
    PathEscapeError,
    SplashFlowsError,
    TierError,
    VerificationError,
)
from splash_flows.ledger import EventKind
from splash_flows.ledger import catalogue as ledger_cat
from splash_flows.ledger.catalogue import WAITING_PREFIX, LedgerFile, ScanRecord, ScanWrite
from splash_flows.ledger.models import CatalogueState
from splash_flows.paths import display_path, normalize_relpath, safe_join
from splash_flows.selection import MoveRule
from splash_flows.tiers.base import CopyItem, CopyResult
from splash_flows.tiers.local import LocalTier

log = logging.getLogger(__name__)
_PREVIEW_ROLES: tuple[Role, ...] = ("single", "hi", "lo")

#: At most this many pending scans are retried per catalogue step (bounds a step's time after a long outage).
RETRY_LIMIT = 200
#: Caption of the preview attached to every dataset.
THUMBNAIL_CAPTION = "preview"
#: Location state of a tier holding every file of the scan, verified.
VERIFIED = "verified"
#: Location state of a tier from which every file of the scan was deleted by pruning (history, not lost data).
PRUNED = "pruned"

ProgressFn = Callable[[str, int], None]


def location_tiers(config: Config) -> list[str]:
    """The tiers a dataset's location history lists: the move targets and the archive tier (the source tier,
    data733, is where the files were acquired, not a place users get them from, and is not listed)."""
    return list(dict.fromkeys([*config.move.targets, config.dataset.archive_tier]))


def is_transient(err: BaseException) -> bool:
    """Whether running the catalogue step again soon may help: a ledger hiccup or an unreachable catalogue.
    A refusal (4xx), bad configuration or a failed scan batch is not retried."""
    if isinstance(err, BatchError):
        return False
    return isinstance(err, LedgerError | CatalogueUnavailable)


# ---------------------------------------------------------------------------------------------- reports


@dataclass
class CatalogueReport:
    """What one catalogue step (or one ``retry_pending``) did, per scan key."""

    catalogued: dict[str, str] = field(default_factory=dict)   # scan key -> pid (new, or updated)
    unchanged: dict[str, str] = field(default_factory=dict)    # scan key -> pid (already catalogued as is)
    pending: dict[str, str] = field(default_factory=dict)      # scan key -> why it waits
    excluded: list[str] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)
    unavailable: str | None = None      # the outage that left scans pending, if any
    retried: CatalogueReport | None = None
    not_run: str | None = None          # why the step did not run at all (no catalogue configured)

    def failures(self) -> dict[str, SplashFlowsError]:
        out = dict(self.failed)
        if self.retried is not None:
            out.update({f"{key} (retried)": err for key, err in self.retried.failed.items()})
        return out

    def all_pending(self) -> dict[str, str]:
        """Scans left pending by this step, including those its retry could not ingest."""
        out = dict(self.retried.pending) if self.retried is not None else {}
        out.update(self.pending)
        return out

    def raise_for_failures(self) -> None:
        """Raise ``BatchError`` naming every scan the catalogue refused (pending scans are not failures)."""
        failures = self.failures()
        if failures:
            total = len(self.catalogued) + len(self.unchanged) + len(self.pending) + len(self.failed)
            if self.retried is not None:
                total += len(self.retried.failed)
            raise BatchError("catalogue ingests", failures, total=max(total, len(failures)))

    def summary(self) -> dict[str, Any]:
        """Counts for a flow's result and the CLI."""
        out: dict[str, Any] = {
            "catalogued": len(self.catalogued), "unchanged": len(self.unchanged), "pending": len(self.pending),
            "excluded": len(self.excluded), "failed": len(self.failed),
        }
        if self.retried is not None:
            out["retried"] = {"catalogued": len(self.retried.catalogued), "pending": len(self.retried.pending),
                              "failed": len(self.retried.failed)}
        if self.not_run is not None:
            out["not_run"] = self.not_run
        return out

    def describe(self) -> str:
        """One line for logs."""
        if self.not_run is not None:
            return f"catalogue step not run: {self.not_run}"
        s = self.summary()
        text = (f"{s['catalogued']} scan(s) catalogued, {s['unchanged']} already catalogued, {s['pending']} pending, "
                f"{s['excluded']} excluded, {s['failed']} failed")
        if self.retried is not None and (self.retried.catalogued or self.retried.pending or self.retried.failed):
            r = s["retried"]
            text += f"; retried: {r['catalogued']} catalogued, {r['pending']} still pending, {r['failed']} failed"
        return text


# ---------------------------------------------------------------------------------------------- ingest


def _folder_of(key_or_path: str) -> str:
    return key_or_path.rpartition("/")[0]


def _relative(path: str, folder: str) -> str:
    return path[len(folder) + 1:] if folder else path


def _expected_paths(scan: Scan) -> set[str]:
    """The files a complete scan of this kind has (7.3.3 naming, see ``beamlines/bl733/scans.py``)."""
    if scan.kind == "other":
        return set(scan.paths)
    base = f"{scan.folder}/" if scan.folder else ""
    det = scan.detector
    if scan.kind == "exposure":
        return {f"{base}{scan.stem}.{ext}" for ext in ("edf", "txt")} | set(scan.paths)
    det = det or "2m"
    out = {f"{base}{scan.stem}_{part}_{det}.{ext}" for part in ("hi", "lo") for ext in ("edf", "txt")}
    return out | {f"{base}{scan.stem}_sfloat_{det}.gb"} | set(scan.paths)


def _shape_from_headers(meta: ScanMetadata) -> tuple[int, int] | None:
    """(rows, columns) of the scan's frames from an EDF header (``Dim_2``, ``Dim_1``), if one says."""
    for values in meta.edf_headers.values():
        try:
            return int(values["Dim_2"]), int(values["Dim_1"])
        except (KeyError, ValueError):
            continue
    return None


@dataclass
class _FolderView:
    """A folder's files: what the ledger knows and what the source tier holds, grouped into scans."""

    ledger_files: dict[str, LedgerFile]
    on_source: set[str]
    scans: dict[str, Scan]


class _Ingest:
    """One catalogue step's working state: the catalogue, folder caches, the outage breaker, and the step's
    writes -- to the catalogue (one ``batch()`` transaction when the catalogue can) and to the ledger (one
    transaction of scan records) -- which ``finish`` commits in that order."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.archive = ctx.config.archive_tier_name()
        self.location_tiers = location_tiers(ctx.config)
        self.unavailable: str | None = None
        self._folders: dict[tuple[str, str], _FolderView] = {}
        self._records: dict[tuple[str, str], ScanRecord | None] = {}
        self._writes: list[ScanWrite] = []
        self._created: set[tuple[str, str]] = set()   # scans whose dataset this step made (pid new to the ledger)
        self._cat: Catalogue | None = None
        self._batch = ExitStack()

    @property
    def catalogue(self) -> Catalogue:
        """Built on first use, inside a scan's ingest: a catalogue that cannot even be opened is an outage
        like any other (CatalogueUnavailable -> pending), not a failure of the step. A catalogue that can
        (``BatchingCatalogue``) makes all of this step's calls one transaction, committed by ``finish``."""
        if self._cat is None:
            cat = self.ctx.catalogue()
            if isinstance(cat, BatchingCatalogue):
                self._batch.enter_context(cat.batch())
            self._cat = cat
        return self._cat

    def _record(self, source_tier: str, scan_key: str, state: CatalogueState, *, files: Sequence[LedgerFile],
                pid: str | None = None, error: str | None = None, locations: dict[str, Any] | None = None,
                attempted: bool = True) -> None:
        """Queue a scan's ledger record for ``finish`` (``ledger.catalogue.record_scan``'s arguments)."""
        self._writes.append(ScanWrite(source_tier, scan_key, state, files, pid, error, locations, attempted))

    def prefetch(self, source_tier: str, keys: Sequence[str]) -> None:
        """Read the ledger records of ``keys`` in one query (instead of one per scan)."""
        wanted = [k for k in keys if (source_tier, k) not in self._records]
        found = ledger_cat.get_scans(self.ctx.ledger, source_tier, wanted)
        self._records.update({(source_tier, k): found.get(k) for k in wanted})

    def record_of(self, source_tier: str, key: str) -> ScanRecord | None:
        if (source_tier, key) not in self._records:
            self._records[(source_tier, key)] = ledger_cat.get_scan(self.ctx.ledger, source_tier, key)
        return self._records[(source_tier, key)]

    def finish(self, report: CatalogueReport) -> None:
        """Commit the step: the catalogue's transaction first, then the scan records in one ledger transaction.
        If the catalogue's commit fails, the scans this step catalogued are recorded ``pending_catalogue`` (the
        ledger never says catalogued for what the catalogue does not hold); a ledger failure raises LedgerError
        (the catalogue's writes are idempotent: the next step finds them and records the scans)."""
        try:
            self._batch.close()
        except CatalogueError as err:
            log.warning("catalogue: the batch of this step was not committed; its scans are queued: %s", err)
            reason = f"catalogue batch not committed: {err}"
            if isinstance(err, CatalogueUnavailable):
                self.unavailable = self.unavailable or str(err)
                report.unavailable = report.unavailable or str(err)
            for i, w in enumerate(self._writes):
                if w.state == CatalogueState.CATALOGUED:
                    pid = None if (w.source_tier, w.scan_key) in self._created else w.pid
                    self._writes[i] = ScanWrite(w.source_tier, w.scan_key, CatalogueState.PENDING, w.files, pid,
                                                reason, None, True)
                    for rep in (report, report.retried):
                        if rep is not None and w.scan_key in rep.catalogued:
                            del rep.catalogued[w.scan_key]
                            rep.pending[w.scan_key] = reason
        writes, self._writes = self._writes, []
        ledger_cat.record_scans(self.ctx.ledger, writes)

    # ------------------------------------------------------------------ finding a scan's files

    def folder(self, source_tier: str, folder: str) -> _FolderView:
        key = (source_tier, folder)
        if key not in self._folders:
            known = {f.path: f for f in ledger_cat.files_in_folder(self.ctx.ledger, source_tier, folder)}
            on_source = self._list_source(source_tier, folder)
            scans = group_scans(sorted(set(known) | on_source), exclude=self.config.dataset.exclude_stems)
            self._folders[key] = _FolderView(known, on_source, {s.key: s for s in scans})
        return self._folders[key]

    def _list_source(self, source_tier: str, folder: str) -> set[str]:
        """Regular files directly in ``folder`` on the source tier that are files to move (``MoveRule``: hidden,
        temporary and lock files, e.g. ``.name.part`` still being written, are left out). Empty when the source
        is not a local folder."""
        if source_tier not in self.config.tiers:
            return set()
        tier = self.ctx.tier(source_tier)
        if not isinstance(tier, LocalTier):
            return set()
        root = tier.path(folder) if folder else tier.root
        try:
            entries = list(os.scandir(root))
        except FileNotFoundError:
            return set()
        except OSError as err:
            raise TierError(f"cannot list folder: {err.strerror or err}", tier=source_tier,
                            path=folder or ".") from None
        prefix = f"{folder}/" if folder else ""
        rule = MoveRule.from_config(self.config)  # the files a scan has are the files to move, nothing else
        return {prefix + e.name for e in entries
                if not rule.ignored_name(e.name) and rule.refusal(prefix + e.name) is None
                and e.is_file(follow_symlinks=False)}

    # ------------------------------------------------------------------ one scan

    def scan(self, source_tier: str, key: str, report: CatalogueReport) -> None:
        """Catalogue one scan (or record why not) and note the outcome in ``report``."""
        try:
            view = self.folder(source_tier, _folder_of(key))
            scan = view.scans.get(key)
            if scan is None:
                err = CatalogueError(f"scan {key}: no file of it is known to the ledger or on {source_tier}")
                self._record(source_tier, key, CatalogueState.FAILED, files=[],
                                       error=str(err))
                report.failed[key] = err
                return
            self._scan(source_tier, scan, view, report)
        except TierError as err:  # the source tier could not be listed or read: try again later
            self._pending(source_tier, key, [], f"{err}", report)

    def _scan(self, source_tier: str, scan: Scan, view: _FolderView, report: CatalogueReport) -> None:
        key = scan.key
        files = [view.ledger_files[p] for p in scan.paths if p in view.ledger_files]
        if not scan.catalogue or not scan.is_data:
            self._record(source_tier, key, CatalogueState.EXCLUDED, files=files,
                                   attempted=False)
            if not scan.is_data:
                log.info("scan %s: moved and kept, not catalogued (no 7.3.3 image, sidecar or .gb merge)", key)
            report.excluded.append(key)
            return
        waiting = [p for p in scan.paths if p not in view.ledger_files or not view.ledger_files[p].verified_on(
            self.archive)]
        if waiting:
            self._pending(source_tier, key, files, f"{WAITING_PREFIX}for {len(waiting)} file(s) to be verified on "
                          f"{self.archive}: {', '.join(waiting[:5])}", report, attempted=False)
            return
        if files and all(f.size == 0 for f in files):
            self._record(source_tier, key, CatalogueState.EXCLUDED, files=files,
                                   attempted=False)
            log.info("scan %s: moved and kept, not catalogued (only 0-byte files: a marker, not data)", key)
            report.excluded.append(key)
            return
        missing = sorted(_expected_paths(scan) - set(scan.paths))
        settle = self.config.dataset.settle_seconds
        newest = max(f.mtime for f in files)
        if missing and time.time() - newest < settle:
            self._pending(source_tier, key, files, f"{WAITING_PREFIX}up to {settle:.0f} s after the newest file for "
                          f"{', '.join(missing)}", report, attempted=False)
            return
        record = self.record_of(source_tier, key)
        locations = self._locations(files, record.locations if record is not None else {})
        locations_json = {t: loc.model_dump(mode="json") for t, loc in locations.items()}
        ids = frozenset(f.id for f in files)
        if (record is not None and record.state == CatalogueState.CATALOGUED and record.pid
                and record.file_ids == ids and record.files_digest == ledger_cat.files_digest(files)
                and record.locations == locations_json):
            report.unchanged[key] = record.pid
            return
        if self.unavailable is not None:
            self._pending(source_tier, key, files, f"catalogue unavailable: {self.unavailable}", report,
                          attempted=False)
            return
        try:
            pid = self._ingest(source_tier, scan, files, locations)
        except CatalogueUnavailable as err:
            self.unavailable = str(err)
            report.unavailable = report.unavailable or str(err)
            self._pending(source_tier, key, files, str(err), report)
            log.warning("catalogue unavailable; scan %s and the rest of this step are queued: %s", key, err)
            return
        except CatalogueError as err:
            self._record(source_tier, key, CatalogueState.FAILED, files=files,
                                   error=str(err))
            report.failed[key] = err
            log.error("scan %s not catalogued: %s", key, err)
            return
        if record is None or record.pid != pid:
            self._created.add((source_tier, key))
        self._record(source_tier, key, CatalogueState.CATALOGUED, files=files, pid=pid,
                               locations=locations_json)
        report.catalogued[key] = pid

    def scan_pending(self, source_tier: str, key: str, reason: str, report: CatalogueReport) -> None:
        """Record scan ``key`` as ``pending_catalogue`` with all its known files, without trying it."""
        try:
            view = self.folder(source_tier, _folder_of(key))
        except TierError as err:
            self._pending(source_tier, key, [], f"{reason}; {err}", report, attempted=False)
            return
        scan = view.scans.get(key)
        files = [view.ledger_files[p] for p in scan.paths if p in view.ledger_files] if scan is not None else []
        self._pending(source_tier, key, files, reason, report, attempted=False)

    def _pending(self, source_tier: str, key: str, files: Sequence[LedgerFile], reason: str,
                 report: CatalogueReport, *, attempted: bool = True) -> None:
        self._record(source_tier, key, CatalogueState.PENDING, files=files, error=reason,
                               attempted=attempted)
        report.pending[key] = reason

    def _locations(self, files: Sequence[LedgerFile], recorded: dict[str, Any]) -> dict[str, LocationDoc]:
        """One location per tier holding every file of the scan verified (``verified``, since the last of them
        was verified there), or from which every file was pruned (``pruned``, since the last deletion: history,
        not missing data). A tier in between (some files pruned, or not all verified yet) is left out: the
        catalogue keeps what it last said about it. ``since`` stays as first recorded for an unchanged state: a
        re-run of the move re-verifies (and re-stamps) the copies, but the files have been there since the first
        time, and an unchanged location costs the catalogue nothing."""
        out: dict[str, LocationDoc] = {}
        for tier_name in self.location_tiers:
            if not files:
                continue
            if all(f.verified_on(tier_name) for f in files):
                state = VERIFIED
                since = max(f.copies[tier_name].verified_at or datetime.fromtimestamp(f.mtime, UTC) for f in files)
            elif all(tier_name in f.copies and f.copies[tier_name].state == PRUNED for f in files):
                state = PRUNED
                since = ledger_cat.pruned_since(self.ctx.ledger, [f.id for f in files], tier_name) or datetime.now(UTC)
            else:
                continue
            url = posixpath.dirname(self.ctx.tier(tier_name).url(files[0].path))
            location = LocationDoc(tier=tier_name, url=url, state=state, since=since)
            before = recorded.get(tier_name)
            if isinstance(before, dict):
                try:
                    earlier = LocationDoc.model_validate(before)
                except ValidationError:
                    earlier = None
                if earlier is not None and (earlier.url, earlier.state) == (url, state):
                    location = earlier
            out[tier_name] = location
        return out

    def update_locations(self, record: ScanRecord, report: CatalogueReport) -> None:
        """Bring the locations of an already catalogued scan up to date (after pruning): only the tiers whose
        location changed since the ledger last recorded them are sent (``add_location`` replaces by tier). The
        scan's dataset and files are not touched. An outage leaves the scan ``pending_catalogue`` with its pid,
        for the next ``retry_pending``; a refusal marks it ``failed`` (with its pid, so a retry after the cause
        is fixed again only updates the locations)."""
        key = record.scan_key
        files = list(ledger_cat.files_by_path(self.ctx.ledger, record.source_tier, list(record.paths)).values())
        if record.pid is None or not files:
            self.scan(record.source_tier, key, report)
            return
        pid = record.pid
        if self.unavailable is not None:
            self._record(record.source_tier, key, CatalogueState.PENDING, files=files,
                                   pid=pid, error=record.error, attempted=False)
            report.pending[key] = f"catalogue unavailable: {self.unavailable}"
            return
        locations = self._locations(files, record.locations)
        locations_json = {t: loc.model_dump(mode="json") for t, loc in locations.items()}
        changed = [loc for t, loc in locations.items() if record.locations.get(t) != locations_json[t]]
        try:
            for location in changed:
                self.catalogue.add_location(pid, location)
        except CatalogueUnavailable as err:
            self.unavailable = str(err)
            report.unavailable = report.unavailable or str(err)
            reason = f"location update waits: {err}"
            self._record(record.source_tier, key, CatalogueState.PENDING, files=files,
                                   pid=pid, error=reason)
            report.pending[key] = reason
            log.warning("catalogue unavailable; the location update of scan %s (%s) is queued: %s", key, pid, err)
            return
        except CatalogueError as err:
            self._record(record.source_tier, key, CatalogueState.FAILED, files=files,
                                   pid=pid, error=f"location update refused: {err}")
            report.failed[key] = err
            log.error("scan %s (%s): location update refused: %s", key, pid, err)
            return
        self._record(record.source_tier, key, CatalogueState.CATALOGUED, files=files,
                               pid=pid, locations=locations_json)
        if changed:
            report.catalogued[key] = pid
            log.info("scan %s (%s): location(s) %s updated", key, pid,
                     ", ".join(f"{loc.tier} {loc.state}" for loc in changed))
        else:
            report.unchanged[key] = pid

    def _ingest(self, source_tier: str, scan: Scan, files: Sequence[LedgerFile],
                locations: dict[str, LocationDoc]) -> str:
        """Create (if absent) and complete the dataset of ``scan``; return its pid. Raises CatalogueError."""
        meta, root = self._metadata(source_tier, scan, files)
        png = self._preview(scan, meta, root) if root is not None else None
        doc = self._document(scan, meta, files, locations)
        cat = self.catalogue
        # Two runs may catalogue one scan at once (a move and the retry clock, a re-sent batch): the find and
        # the create happen under a lock per scan held in the ledger, so the second finds the first's dataset.
        with self.ctx.ledger.named_lock(f"catalogue:{source_tier}:{scan.key}"):
            entry = cat.find(scan.key)
            pid = cat.upsert(doc) if entry is None or not entry.doc.files else entry.pid
        if entry is not None and entry.doc.files:
            listed = {f.path: f for f in entry.doc.files}
            added = sorted(f.path for f in doc.files if f.path not in listed)
            changed = sorted(f.path for f in doc.files if f.path in listed and listed[f.path].chk != f.chk)
            if added or changed:
                # a file rewritten in place (new checksum) or one that arrived after the dataset was made: the
                # ledger is the truth; files the catalogue lists that this scan no longer has are kept
                ours = {f.path for f in doc.files}
                file_list = [*doc.files, *(f for f in entry.doc.files if f.path not in ours)]
                cat.replace_files(pid, sorted(file_list, key=lambda f: f.path), doc.checksum_algorithm)
                log.info("scan %s: file list of dataset %s updated (%s)", scan.key, pid, "; ".join(
                    part for part in (f"new version of {', '.join(changed)}" if changed else "",
                                      f"added {', '.join(added)}" if added else "") if part))
        known = entry.doc.locations if entry is not None else []
        for location in locations.values():
            if location not in known:
                cat.add_location(pid, location)
        if png is not None and (entry is None or not entry.has_thumbnail):
            cat.attach_thumbnail(pid, png, THUMBNAIL_CAPTION)
        log.info("scan %s catalogued as %s (%d files, %d error(s) noted)", scan.key, pid, len(doc.files),
                 len(doc.errors))
        return pid

    def _preview(self, scan: Scan, meta: ScanMetadata, root: Path) -> bytes | None:
        """The PNG preview: of ``meta.thumbnail_source`` (the ``.gb`` merge, whose shape -- it has no header -- is
        taken from the scan's EDF headers), else of the first EDF image that can be read. What could not be
        previewed is noted in ``meta.errors``; a missing preview never stops cataloguing."""
        gb_shape = _shape_from_headers(meta)
        candidates = [meta.thumbnail_source] if meta.thumbnail_source else []
        candidates += [f.path for role in _PREVIEW_ROLES for f in scan.by_role(role, "edf")]
        for path in dict.fromkeys(candidates):
            try:
                if gb_shape is not None:
                    return thumbnail_png(root / path, self.config.dataset.thumbnail_size, gb_shape=gb_shape)
                return thumbnail_png(root / path, self.config.dataset.thumbnail_size)
            except MetadataError as err:
                meta.errors.append(f"no preview from {path}: {err}")
            except (OSError, ValueError) as err:  # pixels a damaged file decodes to that cannot be pictured
                meta.errors.append(f"no preview from {path}: {type(err).__name__}: {err}")
        return None

    def _metadata(self, source_tier: str, scan: Scan,
                  files: Sequence[LedgerFile]) -> tuple[ScanMetadata, Path | None]:
        """Read the scan from the first local tier holding its files (the source, else the archive, else another
        target). With no readable copy the dataset still gets file-level facts and the reason."""
        candidates = [source_tier, self.archive, *self.config.move.targets]
        for name in dict.fromkeys(candidates):
            if name not in self.config.tiers:
                continue
            tier = self.ctx.tier(name)
            if not isinstance(tier, LocalTier):
                continue
            if not any((tier.root / p).is_file() for p in scan.paths):
                continue
            try:
                return read_scan(tier.root, scan, zone=self.config.timezone,
                                 proposal_folder=self.config.dataset.proposal_folder_pattern), tier.root
            except MetadataError as err:
                log.warning("scan %s: cannot read its files on %s: %s", scan.key, name, err)
        zone = beamline_zone(self.config.timezone)
        meta = ScanMetadata(scan_key=scan.key, name=scan.stem, kind=scan.kind, catalogue=scan.catalogue,
                            creation_time=datetime.fromtimestamp(min(f.mtime for f in files), zone),
                            creation_time_source="mtime",
                            errors=[f"{scan.key}: no local tier holds a readable copy; metadata not read"])
        return meta, None

    def _document(self, scan: Scan, meta: ScanMetadata, files: Sequence[LedgerFile],
                  locations: dict[str, LocationDoc]) -> DatasetDoc:
        ds = self.config.dataset
        try:
            doc = dataset_for_scan(
                meta,
                [(_relative(f.path, scan.folder), f.size, datetime.fromtimestamp(f.mtime, UTC), f.checksum)
                 for f in files],
                checksum_algorithm=files[0].checksum_alg,
                source_folder=locations[self.archive].url,
                source_folder_host=ds.source_folder_host,
                creation_location=ds.creation_location,
                default_owner_group=ds.default_owner_group,
                contact_email=ds.contact_email,
                beamline_group=ds.beamline_group,
            )
            return doc.model_copy(update={"locations": list(locations.values())})
        except ValidationError as err:
            raise CatalogueError(f"scan {scan.key}: cannot build its dataset document: {err}") from err


# ---------------------------------------------------------------------------------------------- entry points


def _not_run(ctx: Context, files: int) -> CatalogueReport:
    reason = "no catalogue configured (catalogue.kind is 'none')"
    ctx.ledger.record_event(EventKind.STEP_NOT_RUN, detail={"step": "catalogue", "reason": reason, "files": files})
    return CatalogueReport(not_run=reason)


def catalogue_batch(ctx: Context, paths: Sequence[str]) -> CatalogueReport:
    """Catalogue the scans of a moved batch (tier-relative paths on the source tier); first retry the scans
    an earlier step left pending. Never raises for one scan's trouble: see ``CatalogueReport`` and
    ``raise_for_failures``. Raises LedgerError/ConfigError when the step as a whole cannot run.

    Paid per batch, not per scan: the ledger records of the batch's scans are read in one query and written in
    one transaction, and the embedded catalogue writes the batch in one transaction (``_Ingest.finish``).
    Scans that wait for their own files (sidecar not arrived, not yet on the archive tier) are not re-checked
    by every batch: the batch that brings the missing file re-checks its scan at once (the file is in the
    batch, so its scan is one of the batch's scans), other batches re-check them at most every
    ``dataset.wait_recheck_seconds``, and ``catalogue_retry_733`` (the clock) catalogues those whose wait
    ended."""
    if not ctx.catalogue_enabled:
        return _not_run(ctx, len(paths))
    source = ctx.config.move.source
    clean: list[str] = []
    for raw in dict.fromkeys(paths):
        try:
            clean.append(normalize_relpath(raw, tier=source))
        except PathEscapeError:
            continue  # refused and recorded by the move step; never catalogued
    results = ctx.config.analysis.results_folder
    clean = [p for p in clean if not is_results_path(p, results)]  # analysis outputs: a derived dataset, not raw
    known = ledger_cat.files_by_path(ctx.ledger, source, clean)
    keys = [s.key for s in group_scans(sorted(known), exclude=ctx.config.dataset.exclude_stems)]
    ingest = _Ingest(ctx)
    report = CatalogueReport()
    ingest.prefetch(source, keys)
    recheck = datetime.now(UTC) - timedelta(seconds=ctx.config.dataset.wait_recheck_seconds)
    try:
        report.retried = _retry(ctx, ingest, include_failed=False, limit=RETRY_LIMIT, skip=set(keys),
                                waiting_checked_before=recheck)
        for key in keys:
            ingest.scan(source, key, report)
    finally:
        ingest.finish(report)
    if report.unavailable is None and report.retried.unavailable is not None:
        report.unavailable = report.retried.unavailable
    return report


def retry_pending(ctx: Context, *, include_failed: bool = False, limit: int = RETRY_LIMIT) -> CatalogueReport:
    """Ingest again the scans the ledger holds as ``pending_catalogue`` (and ``failed`` with
    ``include_failed``), least recently tried first, at most ``limit``. Stops trying at the first outage.
    Waiting scans are all re-checked (this is the clock, ``catalogue_retry_733``, and ``catalog retry``)."""
    if not ctx.catalogue_enabled:
        return _not_run(ctx, 0)
    ingest = _Ingest(ctx)
    report = CatalogueReport()
    try:
        report = _retry(ctx, ingest, include_failed=include_failed, limit=limit, skip=set())
    finally:
        ingest.finish(report)
    return report


def uncatalogued_scans(ctx: Context, *, limit: int = RETRY_LIMIT, now: float | None = None) -> list[str]:
    """Keys of the scans with a file verified on every target that the catalogue step never recorded (its run
    was killed between copy and catalogue): the ledger's invariant says each must be catalogued, pending,
    excluded or failed. Files verified less than ``move.recover_after_s`` ago are left to their own run."""
    cutoff = datetime.fromtimestamp((time.time() if now is None else now) - ctx.config.move.recover_after_s, UTC)
    paths = ledger_cat.uncatalogued_files(ctx.ledger, ctx.config.move.source, ctx.config.move.targets,
                                          verified_before=cutoff, limit=limit)
    return [s.key for s in group_scans(paths, exclude=ctx.config.dataset.exclude_stems)]


def _retry(ctx: Context, ingest: _Ingest, *, include_failed: bool, limit: int, skip: set[str],
           waiting_checked_before: datetime | None = None) -> CatalogueReport:
    """Scans pending (and failed, with ``include_failed``) in the ledger, then scans the catalogue step never
    saw although their files are verified (``uncatalogued_scans``). ``waiting_checked_before``: the back-off
    of scans waiting for their own files (see ``ledger.catalogue.scans_in_state``)."""
    report = CatalogueReport()
    states = [CatalogueState.PENDING] + ([CatalogueState.FAILED] if include_failed else [])
    source = ctx.config.move.source
    for key in uncatalogued_scans(ctx, limit=limit):
        if key in skip:
            continue
        log.warning("scan %s: verified but never catalogued (its run was interrupted); cataloguing it now", key)
        if ingest.unavailable is not None:
            ingest.scan_pending(source, key, f"catalogue unavailable: {ingest.unavailable}", report)
            continue
        ingest.scan(source, key, report)
        skip.add(key)
    records = ledger_cat.scans_in_state(ctx.ledger, states, limit=limit, waiting_checked_before=waiting_checked_before)
    for record in records:
        if record.scan_key in skip and record.source_tier == ctx.config.move.source:
            continue  # in the current batch: handled there
        ingest._records[(record.source_tier, record.scan_key)] = record
        if ingest.unavailable is not None:
            report.pending[record.scan_key] = f"catalogue unavailable: {ingest.unavailable}"
            continue  # left as it is in the ledger; tried again by the next step
        if record.pid is not None:  # the dataset exists: only its locations wait (queued by pruning)
            ingest.update_locations(record, report)
        else:
            ingest.scan(record.source_tier, record.scan_key, report)
    return report


def update_locations(ctx: Context, records: Sequence[ScanRecord]) -> CatalogueReport:
    """Update the locations of catalogued scans queued by pruning (``ledger.catalogue.queued_location_updates``)
    right away; what an outage leaves queued is done by a later ``retry_pending``. Never raises for one scan's
    trouble (see ``CatalogueReport``)."""
    report = CatalogueReport()
    if not records or not ctx.catalogue_enabled:
        return report
    ingest = _Ingest(ctx)
    try:
        for record in records:
            ingest.update_locations(record, report)
    finally:
        ingest.finish(report)
    return report


# ---------------------------------------------------------------------------------------------- data access


@dataclass(frozen=True)
class DatasetFile:
    """One file of a dataset as the ledger knows it: its path in the dataset and on the tiers."""

    name: str           # relative to the dataset's folder (= the catalogue's file path)
    tier_path: str      # tier-relative path (the same on every tier)
    size: int
    checksum: str
    checksum_alg: str
    ledger: LedgerFile | None


def short_id(pid: str) -> str:
    """The part of a pid that tells datasets apart: what follows its last ``/`` (``embedded/<uuid>`` and SciCat's
    ``<prefix>/<uuid>`` share everything before it). ``catalog search`` shows its first characters."""
    return pid.rsplit("/", 1)[-1]


def get_entry(catalogue: Catalogue, pid: str) -> CatalogueEntry:
    """The dataset ``pid`` names: a full pid, or the first characters of its ``short_id`` (as ``catalog search``
    shows them) when they match exactly one dataset. An outage is raised as it is, never taken for "no such pid"."""
    try:
        return catalogue.get(pid)
    except CatalogueUnavailable:
        raise
    except CatalogueError as err:
        if not pid or "/" in pid:
            raise
        matches = [e for e in catalogue.search() if short_id(e.pid).startswith(pid)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise CatalogueError(f"{pid!r} matches {len(matches)} datasets ({', '.join(e.pid for e in matches[:3])}"
                                 f"{', ...' if len(matches) > 3 else ''}); give more characters") from None
        raise CatalogueError(f"no dataset has the pid {pid!r} or a pid whose last part starts with it "
                             f"({err})") from None


def dataset_files(ctx: Context, pid: str) -> tuple[CatalogueEntry, list[DatasetFile]]:
    """The catalogue entry of ``pid`` (a full pid or its short form, see ``get_entry``) and its files with the
    ledger's facts (``ledger`` None: unknown to it)."""
    entry = get_entry(ctx.catalogue(), pid)
    folder = _folder_of(entry.doc.scan_key)
    by_path = {posixpath.join(folder, f.path) if folder else f.path: f for f in entry.doc.files}
    # a name the ledger cannot hold (not UTF-8, a NUL byte) is in no ledger: the download refuses it by name
    known = ledger_cat.files_by_path(ctx.ledger, ctx.config.move.source,
                                     [p for p in by_path if display_path(p) == p])
    out = []
    for tier_path, f in by_path.items():
        rec = known.get(tier_path)
        out.append(DatasetFile(f.path, tier_path, f.size, f.chk, entry.doc.checksum_algorithm, rec))
    return entry, out


@dataclass(frozen=True)
class Downloaded:
    name: str
    size: int
    checksum: str
    tier: str
    skipped: bool       # DIR already held these exact bytes


@dataclass
class DownloadReport:
    pid: str
    dest: Path
    files: list[Downloaded] = field(default_factory=list)
    failed: dict[str, SplashFlowsError] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)   # name -> why a preferred tier was not used

    def raise_for_failures(self) -> None:
        if self.failed:
            raise BatchError(f"file downloads of dataset {self.pid}", self.failed,
                             total=len(self.files) + len(self.failed))


def download_dataset(ctx: Context, pid: str, dest: Path, *, progress: ProgressFn | None = None) -> DownloadReport:
    """Copy every file of dataset ``pid`` into ``dest`` (at its path within the dataset), each from the most
    preferred tier (``Config.download_tiers``) where the ledger holds a verified copy and the file is there
    with the right size; the copy is verified against the ledger's checksum, and a tier whose copy does not
    match is passed over for the next. ``progress(name, nbytes)`` reports bytes; a negative value takes back
    the bytes of an attempt that failed. Files with no verified copy anywhere are reported in ``failed``."""
    entry, files = dataset_files(ctx, pid)
    report = DownloadReport(pid=entry.pid, dest=dest)
    for f in files:
        outcome = _download_one(ctx, f, dest, report.notes.setdefault(f.name, []), progress)
        if isinstance(outcome, Downloaded):
            report.files.append(outcome)
        else:
            report.failed[f.name] = outcome
    report.notes = {k: v for k, v in report.notes.items() if v}
    return report


def _download_one(ctx: Context, f: DatasetFile, dest: Path, notes: list[str],
                  progress: ProgressFn | None) -> Downloaded | SplashFlowsError:
    try:  # the catalogue names the file: it may not write outside DIR (``..``, absolute, a symlink in DIR)
        safe_join(dest, f.name, tier="download")
    except PathEscapeError as err:
        return err
    rec = f.ledger
    if rec is None:
        return TierError(f"{f.tier_path}: not in the ledger, so no copy of it is known to be verified; refusing "
                         "to download", path=f.tier_path)
    if rec.checksum != f.checksum:
        return VerificationError(f"{f.tier_path}: the ledger's checksum {rec.checksum} differs from the "
                                 f"catalogue's {f.checksum} "
                                 "(the source changed after it was catalogued); refusing to download",
                                 path=f.tier_path)
    folder = _folder_of(f.tier_path)
    for name in ctx.config.download_tiers():
        if not rec.verified_on(name):
            state = rec.copies[name].state if name in rec.copies else "no copy"
            notes.append(f"{name}: not verified in the ledger ({state})")
            continue
        tier = ctx.tier(name)
        if not isinstance(tier, LocalTier):
            notes.append(f"{name}: a {tier.kind} tier cannot be read directly")
            continue
        st = tier.stat(f.tier_path)
        if st is None or st.size != rec.size:
            notes.append(f"{name}: " + ("file missing" if st is None else f"size {st.size} != {rec.size}"))
            continue
        sent = 0

        def counted(path: str, n: int) -> None:
            nonlocal sent
            sent += n
            if progress is not None:
                progress(f.name, n)

        source = LocalTier(name, tier.path(folder) if folder else tier.root, rec.checksum_alg, concurrency=1)
        target = LocalTier("download", dest, rec.checksum_alg, concurrency=1)
        result = target.copy_one(source, CopyItem(f.name, rec.checksum, rec.size), counted)
        if isinstance(result, CopyResult) and result.checksum == rec.checksum:
            return Downloaded(f.name, result.size, result.checksum, name, result.skipped)
        notes.append(f"{name}: {result if not isinstance(result, CopyResult) else 'checksum mismatch'}")
        if progress is not None and sent:
            progress(f.name, -sent)
    tried = "; ".join(notes) or "no tier configured"
    return TierError(f"{f.tier_path}: no verified copy to download from ({tried})", path=f.tier_path)


def entry_json(entry: CatalogueEntry) -> dict[str, Any]:
    """The stable JSON shape of one dataset in ``catalog search/show --json`` (documented in the README)."""
    doc: dict[str, Any] = entry.doc.model_dump(mode="json")
    return {"pid": entry.pid, "has_thumbnail": entry.has_thumbnail, "size": entry.doc.size, **doc}
