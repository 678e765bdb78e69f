"""The SciCat catalogue: our ``Catalogue`` over HTTP against scicat-backend 4.5.

Why a small httpx client and not a ready-made one: the adapter must own the login of the functional
account, the Bearer header, re-login on 401, bounded retries with backoff, and above all the
*check-before-create* steps that make a re-run after a crash never store a second dataset or file list.
``scitacean`` and the generated ``scicat_sdk_py`` client each bring their own transport, login and error
handling (and scitacean its own upload flow), so they would have to be worked around rather than used. The
request bodies, however, are built from the ``scicat_sdk_py`` pydantic models generated from the backend's
OpenAPI document, so no SciCat model is written by hand here; only the mapping of our documents to SciCat
names is, and it lives in this module alone.

Where our fields go in SciCat (v4 names):

* ``scan_key`` -> ``scientificMetadata.splash_scan_key`` (found again with ``$in``, see the date trap below);
* ``locations`` -> ``scientificMetadata.splash_locations``, a list with at most one entry per tier, replaced
  as a whole with ``PATCH /api/v4/datasets/{pid}`` (read, modify, write);
* ``errors`` -> ``scientificMetadata.splash_errors``;
* ``files`` and ``checksum_algorithm`` -> exactly one OrigDatablock (``POST /api/v4/origdatablocks``); a
  changed file list (a file rewritten in place) replaces its ``dataFileList`` with
  ``PATCH /api/v4/origdatablocks/{id}``;
* thumbnails -> v4 attachments (``/api/v4/attachments``) holding a ``data:image/png;base64,...`` URI, related
  to the dataset; one per caption, replaced in place with PATCH.

The date-filter trap: scicat-backend turns any filter *string* that JavaScript's ``Date.parse`` accepts into a
Date, so ``{"creationLocation": "/ALS/7.3.3"}`` matches nothing. Every equality filter here is therefore
written as ``{"$in": [value]}``, which the backend leaves alone.

What a real 4.27 does that its OpenAPI document does not say (``SCICAT.md``, "Seen on a real ... 4.27"):

* an expired or invalid token is answered **403** on the v4 routes (401 on v3): every request logs in again
  once on 401 *or* 403, and only a 403 to a fresh token is a refusal;
* ``POST /api/v4/origdatablocks`` needs the account in one of the server's ADMIN_GROUPS or in the dataset's
  ownerGroup, while creating the dataset may be allowed to more accounts. So before the first dataset of an
  ownerGroup is created, the account's groups are read (``GET /api/v3/auth/whoami``) and the ingest stops with
  ``CataloguePermissionError`` -- creating nothing -- when it could not attach the files. The server does not
  publish ADMIN_GROUPS, so the configuration names the admin groups the account relies on (``admin_groups``);
* ``scientificMetadata`` keys come back URL-encoded as the server stored them (``I1%20normalization``): they
  are decoded on read and always written decoded (the server encodes them itself; writing back what was read
  would encode them twice).

Retries: a request that fails with a timeout, a connection error or HTTP 5xx/408/429 is retried, but never
on its own: the *whole* step it belongs to (e.g. "find the dataset, create it if absent, then make sure it
has its file list") is run again, so a POST whose answer was lost is detected by the next attempt's lookup
instead of being repeated blindly.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx
from pydantic import ValidationError
from scicat_sdk_py.models.attachment_relationships_v4_dto import AttachmentRelationshipsV4Dto
from scicat_sdk_py.models.create_attachment_v4_dto import CreateAttachmentV4Dto
from scicat_sdk_py.models.create_dataset_datablock_dto import CreateDatasetDatablockDto
from scicat_sdk_py.models.create_dataset_dto import CreateDatasetDto
from scicat_sdk_py.models.create_orig_datablock_dto import CreateOrigDatablockDto
from scicat_sdk_py.models.credentials_dto import CredentialsDto
from scicat_sdk_py.models.data_file import DataFile
from scicat_sdk_py.models.partial_update_attachment_v4_dto import PartialUpdateAttachmentV4Dto
from scicat_sdk_py.models.partial_update_dataset_dto import PartialUpdateDatasetDto
from scicat_sdk_py.models.partial_update_orig_datablock_dto import PartialUpdateOrigDatablockDto

from splash_flows.catalogue._png import require_png
from splash_flows.catalogue.base import CatalogueEntry, DatablockDoc, DataFileDoc, DatasetDoc, LocationDoc
from splash_flows.errors import CatalogueError, CataloguePermissionError, CatalogueUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: scientificMetadata keys this adapter owns. Documents may not use the prefix themselves.
RESERVED_PREFIX = "splash_"
SCAN_KEY = "splash_scan_key"
LOCATIONS = "splash_locations"
ERRORS = "splash_errors"
_SCAN_KEY_PATH = f"scientificMetadata.{SCAN_KEY}"

LOGIN_ROUTE = "/api/v3/auth/login"
WHOAMI_ROUTE = "/api/v3/auth/whoami"
CAN_CREATE_DATASET_ROUTE = "/api/v3/users/{id}/authorization/dataset/create"
DATASETS_ROUTE = "/api/v4/datasets"
ORIGDATABLOCKS_ROUTE = "/api/v4/origdatablocks"
ATTACHMENTS_ROUTE = "/api/v4/attachments"
DATASETS_V3_ROUTE = "/api/v3/datasets"  # datablocks (archived units) are nested under v3 datasets only

_DATA_URI_PREFIX = "data:image/png;base64,"
_PID_CHUNK = 50  # pids per `$in` filter, keeps the query string of a GET well below server limits
_MESSAGE_LIMIT = 500

# What the backend's IsUrl (require_tld, protocol optional) accepts, near enough: an optional scheme, then a
# dotted host name with a top-level domain or an IPv4 address, an optional port and path.
_URL_LIKE = re.compile(
    r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?"
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}|\d{1,3}(?:\.\d{1,3}){3})"
    r"(?::\d{1,5})?(?:/\S*)?$"
)
_REGEX_SPECIALS = re.compile(r"([\\^$.|?*+()\[\]{}/-])")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a step is retried before SciCat is declared unavailable.

    ``max_attempts`` counts every attempt (1 = no retry). The wait before attempt ``n + 1`` is
    ``min(backoff_max, backoff_base * 2 ** (n - 1))`` seconds: 0.5, 1, 2, 4 ... by default.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("RetryPolicy backoff times must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class SciCatAccount:
    """Who the functional account is to the server: its id and ``currentGroups`` (roles plus access groups),
    the groups every permission rule of the server is decided by."""

    username: str
    user_id: str
    groups: tuple[str, ...]


class _Transient(Exception):
    """One attempt failed in a way that may pass (timeout, dropped connection, 5xx). Retried, then turned
    into ``CatalogueUnavailable``."""


class SciCatCatalogue:
    """``Catalogue`` backed by a scicat-backend 4.5 server, logged in as a functional account.

    ``base_url`` is the server root (``https://scicat.example.org``); the routes ``/api/v3/...`` and
    ``/api/v4/...`` are appended to it. ``sleep`` and ``clock`` are injectable so tests run without waiting;
    ``transport`` lets a test put an httpx mock transport in place of the network. ``admin_groups`` are the
    groups of the server's ADMIN_GROUPS the account relies on (the server does not publish that list): an
    account in none of them must be in the ownerGroup of every dataset it writes.

    The password and the token are kept out of every log record, exception message and ``repr``.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        verify: bool | ssl.SSLContext = True,
        page_size: int = 200,
        admin_groups: Sequence[str] = (),
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._admin_groups = tuple(admin_groups)
        self._may_attach: set[str] = set()  # ownerGroups the account was found able to attach files to
        self._base_url = base_url.rstrip("/")
        # for messages: never show credentials someone put into the URL
        self._shown_url = str(httpx.URL(self._base_url).copy_with(username=None, password=None))
        self._username = username
        self._password = password
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._page_size = page_size
        self._http = httpx.Client(
            base_url=self._base_url,
            timeout=timeout,
            transport=transport,
            verify=verify,
            headers={"Accept": "application/json"},
        )
        self._token: str | None = None
        self._token_deadline: float | None = None
        self._login_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SciCatCatalogue({self._shown_url!r}, username={self._username!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SciCatCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the Catalogue protocol

    def find(self, scan_key: str) -> CatalogueEntry | None:
        """The dataset whose ``scientificMetadata.splash_scan_key`` is ``scan_key``, or None."""

        def step() -> CatalogueEntry | None:
            row = self._find_row(scan_key)
            return None if row is None else self._entries([row], strict=True)[0]

        return self._retrying(f"find scan {scan_key}", step)

    def upsert(self, doc: DatasetDoc) -> str:
        """Create the raw dataset and its one OrigDatablock unless they exist; return the pid.

        An existing dataset is not rewritten (its locations change only through ``add_location``); a dataset
        left without its OrigDatablock by an earlier crash gets it now."""
        payload = self._dataset_payload(doc)  # refuses bad documents before any request
        return self._retrying(f"upsert scan {doc.scan_key}", lambda: self._upsert_step(doc, payload))

    def upsert_derived(self, doc: DatasetDoc) -> str:
        """Create the derived dataset of ``doc.scan_key`` (``type: derived`` with inputDatasets, usedSoftware and
        jobParameters) and its OrigDatablock, or update the existing one in place: PATCH the dataset (its
        locations kept) and PATCH its OrigDatablock's file list. Returns the pid; never creates a second one."""
        if doc.dataset_type != "derived":
            raise CatalogueError(f"scan {doc.scan_key}: upsert_derived needs a derived dataset document")
        payload = self._dataset_payload(doc)
        return self._retrying(f"upsert derived scan {doc.scan_key}", lambda: self._derived_step(doc, payload))

    def add_location(self, pid: str, location: LocationDoc) -> None:
        """Set the entry of ``location.tier`` in ``splash_locations`` (added if new, replaced if not)."""
        self._retrying(
            f"add location {location.tier} to dataset {pid}", lambda: self._location_step(pid, location)
        )

    def replace_files(self, pid: str, files: list[DataFileDoc], checksum_algorithm: str) -> None:
        """Make ``files`` the ``dataFileList`` of the dataset's OrigDatablock (created if it has none)."""
        self._retrying(f"replace the file list of dataset {pid}",
                       lambda: self._replace_files_step(pid, files, checksum_algorithm))

    def attach_thumbnail(self, pid: str, png: bytes, caption: str) -> None:
        """Attach ``png`` as a data URI, replacing the thumbnail(s) of the dataset with the same caption."""
        require_png(png, pid)
        uri = _DATA_URI_PREFIX + base64.b64encode(png).decode("ascii")
        self._retrying(
            f"attach thumbnail {caption!r} to dataset {pid}", lambda: self._thumbnail_step(pid, uri, caption)
        )

    def thumbnail(self, pid: str, caption: str | None = None) -> bytes | None:
        """The PNG of the latest attachment of the dataset (with this caption, if given), or None."""

        def step() -> bytes | None:
            where: dict[str, Any] = {"relationships.targetId": {"$in": [pid]}}
            if caption is not None:
                where["caption"] = {"$in": [caption]}
            flt = {"where": where, "limits": {"limit": 1, "skip": 0, "sort": {"updatedAt": "desc"}}}
            rows = self._query(ATTACHMENTS_ROUTE, flt, context=f"dataset {pid}")
            return _decode_data_uri(rows[0].get("thumbnail"), pid) if rows else None

        return self._retrying(f"read thumbnail of dataset {pid}", step)

    def get(self, pid: str) -> CatalogueEntry:
        """The dataset with this pid; ``CatalogueError`` if SciCat has none (or does not show it to us)."""
        return self._retrying(
            f"get dataset {pid}", lambda: self._entries([self._dataset_row(pid)], strict=True)[0]
        )

    def search(self, *, proposal: str | None = None, text: str | None = None) -> list[CatalogueEntry]:
        """Splash Flows datasets of ``proposal`` whose name, description, keywords, source folder, scan key
        or a file path contain ``text`` (case-insensitive). Scientific-metadata values are not searched here:
        the v4 filter has no substring match over arbitrary keys (SciCat's own web search covers them)."""
        return self._retrying(
            f"search proposal={proposal!r} text={text!r}", lambda: self._search_step(proposal, text)
        )

    # ------------------------------------------------------------------ the account and its permissions

    def account(self) -> SciCatAccount:
        """Log in and ask the server who the account is (``GET /api/v3/auth/whoami``)."""
        return self._retrying(f"read the groups of account {self._username!r}", self._account_step)

    def can_create_datasets(self, account: SciCatAccount) -> bool:
        """The server's own answer (``/api/v3/users/{id}/authorization/dataset/create``) to whether the account
        may create datasets at all (CREATE_DATASET_GROUPS)."""

        def step() -> bool:
            route = CAN_CREATE_DATASET_ROUTE.format(id=quote(account.user_id, safe=""))
            answer = self._json(self._request("GET", route, f"account {self._username!r}"), route)
            allowed = answer.get("authorization") if isinstance(answer, dict) else None
            if not isinstance(allowed, bool):
                raise CatalogueError(f"SciCat GET {route} did not answer with {{authorization: true|false}}")
            return allowed

        return self._retrying(f"ask whether {self._username!r} may create datasets", step)

    def attach_refusal(self, owner_group: str, account: SciCatAccount) -> str | None:
        """Why the account could not attach a file list (``POST /api/v4/origdatablocks``) to a dataset of
        ``owner_group`` -- one line naming the missing permission -- or None when it can: the server allows it
        to a member of one of its ADMIN_GROUPS (as configured in ``admin_groups``) or of the ownerGroup."""
        groups = set(account.groups)
        if owner_group in groups or groups & set(self._admin_groups):
            return None
        configured = ", ".join(self._admin_groups) or "none"
        mine = ", ".join(account.groups) or "no group"
        return (
            f"SciCat account {self._username!r} may not attach files (POST {ORIGDATABLOCKS_ROUTE}) to datasets of "
            f"ownerGroup {owner_group!r}: add it to that group or to one of the server's ADMIN_GROUPS and list "
            f"that group in catalogue.admin_groups (configured: {configured}; the account is in: {mine})"
        )

    def _require_attach_permission(self, owner_group: str, context: str) -> None:
        """Raise ``CataloguePermissionError`` unless the account can attach files to datasets of
        ``owner_group``. Asked of the server once per ownerGroup and process while the answer is yes. Runs
        inside a retried step (a transient failure of the question retries the step)."""
        if owner_group in self._may_attach:
            return
        reason = self.attach_refusal(owner_group, self._account_step())
        if reason is not None:
            raise CataloguePermissionError(f"{context}: {reason}; nothing was created")
        self._may_attach.add(owner_group)
    def add_datablock(self, pid: str, block: DatablockDoc) -> None:
        """``POST /api/v3/datasets/{pid}/datablocks`` unless the dataset has a datablock with this archiveId
        (looked up first in the same step, so a POST whose answer was lost is not repeated)."""
        self._retrying(f"add datablock {block.archive_id} to dataset {pid}",
                       lambda: self._datablock_step(pid, block))

    def datablocks(self, pid: str) -> list[DatablockDoc]:
        """The dataset's datablocks (``GET /api/v3/datasets/{pid}/datablocks``)."""

        def step() -> list[DatablockDoc]:
            return [_datablock_from_scicat(row, pid) for row in self._datablock_rows(pid)]

        return self._retrying(f"read datablocks of dataset {pid}", step)

    def _datablock_rows(self, pid: str) -> list[dict[str, Any]]:
        context = f"dataset {pid}"
        rows = self._json(self._request("GET", f"{DATASETS_V3_ROUTE}/{quote(pid, safe='')}/datablocks", context),
                          context)
        if not isinstance(rows, list):
            raise CatalogueError(f"SciCat {context}: the datablock list is not a list")
        return [r for r in rows if isinstance(r, dict)]

    def _datablock_step(self, pid: str, block: DatablockDoc) -> None:
        context = f"dataset {pid}"
        if any(r.get("archiveId") == block.archive_id for r in self._datablock_rows(pid)):
            return
        try:
            dto = CreateDatasetDatablockDto(
                archiveId=block.archive_id, size=block.size, packedSize=block.packed_size, chkAlg=block.chk_alg,
                version=block.version,
                dataFileList=[DataFile(path=f.path, size=f.size, time=f.time, chk=f.chk) for f in block.files])
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the SciCat Datablock: {exc}") from exc
        self._request("POST", f"{DATASETS_V3_ROUTE}/{quote(pid, safe='')}/datablocks", context,
                      body=_dump(dto, context))
        log.info("SciCat dataset %s: datablock %s added", pid, block.archive_id)

    # ------------------------------------------------------------------ steps (each one retried as a whole)

    def _account_step(self) -> SciCatAccount:
        context = f"account {self._username!r}"
        answer = self._json(self._request("GET", WHOAMI_ROUTE, context), context)
        if not isinstance(answer, dict):
            raise CatalogueError(f"SciCat GET {WHOAMI_ROUTE} for {context} did not answer with an object")
        groups = answer.get("currentGroups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise CatalogueError(f"SciCat GET {WHOAMI_ROUTE} for {context} has no list of currentGroups")
        user_id = answer.get("_id") or answer.get("id")
        return SciCatAccount(
            username=str(answer.get("username") or self._username),
            user_id=str(user_id or ""),
            groups=tuple(groups),
        )

    def _upsert_step(self, doc: DatasetDoc, payload: dict[str, Any]) -> str:
        context = f"scan {doc.scan_key}"
        row = self._find_row(doc.scan_key)
        if doc.files:  # never leave a dataset the account cannot give its files (SCICAT.md, 4.27)
            group = doc.owner_group if row is None else str(row.get("ownerGroup") or doc.owner_group)
            self._require_attach_permission(group, context)
        if row is None:
            created = self._json(self._request("POST", DATASETS_ROUTE, context, body=payload), context)
            pid = _require_str(created, "pid", context)
            log.info("Created SciCat dataset %s for scan %s", pid, doc.scan_key)
        else:
            pid = _require_str(row, "pid", context)
        if not doc.files:
            log.warning("Scan %s has no files; SciCat dataset %s gets no OrigDatablock", doc.scan_key, pid)
            return pid
        flt = {"where": {"datasetId": {"$in": [pid]}}, "limits": {"limit": 1, "skip": 0}}
        if not self._query(ORIGDATABLOCKS_ROUTE, flt, context=context):
            self._request("POST", ORIGDATABLOCKS_ROUTE, context, body=self._origdatablock_payload(doc, pid))
            log.info(
                "Stored the file list of scan %s (%d files) in SciCat dataset %s",
                doc.scan_key,
                len(doc.files),
                pid,
            )
        return pid

    def _replace_files_step(self, pid: str, files: list[DataFileDoc], checksum_algorithm: str) -> None:
        context = f"dataset {pid}"
        entry = self._entries([self._dataset_row(pid)], strict=True)[0]
        doc = entry.doc.model_copy(update={"files": files, "checksum_algorithm": checksum_algorithm})
        flt = {"where": {"datasetId": {"$in": [pid]}}, "limits": {"limit": 1, "skip": 0, "sort": {"_id": "asc"}}}
        blocks = self._query(ORIGDATABLOCKS_ROUTE, flt, context=context)
        if not blocks:
            self._request("POST", ORIGDATABLOCKS_ROUTE, context, body=self._origdatablock_payload(doc, pid))
            return
        block_id = _require_str(blocks[0], "_id", context)
        try:
            dto = PartialUpdateOrigDatablockDto(
                size=doc.size, chkAlg=checksum_algorithm,
                dataFileList=[DataFile(path=f.path, size=f.size, time=f.time, chk=f.chk) for f in files])
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the SciCat OrigDatablock update: {exc}") from exc
        self._request("PATCH", f"{ORIGDATABLOCKS_ROUTE}/{block_id}", context, body=_dump(dto, context))
        log.info("Replaced the file list of SciCat dataset %s (%d files)", pid, len(files))
    def _derived_step(self, doc: DatasetDoc, payload: dict[str, Any]) -> str:
        context = f"derived scan {doc.scan_key}"
        row = self._find_row(doc.scan_key)
        if row is None:
            return self._upsert_step(doc, payload)
        pid = _require_str(row, "pid", context)
        metadata = dict(payload["scientificMetadata"])
        old_metadata = row.get("scientificMetadata") or {}
        if isinstance(old_metadata, dict) and isinstance(old_metadata.get(LOCATIONS), list):
            metadata[LOCATIONS] = old_metadata[LOCATIONS]  # locations change only through add_location
        try:
            update = PartialUpdateDatasetDto(
                datasetName=doc.name, description=doc.description, keywords=list(doc.keywords),
                scientificMetadata=metadata, inputDatasets=list(doc.input_datasets),
                usedSoftware=list(doc.used_software), jobParameters=dict(doc.job_parameters))
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the SciCat update: {exc}") from exc
        self._request("PATCH", f"{DATASETS_ROUTE}/{quote(pid, safe='')}", context, body=_dump(update, context))
        flt = {"where": {"datasetId": {"$in": [pid]}}, "limits": {"limit": 10, "skip": 0, "sort": {"_id": "asc"}}}
        blocks = self._query(ORIGDATABLOCKS_ROUTE, flt, context=context)
        if not blocks:
            self._request("POST", ORIGDATABLOCKS_ROUTE, context, body=self._origdatablock_payload(doc, pid))
        else:
            block_id = _require_str(blocks[0], "_id", context)
            try:
                files = PartialUpdateOrigDatablockDto(
                    size=doc.size, chkAlg=doc.checksum_algorithm,
                    dataFileList=[DataFile(path=f.path, size=f.size, time=f.time, chk=f.chk) for f in doc.files])
            except ValidationError as exc:
                raise CatalogueError(f"{context}: cannot build the SciCat OrigDatablock update: {exc}") from exc
            self._request("PATCH", f"{ORIGDATABLOCKS_ROUTE}/{quote(block_id, safe='')}", context,
                          body=_dump(files, context))
        log.info("Updated SciCat derived dataset %s of scan %s", pid, doc.scan_key)
        return pid

    def _location_step(self, pid: str, location: LocationDoc) -> None:
        context = f"dataset {pid}"
        row = self._dataset_row(pid)
        metadata = _decoded_keys(row.get("scientificMetadata") or {})  # written back decoded: see the module doc
        old = metadata.get(LOCATIONS) or []
        if not isinstance(old, list):
            raise CatalogueError(f"SciCat dataset {pid}: scientificMetadata.{LOCATIONS} is not a list")
        new_entry = location.model_dump(mode="json")
        merged: list[Any] = []
        placed = False
        for entry in old:
            if isinstance(entry, dict) and entry.get("tier") == location.tier:
                if not placed:  # the first entry of a tier is replaced; any later one (never ours) dropped
                    merged.append(new_entry)
                    placed = True
                continue
            merged.append(entry)
        if not placed:
            merged.append(new_entry)
        if merged == old:
            return
        metadata[LOCATIONS] = merged
        body = _dump(PartialUpdateDatasetDto(scientificMetadata=metadata), context)
        self._request("PATCH", f"{DATASETS_ROUTE}/{quote(pid, safe='')}", context, body=body)
        log.info("SciCat dataset %s: location %s is now %s", pid, location.tier, location.state)

    def _thumbnail_step(self, pid: str, uri: str, caption: str) -> None:
        context = f"dataset {pid}"
        dataset = self._dataset_row(pid)
        where = {"relationships.targetId": {"$in": [pid]}, "caption": {"$in": [caption]}}
        existing = self._query_all(ATTACHMENTS_ROUTE, where, sort={"createdAt": "asc"}, context=context)
        if existing:
            body = _dump(PartialUpdateAttachmentV4Dto(thumbnail=uri), context)
            for attachment in existing:
                aid = _require_str(attachment, "aid", context)
                self._request("PATCH", f"{ATTACHMENTS_ROUTE}/{quote(aid, safe='')}", context, body=body)
            return
        try:
            dto = CreateAttachmentV4Dto(
                ownerGroup=_require_str(dataset, "ownerGroup", context),
                accessGroups=list(dataset.get("accessGroups") or []),
                caption=caption,
                thumbnail=uri,
                isPublished=False,
                relationships=[
                    AttachmentRelationshipsV4Dto(
                        targetId=pid, targetType="dataset", relationType="is attached to"
                    )
                ],
            )
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the attachment: {exc}") from exc
        self._request("POST", ATTACHMENTS_ROUTE, context, body=_dump(dto, context))

    def _search_step(self, proposal: str | None, text: str | None) -> list[CatalogueEntry]:
        base: list[dict[str, Any]] = [{_SCAN_KEY_PATH: {"$exists": True}}]
        if proposal is not None:
            base.append({"proposalIds": {"$in": [proposal]}})
        context = f"search proposal={proposal!r} text={text!r}"
        if not text:
            rows = self._query_all(DATASETS_ROUTE, {"$and": base}, sort={"pid": "asc"}, context=context)
        else:
            rx = {"$regex": _REGEX_SPECIALS.sub(r"\\\1", text), "$options": "i"}
            fields = ["datasetName", "description", "keywords", "sourceFolder", _SCAN_KEY_PATH]
            where = {"$and": [*base, {"$or": [{name: rx} for name in fields]}]}
            found = {
                r["pid"]: r
                for r in self._query_all(DATASETS_ROUTE, where, sort={"pid": "asc"}, context=context)
                if isinstance(r.get("pid"), str)
            }
            blocks = self._query_all(
                ORIGDATABLOCKS_ROUTE,
                {"dataFileList.path": rx},
                sort={"_id": "asc"},
                context=context,
                fields=["datasetId"],
            )
            by_file = sorted(
                {b["datasetId"] for b in blocks if isinstance(b.get("datasetId"), str)} - set(found)
            )
            for chunk in _chunks(by_file, _PID_CHUNK):
                where = {"$and": [*base, {"pid": {"$in": chunk}}]}
                for r in self._query_all(DATASETS_ROUTE, where, sort={"pid": "asc"}, context=context):
                    found[r["pid"]] = r
            rows = list(found.values())
        entries = self._entries(rows, strict=False)
        return sorted(entries, key=lambda e: (e.doc.creation_time, e.pid))

    # ------------------------------------------------------------------ reading and mapping

    def _find_row(self, scan_key: str) -> dict[str, Any] | None:
        flt = {
            "where": {_SCAN_KEY_PATH: {"$in": [scan_key]}},
            "limits": {"limit": 10, "skip": 0, "sort": {"createdAt": "asc"}},
        }
        rows = self._query(DATASETS_ROUTE, flt, context=f"scan {scan_key}")
        if len(rows) > 1:
            log.warning(
                "SciCat holds %d datasets for scan %s (%s); using the oldest",
                len(rows),
                scan_key,
                ", ".join(str(r.get("pid")) for r in rows),
            )
        return rows[0] if rows else None

    def _dataset_row(self, pid: str) -> dict[str, Any]:
        flt = {"where": {"pid": {"$in": [pid]}}, "limits": {"limit": 1, "skip": 0}}
        rows = self._query(DATASETS_ROUTE, flt, context=f"dataset {pid}")
        if not rows:
            raise CatalogueError(f"SciCat has no dataset {pid} (or does not show it to {self._username!r})")
        return rows[0]

    def _entries(self, rows: Sequence[dict[str, Any]], *, strict: bool) -> list[CatalogueEntry]:
        """Turn dataset rows into entries, fetching their OrigDatablocks and attachments in batches."""
        pids = [r["pid"] for r in rows if isinstance(r.get("pid"), str)]
        blocks: dict[str, list[dict[str, Any]]] = {pid: [] for pid in pids}
        with_thumbnail: set[str] = set()
        for chunk in _chunks(pids, _PID_CHUNK):
            context = f"datasets {', '.join(chunk)}"
            for block in self._query_all(
                ORIGDATABLOCKS_ROUTE, {"datasetId": {"$in": chunk}}, sort={"_id": "asc"}, context=context
            ):
                blocks.setdefault(str(block.get("datasetId")), []).append(block)
            for att in self._query_all(
                ATTACHMENTS_ROUTE,
                {"relationships.targetId": {"$in": chunk}},
                sort={"createdAt": "asc"},
                context=context,
                fields=["relationships"],
            ):
                for rel in att.get("relationships") or []:
                    if isinstance(rel, dict) and isinstance(rel.get("targetId"), str):
                        with_thumbnail.add(rel["targetId"])
        entries = []
        for row in rows:
            pid = str(row.get("pid"))
            try:
                doc = _doc_from_scicat(row, blocks.get(pid, []))
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                if strict:
                    raise CatalogueError(
                        f"SciCat dataset {pid} cannot be read as a Splash Flows dataset: {exc}"
                    ) from exc
                log.warning(
                    "Skipping SciCat dataset %s: not readable as a Splash Flows dataset: %s", pid, exc
                )
                continue
            entries.append(CatalogueEntry(pid=pid, doc=doc, has_thumbnail=pid in with_thumbnail))
        return entries

    def _query(self, route: str, flt: Mapping[str, Any], *, context: str) -> list[dict[str, Any]]:
        """One GET with a ``filter``; the answer must be a list of objects."""
        response = self._request("GET", route, context, params={"filter": json.dumps(flt)})
        rows = self._json(response, context)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise CatalogueError(f"SciCat GET {route} for {context} did not answer with a list of objects")
        return rows

    def _query_all(
        self,
        route: str,
        where: Mapping[str, Any],
        *,
        sort: Mapping[str, str],
        context: str,
        fields: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every row matching ``where``, fetched in pages (the server applies a default limit otherwise)."""
        rows: list[dict[str, Any]] = []
        skip = 0
        while True:
            flt: dict[str, Any] = {
                "where": where,
                "limits": {"limit": self._page_size, "skip": skip, "sort": sort},
            }
            if fields is not None:
                flt["fields"] = fields
            page = self._query(route, flt, context=context)
            rows.extend(page)
            if len(page) < self._page_size:
                return rows
            skip += self._page_size

    # ------------------------------------------------------------------ writing: our documents -> SciCat

    def _dataset_payload(self, doc: DatasetDoc) -> dict[str, Any]:
        context = f"scan {doc.scan_key}"
        reserved = sorted(k for k in doc.scientific_metadata if k.startswith(RESERVED_PREFIX))
        if reserved:
            raise CatalogueError(
                f"{context}: scientific metadata keys {reserved} use the prefix "
                f"{RESERVED_PREFIX!r}, which the SciCat catalogue keeps for itself"
            )
        host = doc.source_folder_host
        if host is not None and not _URL_LIKE.match(host):
            raise CatalogueError(
                f"{context}: sourceFolderHost {host!r} is not URL-like; SciCat wants a fully "
                "qualified host such as 'data.example.org' or 'https://data.example.org'"
            )
        metadata = {
            **doc.scientific_metadata,
            SCAN_KEY: doc.scan_key,
            LOCATIONS: [loc.model_dump(mode="json") for loc in doc.locations],
            ERRORS: list(doc.errors),
        }
        folder = doc.source_folder.rstrip("/") or "/"  # the server strips trailing slashes itself
        try:
            derived: dict[str, Any] = {}
            if doc.dataset_type == "derived":
                derived = {"inputDatasets": list(doc.input_datasets), "usedSoftware": list(doc.used_software),
                           "jobParameters": dict(doc.job_parameters)}
            dto = CreateDatasetDto(
                type=doc.dataset_type,
                **derived,
                datasetName=doc.name,
                owner=doc.owner,
                ownerGroup=doc.owner_group,
                accessGroups=list(doc.access_groups),
                contactEmail=doc.contact_email,
                principalInvestigators=[doc.principal_investigator],
                proposalIds=[doc.proposal_id] if doc.proposal_id else None,
                creationTime=doc.creation_time,
                creationLocation=doc.creation_location,
                sourceFolder=folder,
                sourceFolderHost=host,
                description=doc.description,
                keywords=list(doc.keywords),
                scientificMetadata=metadata,
                isPublished=False,
            )
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the SciCat dataset: {exc}") from exc
        return _dump(dto, context)

    def _origdatablock_payload(self, doc: DatasetDoc, pid: str) -> dict[str, Any]:
        context = f"scan {doc.scan_key}"
        try:
            dto = CreateOrigDatablockDto(
                datasetId=pid,
                size=doc.size,
                chkAlg=doc.checksum_algorithm,
                ownerGroup=doc.owner_group,
                accessGroups=list(doc.access_groups),
                dataFileList=[DataFile(path=f.path, size=f.size, time=f.time, chk=f.chk) for f in doc.files],
            )
        except ValidationError as exc:
            raise CatalogueError(f"{context}: cannot build the SciCat OrigDatablock: {exc}") from exc
        return _dump(dto, context)

    # ------------------------------------------------------------------ HTTP, login, retries

    def _retrying(self, what: str, step: Callable[[], T]) -> T:
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return step()
            except _Transient as exc:
                if attempt >= attempts:
                    raise CatalogueUnavailable(
                        f"SciCat at {self._shown_url} unavailable: {what}: {exc} "
                        f"(gave up after {attempts} attempts)"
                    ) from exc
                delay = self._retry.delay(attempt)
                log.warning(
                    "SciCat %s failed (%s); attempt %d of %d, retrying in %.1f s",
                    what,
                    exc,
                    attempt,
                    attempts,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _request(
        self,
        method: str,
        route: str,
        context: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One authenticated request. On 401 or 403 the account logs in again and the request is sent once more:
        a real 4.27 answers an expired token on the v4 routes with 403, so only a 403 to the fresh token is a
        refusal."""
        relogged = False
        while True:
            token = self._current_token()
            try:
                response = self._http.request(
                    method, route, json=body, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise _Transient(self._redact(f"{method} {route}: {type(exc).__name__}: {exc}")) from exc
            except httpx.HTTPError as exc:
                raise CatalogueError(
                    self._redact(f"SciCat {method} {route} for {context} failed: {exc}")
                ) from exc
            if response.status_code in (401, 403) and not relogged:
                log.info("SciCat answered %d to %s %s; logging in again", response.status_code, method, route)
                self._forget_token(token)
                relogged = True
                continue
            self._raise_for_status(response, f"{method} {route}", context)
            return response

    def _current_token(self) -> str:
        with self._login_lock:
            expired = self._token_deadline is not None and self._clock() >= self._token_deadline
            if self._token is None or expired:
                self._login()
            assert self._token is not None
            return self._token

    def _forget_token(self, token: str) -> None:
        with self._login_lock:
            if self._token == token:  # another thread may have logged in already
                self._token = None

    def _login(self) -> None:
        context = f"login of functional account {self._username!r}"
        body = _dump(CredentialsDto(username=self._username, password=self._password), context)
        try:
            response = self._http.post(LOGIN_ROUTE, json=body)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(self._redact(f"POST {LOGIN_ROUTE}: {type(exc).__name__}: {exc}")) from exc
        except httpx.HTTPError as exc:
            raise CatalogueError(self._redact(f"SciCat {context} failed: {exc}")) from exc
        self._raise_for_status(response, f"POST {LOGIN_ROUTE}", context)
        answer = self._json(response, context)
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise CatalogueError(f"SciCat {context}: the answer carries no access_token")
        expires_in = answer.get("expires_in")
        self._token = token
        if isinstance(expires_in, int | float) and expires_in > 0:
            # renew a little before the server's deadline so a long step does not run into it
            self._token_deadline = self._clock() + expires_in - min(60.0, expires_in / 10)
        else:
            self._token_deadline = None
        log.info("Logged in to SciCat %s as functional account %s", self._shown_url, self._username)

    def _raise_for_status(self, response: httpx.Response, what: str, context: str) -> None:
        code = response.status_code
        if code < 400:
            return
        message = self._redact(_server_message(response))
        if code >= 500 or code in (408, 429):
            raise _Transient(f"{what}: HTTP {code}: {message}")
        if code == 401:
            raise CatalogueError(
                f"SciCat refused the functional account {self._username!r} for {what} "
                f"({context}): HTTP 401: {message}"
            )
        raise CatalogueError(f"SciCat refused {what} for {context}: HTTP {code}: {message}")

    def _json(self, response: httpx.Response, context: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise CatalogueError(
                f"SciCat {response.request.method} {response.request.url.path} for {context} "
                f"answered HTTP {response.status_code} with no JSON body"
            ) from exc

    def _redact(self, text: str) -> str:
        """Remove the password and token from ``text``: every message leaving this class passes here."""
        for secret in (self._password, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------------- module helpers


def _dump(model: Any, context: str) -> dict[str, Any]:
    """JSON body of an sdk model: only the fields we set, with SciCat's (camelCase) names."""
    try:
        body = model.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    except (TypeError, ValueError) as exc:
        raise CatalogueError(f"{context}: cannot serialise {type(model).__name__}: {exc}") from exc
    assert isinstance(body, dict)
    return body


def _doc_from_scicat(row: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]) -> DatasetDoc:
    """Map a SciCat v4 dataset and its OrigDatablocks back to our document."""
    metadata = _decoded_keys(row.get("scientificMetadata") or {})
    scan_key = metadata.pop(SCAN_KEY)
    locations = metadata.pop(LOCATIONS, None) or []
    errors = metadata.pop(ERRORS, None) or []
    files = [
        {"path": f["path"], "size": int(f["size"]), "time": f["time"], "chk": f.get("chk") or ""}
        for block in blocks
        for f in block.get("dataFileList") or []
    ]
    algorithms = [b["chkAlg"] for b in blocks if b.get("chkAlg")]
    proposals = row.get("proposalIds") or []
    return DatasetDoc.model_validate(
        {
            "scan_key": scan_key,
            "name": row.get("datasetName") or "",
            "owner": row.get("owner") or "",
            "owner_group": row["ownerGroup"],
            "access_groups": list(row.get("accessGroups") or []),
            "contact_email": row.get("contactEmail") or "",
            "principal_investigator": "; ".join(row.get("principalInvestigators") or []),
            "proposal_id": proposals[0] if proposals else None,
            "creation_time": row["creationTime"],
            "creation_location": row.get("creationLocation") or "",
            "source_folder": row["sourceFolder"],
            "source_folder_host": row.get("sourceFolderHost"),
            "description": row.get("description") or "",
            "keywords": list(row.get("keywords") or []),
            "scientific_metadata": {k: _without_si(v) for k, v in metadata.items()},
            "checksum_algorithm": algorithms[0] if algorithms else "",
            "files": files,
            "locations": locations,
            "errors": errors,
            "dataset_type": "derived" if row.get("type") == "derived" else "raw",
            "input_datasets": list(row.get("inputDatasets") or []),
            "used_software": list(row.get("usedSoftware") or []),
            "job_parameters": dict(row.get("jobParameters") or {}),
        }
    )


def _decoded_keys(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``scientificMetadata`` with its keys decoded: v4 returns them URL-encoded as stored
    (``I1%20normalization``), v3 and our documents decoded (``I1 normalization``)."""
    return {unquote(str(key)): value for key, value in metadata.items()}
def _datablock_from_scicat(row: Mapping[str, Any], pid: str) -> DatablockDoc:
    """Our DatablockDoc from a SciCat Datablock row."""
    try:
        return DatablockDoc(archive_id=row["archiveId"], size=int(row["size"]), packed_size=int(row["packedSize"]),
                            chk_alg=str(row.get("chkAlg") or ""), version=str(row.get("version") or ""),
                            files=[DataFileDoc(path=f["path"], size=int(f["size"]), time=f["time"],
                                               chk=str(f.get("chk") or "")) for f in row["dataFileList"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogueError(f"SciCat dataset {pid}: a datablock cannot be read: {exc}") from exc


def _without_si(value: Any) -> Any:
    """Drop the ``valueSI``/``unitSI`` the server adds to ``{value, unit}`` so a document reads back as it was
    written."""
    if isinstance(value, dict) and set(value) == {"value", "unit", "valueSI", "unitSI"}:
        return {"value": value["value"], "unit": value["unit"]}
    return value


def _decode_data_uri(uri: Any, pid: str) -> bytes:
    if not isinstance(uri, str) or not uri.startswith("data:") or ";base64," not in uri:
        raise CatalogueError(f"the thumbnail of dataset {pid} is not a base64 data URI")
    try:
        return base64.b64decode(uri.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CatalogueError(f"the thumbnail of dataset {pid} is not valid base64: {exc}") from exc


def _server_message(response: httpx.Response) -> str:
    """The server's explanation: NestJS puts it in ``message`` (a string or a list of strings)."""
    try:
        answer = response.json()
    except ValueError:
        return response.text[:_MESSAGE_LIMIT] or response.reason_phrase
    message = answer.get("message") if isinstance(answer, dict) else None
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    if not message:
        message = json.dumps(answer)
    return str(message)[:_MESSAGE_LIMIT]


def _require_str(row: Any, key: str, context: str) -> str:
    """``row[key]`` when the server's answer is an object holding a non-empty string there."""
    value = row.get(key) if isinstance(row, Mapping) else None
    if not isinstance(value, str) or not value:
        raise CatalogueError(f"SciCat answer for {context} has no {key}")
    return value


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
