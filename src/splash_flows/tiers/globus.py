"""A tier that is a Globus collection: batched, checksum-verified transfers that are honest about failure.

How a batch is copied (``GlobusTier.copy_from``): items are split into tasks of at most ``max_files_per_task``
files. For each task a submission_id is obtained from Globus and recorded in the ledger (``transfer_batches``)
*before* the task is submitted, so a retried submission reuses it and Globus never starts a second task; a batch
whose task id is already known (an earlier attempt, a restart after ``kill -9``) is polled, never resubmitted.
Every task is submitted with ``sync_level="checksum"``, ``verify_checksum=True``, ``preserve_timestamp=True``, a
deadline and e-mail notifications off. Tasks are polled with backoff. The outcome per file:

* SUCCEEDED: every file is verified. A file in the task's successful-transfers list was sent; any other was
  already identical by checksum (sync) and nothing was sent (``CopyResult.skipped``).
* FAILED (including a passed deadline), or cancelled by us because it stayed INACTIVE, or ACTIVE with faults and
  no progress, for ``inactivity_limit_s``, or ACTIVE past its deadline: only the files in the successful-transfers
  list are verified; every other file gets a ``GlobusTaskError`` carrying Globus's status and event list, so a
  retry resubmits only what is missing.
* Afterwards each verified file is listed on the destination (one ``operation_ls`` per folder): it must be there
  with the ledger's size. Its size and mtime in the result come from that listing.

Who verifies what (checksums):

* Globus computes a checksum of the source and of the destination of every file it sends and compares them
  (``verify_checksum``), re-sending on mismatch; with ``sync_level="checksum"`` it also compares checksums to
  decide that an existing destination file is identical. Globus does this with its own algorithm (MD5 unless
  the collections negotiate another): our default ``xxh3_128`` is not one Globus supports.
* When the ledger's algorithm is ``sha256`` (``checksum: sha256`` in the configuration), our checksum is handed
  to Globus per file (``external_checksum`` + ``checksum_algorithm="SHA256"``): Globus then verifies both ends
  against the ledger's value, and a source that changed since it was registered fails the task.
* The ``CopyResult.checksum`` recorded for a globus copy is the ledger's source checksum, and its ``detail``
  says how it was verified (by Globus, which algorithm, the task id). With ``xxh3_128`` this means "identical to
  the source at transfer time per Globus's checksum, and of the ledger's size"; we did not recompute xxh3 on
  the copy (only a tier with ``local_root`` can be read by us).
* Globus has no API that returns a file's checksum. ``checksum()`` therefore works only where the collection is
  mounted (``local_root``); elsewhere it raises. To re-verify a copy before deleting its source (pruning), use
  ``verify_copies(source, items)``: a checksum-sync transfer from the source. Globus compares the two files'
  checksums; an identical copy is left untouched (``skipped=True``), a missing or different one is re-sent and
  verified (``skipped=False``, i.e. it was repaired). Either way, after a SUCCEEDED task the copy matches the
  source; it requires the source to still exist, which is the case before a prune deletes it.

Deletes (``delete``) are Globus delete tasks, batched the same way and recorded in the same table; a path that is
missing before the delete is reported as such, and after a failed task each path is listed again so only the
paths still present are reported as not deleted. Empty folders are left in place.

Reads (``stat``, ``walk``, ``checksum``) use the local mount when ``local_root`` is configured (the same storage,
seen by the machine running the flows); otherwise ``stat`` and ``walk`` ask Globus (``operation_stat``/``ls``).
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import globus_sdk
from globus_sdk.token_storage import TokenValidationError

from splash_flows.config import GlobusTierConfig, GlobusTransferConfig
from splash_flows.errors import (
    DeleteError,
    GlobusAuthError,
    GlobusRequestRefused,
    GlobusServiceUnavailable,
    GlobusTaskError,
    GlobusTierError,
    PathEscapeError,
    TierError,
    TransferError,
    VerificationError,
)
from splash_flows.ledger.models import BatchStatus
from splash_flows.ledger.transfers import BatchEnd, BatchRecord, TransferBatches, items_digest
from splash_flows.paths import normalize_relpath
from splash_flows.tiers.base import (
    CopyItem,
    CopyOutcome,
    CopyResult,
    FileStat,
    ProgressCallback,
    Tier,
    WalkProblem,
)
from splash_flows.tiers.local import LocalTier

T = TypeVar("T")

# Our checksum algorithms that Globus also knows, with Globus's name for them.
GLOBUS_CHECKSUM_ALGORITHMS = {"sha256": "SHA256"}
TERMINAL = ("SUCCEEDED", "FAILED")
LS_PAGE = 100_000  # Globus's maximum listing size per request
EVENTS_KEPT = 20
_PROGRESS_KEYS = ("bytes_transferred", "bytes_checksummed", "files_transferred", "files_skipped",
                  "subtasks_succeeded", "subtasks_failed", "subtasks_canceled", "subtasks_expired")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    """A Globus timestamp ("2023-12-18 16:52:50+00:00" or ISO 8601 with T) as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def translate_api_error(err: globus_sdk.GlobusAPIError, what: str, *, tier: str | None,
                        path: str | None = None) -> GlobusTierError:
    """A Globus API error as our typed error, with a message that says what to do about it."""
    status = err.http_status
    code = err.code
    said = err.message or _first_line(err.text) or err.http_reason
    ident: dict[str, Any] = {"tier": tier, "path": path, "code": code, "http_status": status,
                             "request_id": err.request_id}
    where = f" (HTTP {status}{', ' + code if code else ''}{', request ' + err.request_id if err.request_id else ''})"
    if isinstance(err, globus_sdk.AuthAPIError):
        body = err.raw_json if isinstance(err.raw_json, dict) else {}
        oauth_error = str(body.get("error") or "")
        said = str(body.get("error_description") or "") or err.message or oauth_error or err.http_reason
        if status >= 500 or status == 429:
            return GlobusServiceUnavailable(f"{what}: Globus Auth is unavailable: {said}{where}", **ident)
        if status == 401 or oauth_error in ("invalid_client", "unauthorized_client"):
            return GlobusAuthError(
                f"{what}: Globus Auth refused the service credentials: {said}{where}. The client secret is wrong, "
                "expired or revoked, or the client id is wrong: create a new secret (docs/GLOBUS.md) and update "
                "GLOBUS_CLIENT_SECRET", **ident)
        return GlobusAuthError(
            f"{what}: Globus Auth refused the token request ({oauth_error or 'no error code'}): {said}{where}; "
            "check the scopes the client may request and each tier's data_access_scope (docs/GLOBUS.md)", **ident)
    if code == "ConsentRequired" or err.info.consent_required:
        scopes = ", ".join(err.info.consent_required.required_scopes) or "a data_access scope"
        return GlobusAuthError(
            f"{what}: missing consent ({scopes}){where}: set data_access_scope: true on this tier if it is a "
            "GCS v5 mapped collection, or grant the service client access (docs/GLOBUS.md)", **ident)
    if status == 401:
        return GlobusAuthError(f"{what}: Globus rejected the service token: {said}{where}", **ident)
    if status == 429 or status >= 500:
        hint = ""
        if code and ("ExternalError" in code or "EndpointError" in code):
            hint = " (the collection's endpoint is unreachable or failing)"
        return GlobusServiceUnavailable(f"{what}: {said}{where}{hint}", **ident)
    if status == 403:
        return GlobusRequestRefused(
            f"{what}: permission denied: {said}{where}; give the service identity "
            "(<client_id>@clients.auth.globus.org) access to this path on the collection", **ident)
    if status == 404:
        return GlobusRequestRefused(f"{what}: not found: {said}{where}", **ident)
    return GlobusRequestRefused(f"{what}: Globus refused the request: {said}{where}", **ident)


class GlobusSession:
    """The Transfer client shared by every globus tier of a context, and the clock its tiers wait by.

    A ``GlobusApp`` is not thread-safe and the move service copies to several tiers at once, so every request
    goes through ``call`` under one lock (waiting between polls happens outside it). ``call`` also turns SDK
    errors into our typed errors. ``sleep``, ``monotonic`` and ``utcnow`` are injectable so tests run instantly.
    """

    def __init__(self, client: globus_sdk.TransferClient, settings: GlobusTransferConfig, *,
                 app: globus_sdk.GlobusApp | None = None, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = _utcnow) -> None:
        self.client = client
        self.app = app
        self.settings = settings
        self.sleep = sleep
        self.monotonic = monotonic
        self.utcnow = utcnow
        self._lock = threading.Lock()

    def call(self, what: str, fn: Callable[..., T], *args: Any, tier: str | None = None, path: str | None = None,
             **kwargs: Any) -> T:
        """Run one request (or a function making several) and translate its errors; ``what`` names it."""
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except globus_sdk.GlobusAPIError as err:
                raise translate_api_error(err, what, tier=tier, path=path) from None
            except globus_sdk.NetworkError as err:
                raise GlobusServiceUnavailable(f"{what}: cannot reach Globus: {type(err).__name__}: "
                                               f"{_first_line(str(err))}", tier=tier, path=path) from None
            except TokenValidationError as err:
                raise GlobusAuthError(f"{what}: the Globus token does not meet the required scopes: {err}",
                                      tier=tier, path=path) from None

    def check_credentials(self) -> int:
        """Obtain a token and have the Transfer service accept it (lists at most one task). Returns the number
        of tasks listed (0 or 1); raises GlobusAuthError naming the cause when the credentials do not work."""
        resp = self.call("authenticate and list tasks", self.client.task_list, limit=1)
        return len(resp["DATA"])

    def close(self) -> None:
        self.client.close()
        if self.app is not None:
            self.app.close()


@dataclass(frozen=True)
class _Pair:
    """One file in a Globus task: tier-relative source and destination, the ledger's checksum and size."""

    src: str
    dst: str
    checksum: str | None
    size: int | None


@dataclass(frozen=True)
class Moved:
    """One file Globus sent (``transferred``) or found identical by checksum, verified and listed afterwards."""

    path: str
    transferred: bool
    size: int
    mtime: float
    task_id: str


@dataclass(frozen=True)
class _TaskEnd:
    """How waiting for a task ended. ``reason`` is None for SUCCEEDED."""

    task: dict[str, Any]
    terminal: bool
    reason: str | None
    message: str
    status: BatchStatus


def _base_message(err: TierError) -> str:
    text = str(err)
    if err.tier is not None and err.path is not None:
        prefix = f"{err.tier}:{err.path}: "
    elif err.tier is not None:
        prefix = f"{err.tier}: "
    else:
        prefix = ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _for_item(err: TierError, tier: str, path: str) -> TierError:
    """The same error, of the same type, naming one item (so each file's failure says which file it is)."""
    msg = _base_message(err)
    if isinstance(err, GlobusTaskError):
        return GlobusTaskError(msg, tier=tier, path=path, task_id=err.task_id, status=err.status, reason=err.reason,
                               events=err.events)
    if isinstance(err, GlobusTierError):
        return type(err)(msg, tier=tier, path=path, code=err.code, http_status=err.http_status,
                         request_id=err.request_id)
    return type(err)(msg, tier=tier, path=path)


def _event_summary(events: list[dict[str, Any]], limit: int = 3) -> str:
    """Globus's own words: the newest error events (or the newest events if none is an error)."""
    chosen = [e for e in events if e.get("is_error")] or events
    parts = []
    for e in chosen[:limit]:
        details = _first_line(str(e.get("details") or ""), 200)
        parts.append(f"[{e.get('time', '?')}] {e.get('code', '?')}: {e.get('description', '')}"
                     + (f" ({details})" if details else ""))
    return "; ".join(parts)


def _label(kind: str, source: str, dest: str, n: int) -> str:
    """A task label Globus accepts (letters, digits, spaces, - _ , .) that says what the task is."""
    what = {"transfer": "copy", "verify": "re-verify", "probe": "flight check probe", "delete": "delete"}[kind]
    text = f"splash-flows {what} {source} to {dest} {n} files" if kind != "delete" else \
        f"splash-flows delete on {dest} {n} files"
    return text[:128]


class GlobusTier:
    """A tier that is a folder on a Globus collection."""

    kind = "globus"

    def __init__(self, name: str, config: GlobusTierConfig, checksum_alg: str, session: GlobusSession, *,
                 batches: TransferBatches | None = None, concurrency: int = 4) -> None:
        self.name = name
        self.config = config
        self.collection_id = config.collection_id
        self.root = config.root
        self.checksum_alg = checksum_alg
        self.session = session
        self.batches = batches
        self.local = (LocalTier(name, config.local_root, checksum_alg, concurrency=concurrency)
                      if config.local_root is not None else None)

    def __repr__(self) -> str:
        return f"GlobusTier({self.name!r}, {self.collection_id}:{self.root})"

    @property
    def settings(self) -> GlobusTransferConfig:
        return self.session.settings

    @property
    def _tc(self) -> globus_sdk.TransferClient:
        return self.session.client

    # ------------------------------------------------------------------------------------------ paths

    def full_path(self, relpath: str) -> str:
        """The absolute path of ``relpath`` on the collection (refusing any escape from the root)."""
        return posixpath.join(self.root, normalize_relpath(relpath, tier=self.name))

    def _full_dir(self, reldir: str) -> str:
        return self.root if not reldir else self.full_path(reldir)

    def url(self, path: str) -> str:
        return f"globus://{self.collection_id}{self.full_path(path)}"

    # ------------------------------------------------------------------------------------------ reads

    def stat(self, path: str) -> FileStat | None:
        if self.local is not None:
            return self.local.stat(path)
        rel = normalize_relpath(path, tier=self.name)
        full = self.full_path(rel)
        try:
            resp = self.session.call(f"stat {full}", self._tc.operation_stat, self.collection_id, full,
                                     tier=self.name, path=rel)
        except GlobusRequestRefused as err:
            if err.http_status == 404:
                return None
            raise
        if resp.get("type") != "file":
            raise TierError(f"not a regular file (Globus says type {resp.get('type')!r})", tier=self.name, path=rel)
        return FileStat(rel, int(resp["size"]), self._mtime(resp))

    def checksum(self, path: str) -> str:
        """Our checksum of ``path``, read through the local mount. Globus has no API that returns a checksum, so
        without ``local_root`` this raises; re-verify copies with ``verify_copies`` instead."""
        if self.local is not None:
            return self.local.checksum(path)
        raise TierError(
            f"cannot compute {self.checksum_alg}: the collection is not mounted here (no local_root) and Globus "
            "has no API that returns a file's checksum; re-verify a copy with a checksum-sync transfer "
            "(GlobusTier.verify_copies) instead", tier=self.name, path=path)

    def walk(self, prefix: str = "", *, ignore: Callable[[str], bool] | None = None,
             problems: list[WalkProblem] | None = None) -> Iterator[FileStat]:
        if self.local is not None:
            yield from self.local.walk(prefix, ignore=ignore, problems=problems)
            return
        folders = [normalize_relpath(prefix, tier=self.name) if prefix else ""]
        while folders:
            folder = folders.pop(0)
            entries = sorted(self._ls(folder), key=lambda e: str(e.get("name")))
            subfolders = []
            for entry in entries:
                if ignore is not None and ignore(str(entry["name"])):
                    continue
                rel = posixpath.join(folder, str(entry["name"])) if folder else str(entry["name"])
                if entry.get("type") == "dir":
                    subfolders.append(rel)
                elif entry.get("type") == "file":
                    yield FileStat(rel, int(entry.get("size") or 0), self._mtime(entry))
            folders[:0] = subfolders

    def check_root(self, limit: int = 100) -> int:
        """List the tier's root folder through Globus (even when it is mounted here) and return how many entries
        the first page holds. Raises our typed error naming the cause (consent, permission, not found, offline)."""
        full = self.root
        resp = self.session.call(
            f"list {full} on collection {self.collection_id}",
            lambda: self._tc.operation_ls(self.collection_id, path=full, limit=limit), tier=self.name)
        return len(resp["DATA"])

    @staticmethod
    def _mtime(entry: dict[str, Any] | Any) -> float:
        parsed = _parse_time(entry.get("last_modified"))
        return parsed.timestamp() if parsed is not None else 0.0

    def _ls(self, reldir: str) -> list[dict[str, Any]]:
        """Every entry of a folder on the collection (paged past Globus's 100 000-entry limit)."""
        full = self._full_dir(reldir)
        entries: list[dict[str, Any]] = []
        offset = 0
        while True:
            resp = self.session.call(f"list {full}", self._list_page, full, offset, tier=self.name)
            page = [dict(e) for e in resp["DATA"]]
            entries.extend(page)
            if len(page) < LS_PAGE:
                return entries
            offset += LS_PAGE

    def _list_page(self, full: str, offset: int) -> Any:
        # ``path`` is both operation_ls's argument and session.call's keyword, so it is passed from here.
        return self._tc.operation_ls(self.collection_id, path=full, limit=LS_PAGE, offset=offset, show_hidden=True)

    def _list_files(self, rels: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The listing entry of each of ``rels`` that exists (one ``ls`` per folder; a missing folder is empty)."""
        by_dir: dict[str, list[str]] = {}
        for rel in rels:
            by_dir.setdefault(posixpath.dirname(rel), []).append(rel)
        found: dict[str, dict[str, Any]] = {}
        for folder in sorted(by_dir):
            try:
                entries = {str(e["name"]): e for e in self._ls(folder)}
            except GlobusRequestRefused as err:
                if err.http_status == 404:
                    continue
                raise
            for rel in by_dir[folder]:
                entry = entries.get(posixpath.basename(rel))
                if entry is not None:
                    found[rel] = entry
        return found

    # ------------------------------------------------------------------------------------------ copies

    def copy_from(self, source: Tier, items: Sequence[CopyItem],
                  progress: ProgressCallback | None = None) -> list[CopyOutcome]:
        """Copy ``items`` from another globus tier with Globus (see the module docstring for what is verified).

        Raises TierError when the pair is unsupported (the source is not a Globus collection) or no ledger is
        available; every other failure is returned per item.
        """
        return self._copy(source, items, "transfer", progress)

    def verify_copies(self, source: Tier, items: Sequence[CopyItem]) -> list[CopyOutcome]:
        """Re-verify copies on this tier against ``source`` with a checksum-sync transfer (for pruning).

        A ``CopyResult`` with ``skipped=True``: Globus compared both files' checksums and found them identical.
        ``skipped=False``: the copy was missing or different and has been re-sent and verified. An error: the copy
        could not be verified now (do not delete the source).
        """
        return self._copy(source, items, "verify", None)

    def probe_from(self, source: GlobusTier, src_path: str, dst_path: str) -> Moved:
        """Move one file from ``source`` to a different path here, as the flight check's end-to-end probe."""
        pair = _Pair(normalize_relpath(src_path, tier=source.name), normalize_relpath(dst_path, tier=self.name),
                     None, None)
        outcome = self._transfer(self._require_globus(source), [pair], "probe")[0]
        if isinstance(outcome, TierError):
            raise outcome
        return outcome

    def _require_globus(self, source: Tier) -> GlobusTier:
        if not isinstance(source, GlobusTier):
            raise TierError(
                f"cannot copy from {source.name} (a {source.kind} tier): Globus moves data only between "
                f"collections; configure {source.name} as kind globus (its collection id and root) to copy from "
                "it with Globus", tier=self.name)
        return source

    def _store(self) -> TransferBatches:
        if self.batches is None:
            raise TierError("this globus tier was built without a ledger, which is needed to record submission "
                            "ids before submitting; build it through Context.tier", tier=self.name)
        return self.batches

    def _copy(self, source: Tier, items: Sequence[CopyItem], kind: str,
              progress: ProgressCallback | None) -> list[CopyOutcome]:
        src = self._require_globus(source)
        self._store()
        outcomes: list[CopyOutcome | None] = [None] * len(items)
        pairs: list[_Pair] = []
        where: list[int] = []
        for i, item in enumerate(items):
            try:
                rel = normalize_relpath(item.path, tier=self.name)
            except PathEscapeError as err:
                outcomes[i] = err
                continue
            if item.checksum is None:
                outcomes[i] = TransferError(
                    "the ledger has no checksum for this file yet: register it (move.register_sources) before "
                    "copying it to a globus tier, so the copy is recorded against the source's checksum",
                    tier=self.name, path=rel)
                continue
            pairs.append(_Pair(rel, rel, item.checksum, item.size))
            where.append(i)
        for i, pair, result in zip(where, pairs, self._transfer(src, pairs, kind), strict=True):
            if isinstance(result, TierError):
                outcomes[i] = result
                continue
            if progress is not None:
                progress(pair.dst, result.size)
            assert pair.checksum is not None
            outcomes[i] = CopyResult(pair.dst, result.size, result.mtime, pair.checksum,
                                     skipped=not result.transferred, source_checksum=pair.checksum,
                                     detail=self._verification_detail(result))
        return [o if o is not None else TransferError("no outcome (internal error)", tier=self.name)
                for o in outcomes]

    def _external_algorithm(self) -> str | None:
        if not self.settings.external_checksum:
            return None
        return GLOBUS_CHECKSUM_ALGORITHMS.get(self.checksum_alg)

    def _verification_detail(self, moved: Moved) -> dict[str, Any]:
        alg = self._external_algorithm()
        if alg is not None:
            how = (f"Globus verified source and copy against the ledger's {self.checksum_alg} "
                   f"(external_checksum, {alg})")
        else:
            how = (f"Globus compared source and copy checksums with its own algorithm (verify_checksum, "
                   f"sync_level checksum); {self.checksum_alg} is not a Globus algorithm and was not recomputed "
                   "on the copy")
        return {"verified_by": "globus", "globus_task_id": moved.task_id, "globus_checksum": how,
                "transfer": "sent" if moved.transferred else "already identical (checksum sync, nothing sent)",
                "listed_size": moved.size}

    # ------------------------------------------------------------------------------------------ transfer tasks

    def _transfer(self, source: GlobusTier, pairs: list[_Pair], kind: str) -> list[Moved | TierError]:
        """Run ``pairs`` as Globus tasks (split at the cap): submit every task first (Globus runs a few at once and
        queues the rest), then wait for each. One outcome per pair."""
        cap = self.settings.max_files_per_task
        chunks = [list(range(start, min(start + cap, len(pairs)))) for start in range(0, len(pairs), cap)]
        outcomes: list[Moved | TierError | None] = [None] * len(pairs)
        submitted: list[tuple[BatchRecord, list[int]]] = []
        for chunk in chunks:
            try:
                submitted.append((self._submit_transfer(source, [pairs[i] for i in chunk], kind), chunk))
            except TierError as err:
                for i in chunk:
                    outcomes[i] = _for_item(err, self.name, pairs[i].dst)
        for batch, chunk in submitted:
            chunk_pairs = [pairs[i] for i in chunk]
            try:
                results = self._complete_transfer(source, batch, chunk_pairs)
            except TierError as err:
                results = [_for_item(err, self.name, p.dst) for p in chunk_pairs]
            for i, result in zip(chunk, results, strict=True):
                outcomes[i] = result
        return [o if o is not None else TransferError("no outcome (internal error)", tier=self.name)
                for o in outcomes]

    def _new_submission_id(self) -> str:
        resp = self.session.call("obtain a submission id", self._tc.get_submission_id, tier=self.name)
        return str(resp["value"])

    def _open_batch(self, kind: str, source: GlobusTier, digest: str, items: list[Any],
                    label: str) -> BatchRecord:
        store = self._store()
        found = store.find_open(kind, source.name, self.name, digest)
        if found is not None:
            return found
        deadline = (self.session.utcnow() + timedelta(seconds=self.settings.deadline_s)).replace(microsecond=0)
        return store.open(kind=kind, source_tier=source.name, dest_tier=self.name,
                          source_collection=source.collection_id if kind != "delete" else None,
                          dest_collection=self.collection_id, digest=digest, items=items, label=label,
                          submission_id=self._new_submission_id(), deadline=deadline)

    def _submit_transfer(self, source: GlobusTier, pairs: list[_Pair], kind: str) -> BatchRecord:
        digest = items_digest(kind, source.name, self.name, [(p.src, p.dst, p.checksum) for p in pairs])
        items = [[p.src, p.dst, p.checksum, p.size] for p in pairs]
        batch = self._open_batch(kind, source, digest, items, _label(kind, source.name, self.name, len(pairs)))
        if batch.task_id is not None:
            return batch  # submitted before (an earlier attempt, or before a restart): poll it, never resubmit
        alg = self._external_algorithm()
        tdata = globus_sdk.TransferData(
            source.collection_id, self.collection_id, label=batch.label, submission_id=batch.submission_id,
            sync_level="checksum", verify_checksum=True, preserve_timestamp=True,
            deadline=batch.deadline.isoformat(), fail_on_quota_errors=self.settings.fail_on_quota_errors,
            notify_on_succeeded=False, notify_on_failed=False, notify_on_inactive=False)
        for src_rel, dst_rel, checksum, _size in batch.items:
            extra: dict[str, Any] = {}
            if alg is not None and checksum:
                extra = {"external_checksum": checksum, "checksum_algorithm": alg}
            tdata.add_item(source.full_path(src_rel), self.full_path(dst_rel), **extra)
        return self._submit(batch, "submit transfer task", self._tc.submit_transfer, tdata)

    def _submit(self, batch: BatchRecord, what: str, submit: Callable[[Any], Any], document: Any) -> BatchRecord:
        """Submit a task document carrying the batch's recorded submission_id and record the task id.

        Globus answers ``Accepted`` (a new task) or, when this submission_id was already used, ``Duplicate`` with
        the task it started then: either way there is exactly one task. A refusal ends the batch; a network
        error leaves it pending, to be resubmitted with the same submission_id.
        """
        try:
            resp = self.session.call(f"{what} ({batch.label}, submission {batch.submission_id})", submit, document,
                                     tier=self.name)
        except (GlobusAuthError, GlobusRequestRefused) as err:
            self._store().finish(batch.id, BatchEnd(BatchStatus.REFUSED, error=str(err), items_failed=len(batch.items)))
            raise
        return self._store().mark_submitted(batch.id, str(resp["task_id"]))

    def _complete_transfer(self, source: GlobusTier, batch: BatchRecord,
                           pairs: list[_Pair]) -> list[Moved | TierError]:
        assert batch.task_id is not None
        end = self._wait(batch)
        events = [] if end.reason is None else self._events(batch.task_id)
        sent: set[str] = set()
        sent_from: set[str] = set()
        if end.terminal:
            sent, sent_from = self._successful_paths(batch.task_id)

        def was_sent(p: _Pair) -> bool:
            return (posixpath.normpath(self.full_path(p.dst)) in sent
                    or posixpath.normpath(source.full_path(p.src)) in sent_from)

        ok = {i for i, p in enumerate(pairs) if end.reason is None or was_sent(p)}
        listing = self._list_files([pairs[i].dst for i in sorted(ok)]) if ok else {}
        failure = None
        if end.reason is not None:
            summary = _event_summary(events)
            failure = GlobusTaskError(
                f"{end.message}; this file is not among the task's successful transfers"
                + (f"; Globus events: {summary}" if summary else ""),
                tier=self.name, task_id=batch.task_id, status=str(end.task.get("status")), reason=end.reason,
                events=events)
        results: list[Moved | TierError] = []
        for index, pair in enumerate(pairs):
            if index not in ok:
                assert failure is not None
                results.append(_for_item(failure, self.name, pair.dst))
                continue
            entry = listing.get(pair.dst)
            full = self.full_path(pair.dst)
            if entry is None or entry.get("type") != "file":
                results.append(VerificationError(
                    f"Globus task {batch.task_id} reported it done, but {full} is not listed as a file on "
                    f"{self.collection_id}", tier=self.name, path=pair.dst))
            elif pair.size is not None and int(entry.get("size") or 0) != pair.size:
                results.append(VerificationError(
                    f"Globus task {batch.task_id} reported it done, but {full} has {entry.get('size')} bytes, "
                    f"the ledger {pair.size}", tier=self.name, path=pair.dst))
            else:
                transferred = was_sent(pair)
                results.append(Moved(pair.dst, transferred, int(entry.get("size") or 0), self._mtime(entry),
                                     batch.task_id))
        n_ok = sum(1 for r in results if isinstance(r, Moved))
        self._finish(batch, end, items_ok=n_ok, items_failed=len(results) - n_ok,
                     error=None if failure is None and n_ok == len(results) else
                     (end.message if failure is not None else "listing after the task disagreed"))
        return results

    def _finish(self, batch: BatchRecord, end: _TaskEnd, *, items_ok: int, items_failed: int,
                error: str | None) -> None:
        task = end.task

        def num(key: str) -> int | None:
            value = task.get(key)
            return int(value) if isinstance(value, int | float) else None

        rate = task.get("effective_bytes_per_second")
        self._store().finish(batch.id, BatchEnd(
            status=end.status, globus_status=str(task.get("status")) if task.get("status") else None,
            completed_at=_parse_time(task.get("completion_time")), bytes_transferred=num("bytes_transferred"),
            files_transferred=num("files_transferred"), files_skipped=num("files_skipped"),
            effective_bytes_per_second=float(rate) if isinstance(rate, int | float) else None, faults=num("faults"),
            items_ok=items_ok, items_failed=items_failed, error=error))

    # ------------------------------------------------------------------------------------------ waiting

    def _get_task(self, task_id: str) -> dict[str, Any]:
        resp = self.session.call(f"read task {task_id}", self._tc.get_task, task_id, tier=self.name)
        return dict(resp.data)

    def _wait(self, batch: BatchRecord) -> _TaskEnd:
        """Poll the batch's task with backoff until it ends, or until we give up on it (then it is cancelled)."""
        assert batch.task_id is not None
        s = self.settings
        interval = s.poll_initial_s
        progress_key: tuple[Any, ...] | None = None
        last_progress = troubled_since = self.session.monotonic()
        troubled = False
        while True:
            task = self._get_task(batch.task_id)
            status = str(task.get("status"))
            if status == "SUCCEEDED":
                return _TaskEnd(task, True, None, f"Globus task {batch.task_id} SUCCEEDED", BatchStatus.SUCCEEDED)
            if status == "FAILED":
                reason, message = self._failure(batch, task)
                return _TaskEnd(task, True, reason, message, BatchStatus.FAILED)
            now = self.session.monotonic()
            key = tuple(task.get(k) for k in _PROGRESS_KEYS)
            if key != progress_key:
                progress_key, last_progress = key, now
            is_troubled = status == "INACTIVE" or int(task.get("faults") or 0) > 0
            if is_troubled and not troubled:
                troubled_since = now
            troubled = is_troubled
            stuck_for = now - max(last_progress, troubled_since)
            if troubled and stuck_for >= s.inactivity_limit_s:
                nice = task.get("nice_status") or task.get("nice_status_short_description") or "-"
                return self._abandon(batch, task, "inactive", (
                    f"Globus task {batch.task_id} was {status} with {task.get('faults') or 0} fault(s) and no "
                    f"progress for {stuck_for:.0f} s (limit {s.inactivity_limit_s} s; nice_status {nice}); "
                    "cancelled"))
            if self.session.utcnow() > batch.deadline + timedelta(seconds=s.deadline_grace_s):
                return self._abandon(batch, task, "deadline", (
                    f"Globus task {batch.task_id} was still {status} {s.deadline_grace_s} s after its deadline "
                    f"{batch.deadline.isoformat()}; cancelled"))
            self.session.sleep(interval)
            interval = min(interval * s.poll_backoff, s.poll_max_s)

    def _failure(self, batch: BatchRecord, task: dict[str, Any]) -> tuple[str, str]:
        fatal = task.get("fatal_error") or {}
        code = str(fatal.get("code") or "")
        desc = str(fatal.get("description") or "")
        completed = _parse_time(task.get("completion_time"))
        deadline = _parse_time(task.get("deadline")) or batch.deadline
        expired = "DEADLINE" in code.upper() or (completed is not None and completed >= deadline)
        message = f"Globus task {batch.task_id} FAILED"
        if expired:
            message += f" at its deadline {deadline.isoformat()}"
        if code or desc:
            message += f" ({code}{': ' if code and desc else ''}{desc})"
        if task.get("nice_status"):
            message += f"; nice_status {task['nice_status']}"
        return ("deadline" if expired else "failed"), message

    def _abandon(self, batch: BatchRecord, task: dict[str, Any], reason: str, message: str) -> _TaskEnd:
        """Cancel a task we give up on, and wait briefly for Globus to report it ended (then its successful
        transfers are known; until then no file of it counts as done)."""
        assert batch.task_id is not None
        try:
            self.session.call(f"cancel task {batch.task_id}", self._tc.cancel_task, batch.task_id, tier=self.name)
        except TierError as err:
            message += f" (cancelling it failed too: {_base_message(err)})"
        final, terminal = task, False
        for _ in range(5):
            try:
                final = self._get_task(batch.task_id)
            except TierError:
                break
            if final.get("status") in TERMINAL:
                terminal = True
                break
            self.session.sleep(self.settings.poll_initial_s)
        return _TaskEnd(final, terminal, reason, message, BatchStatus.ABANDONED)

    def _events(self, task_id: str) -> list[dict[str, Any]]:
        """The task's newest events, in Globus's words (an empty list if they cannot be read)."""
        try:
            resp = self.session.call(f"read events of task {task_id}", self._tc.task_event_list, task_id,
                                     limit=EVENTS_KEPT, tier=self.name)
        except TierError:
            return []
        keep = ("time", "code", "is_error", "description", "details")
        events = []
        for e in resp["DATA"]:
            event = {k: e.get(k) for k in keep}
            if isinstance(event["details"], str) and len(event["details"]) > 500:
                event["details"] = event["details"][:497] + "..."
            events.append(event)
        return events

    def _successful_paths(self, task_id: str) -> tuple[set[str], set[str]]:
        """Destination and source paths of the files the task actually sent (and verified), from Globus. A file
        is matched by either, in case Globus reports one of them in another form than we submitted it."""
        def fetch() -> list[dict[str, Any]]:
            return [dict(x) for x in self._tc.paginated.task_successful_transfers(task_id).items()]

        rows = self.session.call(f"read successful transfers of task {task_id}", fetch, tier=self.name)
        return ({posixpath.normpath(str(r["destination_path"])) for r in rows if r.get("destination_path")},
                {posixpath.normpath(str(r["source_path"])) for r in rows if r.get("source_path")})



    # ------------------------------------------------------------------------------------------ delete

    def delete(self, paths: Sequence[str]) -> list[TierError | None]:
        """Delete files with Globus delete tasks (batched, waited for, checked). One outcome per path."""
        outcomes: list[TierError | None] = [None] * len(paths)
        valid: list[tuple[int, str]] = []
        for i, raw in enumerate(paths):
            try:
                valid.append((i, normalize_relpath(raw, tier=self.name)))
            except PathEscapeError as err:
                outcomes[i] = err
        cap = self.settings.max_files_per_task
        submitted: list[tuple[BatchRecord, list[tuple[int, str]]]] = []
        for start in range(0, len(valid), cap):
            chunk = valid[start:start + cap]
            try:
                batch, present = self._submit_delete(chunk, outcomes)
            except TierError as err:
                for i, rel in chunk:
                    if outcomes[i] is None:
                        outcomes[i] = _for_item(err, self.name, rel)
                continue
            if batch is not None:
                submitted.append((batch, present))
        for batch, present in submitted:
            try:
                results = self._complete_delete(batch, [rel for _, rel in present])
            except TierError as err:
                results = [DeleteError(f"not known to be deleted: {_base_message(err)}", tier=self.name, path=rel)
                           for _, rel in present]
            for (i, _), result in zip(present, results, strict=True):
                outcomes[i] = result
        return outcomes

    def _submit_delete(self, chunk: list[tuple[int, str]],
                       outcomes: list[TierError | None]) -> tuple[BatchRecord | None, list[tuple[int, str]]]:
        store = self._store()
        digest = items_digest("delete", self.name, self.name, [(rel,) for _, rel in chunk])
        batch = store.find_open("delete", self.name, self.name, digest)
        if batch is None:
            listing = self._list_files([rel for _, rel in chunk])
            present = []
            for i, rel in chunk:
                entry = listing.get(rel)
                if entry is None:
                    outcomes[i] = DeleteError("file not found (already deleted?)", tier=self.name, path=rel)
                elif entry.get("type") != "file":
                    outcomes[i] = DeleteError(f"not a regular file (Globus says type {entry.get('type')!r}); "
                                              "refusing to delete it", tier=self.name, path=rel)
                else:
                    present.append((i, rel))
            if not present:
                return None, []
            batch = self._open_batch("delete", self, digest, [[rel] for _, rel in present],
                                     _label("delete", self.name, self.name, len(present)))
        else:
            recorded = {item[0] for item in batch.items}
            present = [(i, rel) for i, rel in chunk if rel in recorded]
            for i, rel in chunk:
                if rel not in recorded:
                    outcomes[i] = DeleteError("file not found (already deleted?) when this delete was first "
                                              "requested", tier=self.name, path=rel)
        if batch.task_id is None:
            ddata = globus_sdk.DeleteData(
                self.collection_id, label=batch.label, submission_id=batch.submission_id, recursive=False,
                ignore_missing=True, deadline=batch.deadline.isoformat(), notify_on_succeeded=False,
                notify_on_failed=False, notify_on_inactive=False)
            for (rel,) in batch.items:
                ddata.add_item(self.full_path(rel))
            batch = self._submit(batch, "submit delete task", self._tc.submit_delete, ddata)
        return batch, present

    def _complete_delete(self, batch: BatchRecord, rels: list[str]) -> list[TierError | None]:
        assert batch.task_id is not None
        end = self._wait(batch)
        if end.reason is None:
            self._finish(batch, end, items_ok=len(rels), items_failed=0, error=None)
            return [None] * len(rels)
        events = self._events(batch.task_id)
        summary = _event_summary(events)
        still = self._list_files(rels)  # what is still there was not deleted; the rest was
        results: list[TierError | None] = []
        for rel in rels:
            if rel in still:
                results.append(DeleteError(f"{end.message}; the file is still there"
                                           + (f"; Globus events: {summary}" if summary else ""),
                                           tier=self.name, path=rel))
            else:
                results.append(None)
        failed = sum(1 for r in results if r is not None)
        self._finish(batch, end, items_ok=len(rels) - failed, items_failed=failed, error=end.message)
        return results
