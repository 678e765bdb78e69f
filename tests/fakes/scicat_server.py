"""A FAKE scicat-backend 4.5 HTTP server, for tests only. Never point production code at it.

It runs in the test process on 127.0.0.1 (a free port, ``http.server`` in a thread) and enforces what
``shared/reference/SCICAT.md`` says the real server does, so the SciCat adapter is tested against the rules
and not against our own assumptions:

* login (``POST /api/v3/auth/login``) gives a token that expires (``token_ttl``; ``expire_tokens()`` forces
  it); every other route wants ``Authorization: Bearer <token>`` (a query-string token is ignored). A missing,
  expired or invalid token is answered 401 on the v3 routes but **403 "Forbidden resource" on the v4 routes**,
  as a real 4.27 does (SCICAT.md, "Seen on a real ... 4.27");
* accounts and groups as the real server's CASL rules have them: an account's ``currentGroups`` (its own name
  unless ``groups`` says otherwise) are shown by ``GET /api/v3/auth/whoami``; ``admin_groups`` (ADMIN_GROUPS,
  by default ``admin`` and ``ingestor`` as scicatlive configures them) may do anything; an account in
  ``privileged_groups`` (CREATE_DATASET_PRIVILEGED_GROUPS) may create datasets for any ownerGroup; any other
  account only for one of its groups. ``POST /api/v4/origdatablocks`` and ``PATCH /api/v4/datasets/{pid}``
  need an admin group or the dataset's ownerGroup (so a privileged account creates datasets it cannot fill:
  the 4.27 trap), and listing shows a non-admin account only the datasets (and origdatablocks) of its groups
  (ownerGroup or accessGroups) and published ones;
* ``scientificMetadata`` keys are stored URL-encoded (``encodeURIComponent``: ``I1%20normalization``) and the
  v4 routes return them so, as a real 4.27 does; a client that writes back the keys it read gets them encoded
  twice;
* EVERY request body is validated against the schema of its route in the OpenAPI document the real server
  serves (``tests/data/scicat-backend-4.5-openapi.json``), with unknown properties forbidden as the server's
  whitelist does; a failure answers 400 and is recorded in ``violations`` so tests can assert there were none;
* v4 dataset rules: ``type`` raw/derived, ``sourceFolderHost`` URL-like, client pids only for the
  "create with pid" accounts, duplicate pid -> 409, ``{value, unit}`` metadata gains ``valueSI``/``unitSI``;
* origdatablocks have no uniqueness check (posting twice stores two) and set the dataset's size and file
  count;
* the DATE-FILTER TRAP: a filter string that JavaScript's ``Date.parse`` would accept (emulated: ISO dates,
  digit groups joined by ``./-:`` such as "/ALS/7.3.3", anything ``dateutil`` parses) is turned into a date
  and so matches no string field; ``$in`` and ``$regex`` values are left alone;
* fault injection: ``fail_next`` (answer 5xx), ``drop_next`` (close the connection without an answer, before
  or after the request took effect), ``reject_all_tokens``.

Routes the 4.5 document has but this fake does not implement answer 501 and are recorded as violations too.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jsonschema
from dateutil import parser as date_parser
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "data" / "scicat-backend-4.5-openapi.json"
_DOC_URI = "urn:scicat-backend-4.5-openapi"
LOGIN = "/api/v3/auth/login"
WHOAMI = "/api/v3/auth/whoami"

# ---------------------------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Violation:
    """A request the real server would reject as malformed (or the fake cannot judge)."""

    method: str
    path: str
    kind: str  # schema | rule | route | unimplemented | filter
    detail: str


class Contract:
    """Request-body schemas of the 4.5 OpenAPI document, made strict (unknown properties are errors)."""

    def __init__(self, openapi_path: Path = OPENAPI_PATH) -> None:
        doc = json.loads(openapi_path.read_text(encoding="utf-8"))
        self.doc = doc
        strict = copy.deepcopy(doc)
        _forbid_unknown_properties(strict["components"])
        self._registry: Registry[Any] = Registry().with_resource(
            _DOC_URI, Resource.from_contents(strict, default_specification=DRAFT7)
        )
        self.routes: list[tuple[str, str, list[str]]] = []  # (method, template, segments)
        for template, operations in doc["paths"].items():
            for method in operations:
                if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                    self.routes.append((method.upper(), template, template.strip("/").split("/")))

    def match(self, method: str, raw_path: str) -> tuple[str, dict[str, str]] | None:
        """The route template of a request (most literal segments wins) and its decoded path parameters."""
        parts = raw_path.strip("/").split("/")
        best: tuple[int, str, dict[str, str]] | None = None
        for route_method, template, segments in self.routes:
            if route_method != method or len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            literal = 0
            for seg, part in zip(segments, parts, strict=True):
                if seg.startswith("{") and seg.endswith("}"):
                    params[seg[1:-1]] = unquote(part)
                elif seg == part:
                    literal += 1
                else:
                    break
            else:
                if best is None or literal > best[0]:
                    best = (literal, template, params)
        return None if best is None else (best[1], best[2])

    def body_schema(self, method: str, template: str) -> dict[str, Any] | None:
        operation = self.doc["paths"][template][method.lower()]
        content = operation.get("requestBody", {}).get("content", {})
        for media in ("application/json", *content):
            if media in content and "schema" in content[media]:
                schema: dict[str, Any] = content[media]["schema"]
                return schema
        return None

    def validate(self, method: str, template: str, body: Any, extra_forbidden: set[str]) -> list[str]:
        """Error messages for ``body`` (NestJS style for unknown properties); empty when valid."""
        schema = self.body_schema(method, template)
        if schema is None:
            return []
        resolved = json.loads(json.dumps(schema).replace('"#/components', f'"{_DOC_URI}#/components'))
        validator = jsonschema.Draft7Validator(resolved, registry=self._registry, format_checker=_FORMATS)
        errors = []
        for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                known = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
                where = ".".join(str(p) for p in error.absolute_path)
                for name in sorted(set(error.instance) - known):
                    errors.append(f"property {where + '.' if where else ''}{name} should not exist")
            else:
                where = ".".join(str(p) for p in error.absolute_path) or "body"
                errors.append(f"{where}: {error.message}")
        if isinstance(body, dict):
            errors += [f"property {name} should not exist" for name in sorted(extra_forbidden & set(body))]
        return errors


# The formats the server checks (IsDateString, IsEmail). "uri" is deliberately absent: the document says
# sourceFolderHost is a uri, but the server's IsUrl accepts a bare host name; that rule is checked by hand.
_FORMATS = jsonschema.FormatChecker(formats=["date-time", "email"])
if "date-time" not in _FORMATS.checkers:  # jsonschema checks date-time only with rfc3339-validator installed
    raise ImportError("the fake SciCat needs rfc3339-validator to check date-time fields")


@functools.cache
def default_contract() -> Contract:
    """The contract of ``tests/data/scicat-backend-4.5-openapi.json``, loaded once (it is read-only)."""
    return Contract()


def _forbid_unknown_properties(node: Any) -> None:
    """Give every object schema that lists its properties ``additionalProperties: false`` (the server's
    whitelist); free-form objects such as scientificMetadata (no ``properties``) stay open."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_unknown_properties(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown_properties(value)


# ---------------------------------------------------------------------------------------------- filters

_MISSING = object()
_DATE_FIELDS = {"creationTime", "createdAt", "updatedAt", "startTime", "endTime", "time"}
_ISO_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?)?)?$")
_DIGIT_GROUPS = re.compile(r"\d+\s*[./\-:]\s*\d+")


class FilterError(Exception):
    """The filter is not JSON or uses an operator the fake does not know."""


def looks_like_js_date(text: str) -> bool:
    """Would ``Date.parse(text)`` give a date? An emulation of V8's lenient parser, erring towards yes."""
    if _ISO_DATE.match(text) or _DIGIT_GROUPS.search(text):
        return True
    try:
        date_parser.parse(text)
    except (ValueError, OverflowError):
        return False
    return True


@dataclass(frozen=True)
class _JsDate:
    """A filter value the server turned into a Date: equal only to a stored date of the same instant."""

    text: str

    def matches(self, stored: Any, field_name: str) -> bool:
        if field_name not in _DATE_FIELDS or not isinstance(stored, str):
            return False
        try:
            return _parse_instant(stored) == _parse_instant(self.text)
        except (ValueError, OverflowError):
            return False


def _parse_instant(text: str) -> datetime:
    value = date_parser.parse(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _resolve(value: Any, parts: list[str]) -> list[Any]:
    """Mongo-style path lookup: arrays on the way are expanded, a final array also offers its items."""
    if not parts:
        return [value, *value] if isinstance(value, list) else [value]
    if isinstance(value, list):
        return [found for item in value for found in _resolve(item, parts)]
    if isinstance(value, dict) and parts[0] in value:
        return _resolve(value[parts[0]], parts[1:])
    return [_MISSING]


def _condition(doc: dict[str, Any], name: str, cond: Any) -> bool:
    candidates = _resolve(doc, name.split("."))
    leaf = name.split(".")[-1]
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        for op, arg in cond.items():
            if op == "$options":
                continue
            if op == "$in":
                ok = isinstance(arg, list) and any(c in arg for c in candidates if c is not _MISSING)
            elif op == "$nin":
                ok = isinstance(arg, list) and not any(c in arg for c in candidates if c is not _MISSING)
            elif op == "$exists":
                ok = any(c is not _MISSING for c in candidates) == bool(arg)
            elif op == "$regex":
                flags = re.IGNORECASE if "i" in str(cond.get("$options", "")) else 0
                try:
                    pattern = re.compile(str(arg), flags)
                except re.error as exc:
                    raise FilterError(f"bad $regex {arg!r}: {exc}") from exc
                ok = any(isinstance(c, str) and pattern.search(c) for c in candidates)
            elif op in ("$eq", "$ne"):
                ok = _equals(candidates, arg, leaf) == (op == "$eq")
            else:
                raise FilterError(f"operator {op} is not emulated by the fake")
            if not ok:
                return False
        return True
    return _equals(candidates, cond, leaf)


def _equals(candidates: list[Any], value: Any, leaf: str) -> bool:
    if isinstance(value, str) and looks_like_js_date(value):
        date = _JsDate(value)  # THE TRAP: the server compares a Date, never the string
        return any(date.matches(c, leaf) for c in candidates)
    return any(c == value for c in candidates if c is not _MISSING)


def matches(doc: dict[str, Any], where: dict[str, Any]) -> bool:
    """Does ``doc`` satisfy a loopback/Mongo ``where`` (the subset the backend passes to Mongo)?"""
    for name, cond in where.items():
        if name == "$and":
            ok = all(matches(doc, sub) for sub in cond)
        elif name == "$or":
            ok = any(matches(doc, sub) for sub in cond)
        elif name.startswith("$"):
            raise FilterError(f"operator {name} is not emulated by the fake")
        else:
            ok = _condition(doc, name, cond)
        if not ok:
            return False
    return True


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is _MISSING or value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    return (2, str(value))


def apply_filter(
    rows: list[dict[str, Any]], flt: dict[str, Any], always: tuple[str, ...]
) -> list[dict[str, Any]]:
    """where, then sort/skip/limit (``limits``), then the ``fields`` projection."""
    where = flt.get("where") or {}
    if not isinstance(where, dict):
        raise FilterError("where must be an object")
    found = [row for row in rows if matches(row, where)]
    limits = flt.get("limits") or {}
    sort = limits.get("sort") or limits.get("order")
    if isinstance(sort, str):  # v3 style "field:asc,other:desc"
        sort = dict(part.split(":", 1) for part in sort.split(",") if ":" in part)
    if isinstance(sort, dict):
        for name, direction in reversed(list(sort.items())):
            found.sort(
                key=lambda r, n=name: _sort_key(_resolve(r, n.split("."))[0]),
                reverse=str(direction).lower().startswith("desc"),
            )
    skip = int(limits.get("skip") or 0)
    limit = limits.get("limit")
    found = found[skip:] if limit is None else found[skip : skip + int(limit)]
    fields = flt.get("fields")
    if isinstance(fields, list) and fields:
        keep = {str(f).split(".")[0] for f in fields} | set(always)
        found = [{k: v for k, v in row.items() if k in keep} for row in found]
    return copy.deepcopy(found)


# ---------------------------------------------------------------------------------------------- the server

_SI = {
    "m": (1.0, "m"),
    "mm": (1e-3, "m"),
    "um": (1e-6, "m"),
    "nm": (1e-9, "m"),
    "angstrom": (1e-10, "m"),
    "s": (1.0, "s"),
    "ms": (1e-3, "s"),
    "K": (1.0, "K"),
    "eV": (1.602176634e-19, "kg m^2 / s^2"),
    "keV": (1.602176634e-16, "kg m^2 / s^2"),
}
_EMAIL = re.compile(r"^[^@\s;]+@[^@\s;]+\.[^@\s;]+$")


def _url_like(host: str) -> bool:
    """IsUrl(require_tld, protocol optional), reimplemented independently of the adapter's check."""
    netloc = urlsplit(host).netloc if "://" in host else host.split("/", 1)[0]
    name = netloc.rsplit("@", 1)[-1].split(":", 1)[0]
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", name):
        return True
    labels = name.split(".")
    return (
        len(labels) >= 2
        and all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?", label) for label in labels)
        and re.fullmatch(r"[A-Za-z]{2,63}", labels[-1]) is not None
    )


def _with_si(metadata: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metadata.items():
        if isinstance(value, dict) and "value" in value and "unit" in value:
            value = dict(value)
            number, unit = value["value"], value["unit"]
            factor, si_unit = _SI.get(str(unit), (1.0, str(unit)))
            value["valueSI"] = number * factor if isinstance(number, int | float) else number
            value["unitSI"] = si_unit
        out[key] = value
    return out


class _Reply(Exception):
    """An HTTP answer other than success, raised by a route and turned into a NestJS-style error body."""

    def __init__(self, status: int, message: Any, error: str = "") -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.error = error


@dataclass
class _Fault:
    kind: str  # status | drop
    remaining: int
    status: int = 503
    method: str | None = None
    path: str | None = None
    after_processing: bool = False

    def applies(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or path == self.path)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class FakeSciCat:
    """The FAKE server. Use as a context manager; ``url`` is its base URL once started."""

    users: dict[str, str] = field(default_factory=lambda: {"ingestor": "correct horse battery staple"})
    pid_groups: set[str] = field(default_factory=set)  # accounts allowed to send their own pid
    groups: dict[str, set[str]] = field(default_factory=dict)  # account -> currentGroups (default: {account})
    admin_groups: set[str] = field(default_factory=lambda: {"admin", "ingestor"})  # ADMIN_GROUPS
    privileged_groups: set[str] = field(default_factory=set)  # CREATE_DATASET_PRIVILEGED_GROUPS
    token_ttl: float = 3600.0
    pid_prefix: str = "20.500.12269/"
    clock: Callable[[], float] = time.time
    contract: Contract = field(default_factory=lambda: default_contract())

    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    origdatablocks: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    datablocks: list[dict[str, Any]] = field(default_factory=list)  # archived units (tape bundles)
    violations: list[Violation] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)
    forbidden_fields: dict[str, set[str]] = field(default_factory=dict)  # "POST /api/v4/datasets" -> names
    reject_all_tokens: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._faults: list[_Fault] = []
        self._last_stamp = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[tuple[str, str], Callable[..., tuple[int, Any]]] = {
            ("POST", LOGIN): self._login,
            ("GET", WHOAMI): self._whoami,
            ("GET", "/api/v3/users/{id}/authorization/dataset/create"): self._can_create_dataset,
            ("GET", "/api/v4/datasets"): self._list_datasets,
            ("POST", "/api/v4/datasets"): self._create_dataset,
            ("GET", "/api/v4/datasets/{pid}"): self._get_dataset,
            ("PATCH", "/api/v4/datasets/{pid}"): self._patch_dataset,
            ("DELETE", "/api/v4/datasets/{pid}"): self._forbidden,
            ("GET", "/api/v4/origdatablocks"): self._list_origdatablocks,
            ("POST", "/api/v4/origdatablocks"): self._create_origdatablock,
            ("PATCH", "/api/v4/origdatablocks/{id}"): self._patch_origdatablock,
            ("GET", "/api/v4/attachments"): self._list_attachments,
            ("POST", "/api/v4/attachments"): self._create_attachment,
            ("PATCH", "/api/v4/attachments/{aid}"): self._patch_attachment,
            ("DELETE", "/api/v4/attachments/{aid}"): self._delete_attachment,
            ("GET", "/api/v3/datasets/{pid}/datablocks"): self._list_datablocks,
            ("POST", "/api/v3/datasets/{pid}/datablocks"): self._create_datablock,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeSciCat:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-scicat", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSciCat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ knobs for tests

    def fail_next(
        self, n: int = 1, status: int = 503, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (and do nothing else)."""
        with self._lock:
            self._faults.append(_Fault("status", n, status=status, method=method, path=path))

    def drop_next(
        self,
        n: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """Close the connection of the next ``n`` matching requests without an answer; with
        ``after_processing`` the request takes effect first (the answer is lost, not the request)."""
        with self._lock:
            self._faults.append(
                _Fault("drop", n, method=method, path=path, after_processing=after_processing)
            )

    def clear_faults(self) -> None:
        """Forget every injected fault not yet used up (the server "comes back")."""
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as after ``expires_in`` seconds."""
        with self._lock:
            self._tokens = {t: (user, 0.0) for t, (user, _) in self._tokens.items()}

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path == path)

    def blocks_of(self, pid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [b for b in self.origdatablocks if b["datasetId"] == pid]

    # ------------------------------------------------------------------ request handling

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[str, int, Any]:
        """Process one request. Returns ("reply", status, payload) or ("drop", 0, None)."""
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qs(split.query)
        with self._lock:
            body = _loads(raw)
            if path == LOGIN and isinstance(body, dict) and "password" in body:
                body = {**body, "password": "***"}  # the fake does not keep secrets either
            record = RecordedRequest(method, path, query, body)
            self.requests.append(record)
            fault = self._take_fault(method, path)
            if fault is not None and fault.kind == "status":
                record.status = fault.status
                return "reply", fault.status, _error(fault.status, "injected fault")
            if fault is not None and not fault.after_processing:
                return "drop", 0, None
            try:
                status, payload = self._dispatch(method, split.path, query, headers, raw)
            except _Reply as reply:
                status, payload = reply.status, _error(reply.status, reply.message, reply.error)
            record.status = status
            if fault is not None:
                return "drop", 0, None
            return "reply", status, payload

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.applies(method, path):
                fault.remaining -= 1
                return fault
        return None

    def _dispatch(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        path = unquote(raw_path)
        found = self.contract.match(method, raw_path)
        if found is None:
            self.violations.append(Violation(method, path, "route", "not a route of scicat-backend 4.5"))
            raise _Reply(404, f"Cannot {method} {path}", "Not Found")
        template, params = found
        handler = self._handlers.get((method, template))
        if handler is None:
            self.violations.append(Violation(method, path, "unimplemented", f"{method} {template}"))
            raise _Reply(501, f"the fake does not implement {method} {template}", "Not Implemented")
        user = None
        if template != LOGIN:
            user = self._authenticate(headers, v4=template.startswith("/api/v4/"))
        body: Any = None
        if self.contract.body_schema(method, template) is not None:
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                raise _Reply(400, f"body is not JSON: {exc}", "Bad Request") from exc
            forbidden = self.forbidden_fields.get(f"{method} {template}", set())
            errors = self.contract.validate(method, template, body, forbidden)
            if errors:
                for error in errors:
                    self.violations.append(Violation(method, path, "schema", error))
                raise _Reply(400, errors, "Bad Request")
        try:
            flt = json.loads(query["filter"][0]) if "filter" in query else {}
        except ValueError as exc:
            raise _Reply(400, f"filter is not JSON: {exc}", "Bad Request") from exc
        try:
            return handler(params=params, body=body, flt=flt, user=user, headers=headers)
        except FilterError as exc:
            self.violations.append(Violation(method, path, "filter", str(exc)))
            raise _Reply(400, str(exc), "Bad Request") from exc

    def _authenticate(self, headers: dict[str, str], *, v4: bool) -> str:
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        user, expires = self._tokens.get(token, ("", 0.0))
        if not user or self.clock() >= expires or self.reject_all_tokens:
            if v4:  # the v4 guards see an anonymous caller and refuse it: 403, not 401 (4.27)
                raise _Reply(403, "Forbidden resource", "Forbidden")
            raise _Reply(401, "Unauthorized")
        return user

    # ------------------------------------------------------------------ accounts and permissions

    def groups_of(self, user: str) -> set[str]:
        """The account's ``currentGroups`` (roles plus access groups on a real server)."""
        return set(self.groups.get(user, {user}))

    def is_admin(self, user: str) -> bool:
        return bool(self.groups_of(user) & self.admin_groups)

    def _may_write(self, user: str, dataset: dict[str, Any]) -> bool:
        """Update a dataset or attach an origdatablock to it: ADMIN_GROUPS or the dataset's ownerGroup."""
        return self.is_admin(user) or dataset.get("ownerGroup") in self.groups_of(user)

    def _may_read(self, user: str, row: dict[str, Any]) -> bool:
        if self.is_admin(user) or row.get("isPublished") is True:
            return True
        mine = self.groups_of(user)
        return row.get("ownerGroup") in mine or bool(mine & set(row.get("accessGroups") or []))

    def _stamp(self) -> str:
        """Now, as the server writes dates (ms, Z), strictly increasing so sorting by date is stable."""
        now = max(self.clock(), self._last_stamp + 0.001)
        self._last_stamp = now
        return _iso(now)

    def _rule(self, path: str, message: str) -> _Reply:
        self.violations.append(Violation("POST", path, "rule", message))
        return _Reply(400, [message], "Bad Request")

    # ------------------------------------------------------------------ routes

    def _login(self, *, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        username, password = body["username"], body["password"]
        if self.users.get(username) != password:
            raise _Reply(401, "Unauthorized")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (username, self.clock() + self.token_ttl)
        self.issued_tokens.append(token)
        return 201, {
            "access_token": token,
            "id": token,
            "expires_in": self.token_ttl,
            "ttl": self.token_ttl,
            "created": self._stamp(),
            "userId": f"user-{username}",
            "user": {"username": username, "email": f"{username}@example.org", "id": f"user-{username}"},
        }

    def _whoami(self, *, user: str, **_: Any) -> tuple[int, Any]:
        return 200, {
            "_id": f"user-{user}",
            "username": user,
            "email": f"{user}@example.org",
            "currentGroups": sorted(self.groups_of(user)),
        }

    def _can_create_dataset(self, *, params: dict[str, str], user: str, **_: Any) -> tuple[int, Any]:
        if params["id"] != f"user-{user}" and not self.is_admin(user):
            raise _Reply(403, "Forbidden resource", "Forbidden")
        return 200, {"authorization": True}  # CREATE_DATASET_GROUPS="all", the example configuration

    def _forbidden(self, **_: Any) -> tuple[int, Any]:
        raise _Reply(403, "Forbidden resource", "Forbidden")

    def _list_datasets(self, *, flt: dict[str, Any], user: str, **_: Any) -> tuple[int, Any]:
        visible = [d for d in self.datasets.values() if self._may_read(user, d)]
        return 200, apply_filter(visible, flt, ("pid",))

    def _create_dataset(self, *, body: dict[str, Any], user: str, **_: Any) -> tuple[int, Any]:
        route = "/api/v4/datasets"
        if body["type"] not in ("raw", "derived"):
            raise self._rule(route, f"type must be raw or derived, not {body['type']!r}")
        host = body.get("sourceFolderHost")
        if host is not None and not _url_like(host):
            raise self._rule(route, "sourceFolderHost must be a URL address")
        if not all(_EMAIL.match(e.strip()) for e in body["contactEmail"].split(";")):
            raise self._rule(route, "contactEmail must contain only valid e-mail addresses")
        groups = self.groups_of(user)
        if not (self.is_admin(user) or groups & self.privileged_groups or body["ownerGroup"] in groups):
            raise _Reply(403, "Unauthorized to create this dataset", "Forbidden")
        pid = body.get("pid")
        if pid is not None:
            if user not in self.pid_groups:
                raise _Reply(403, "user is not allowed to create datasets with a pid", "Forbidden")
            if pid in self.datasets:
                raise _Reply(409, f"Dataset with pid {pid} already exists", "Conflict")
        else:
            pid = f"{self.pid_prefix}{uuid.uuid4()}"
        stamp = self._stamp()
        dataset = {
            "size": 0,
            "packedSize": 0,
            "numberOfFiles": 0,
            "numberOfFilesArchived": 0,
            "isPublished": False,
            "keywords": [],
            "techniques": [],
            "sharedWith": [],
            "relationships": [],
            "accessGroups": [],
            "scientificMetadata": {},
            "datasetlifecycle": {},
            **copy.deepcopy(body),
            "pid": pid,
            "createdBy": user,
            "updatedBy": user,
            "createdAt": stamp,
            "updatedAt": stamp,
            "version": "4.5.0",
        }
        dataset["creationTime"] = _iso(_parse_instant(body["creationTime"]).timestamp())
        dataset["sourceFolder"] = body["sourceFolder"].rstrip("/") or "/"
        dataset["scientificMetadata"] = _with_si(_encode_keys(dataset["scientificMetadata"]))
        self.datasets[pid] = dataset
        return 201, copy.deepcopy(dataset)

    def _get_dataset(self, *, params: dict[str, str], user: str, **_: Any) -> tuple[int, Any]:
        dataset = self.datasets.get(params["pid"])
        if dataset is not None and not self._may_read(user, dataset):
            raise _Reply(403, "Unauthorized access", "Forbidden")
        if dataset is None:
            raise _Reply(404, f"Dataset {params['pid']} not found", "Not Found")
        return 200, copy.deepcopy(dataset)

    def _patch_dataset(
        self, *, params: dict[str, str], body: dict[str, Any], user: str, headers: dict[str, str], **_: Any
    ) -> tuple[int, Any]:
        dataset = self.datasets.get(params["pid"])
        if dataset is None:
            raise _Reply(404, f"Dataset {params['pid']} not found", "Not Found")
        if not self._may_write(user, dataset):
            raise _Reply(403, "Unauthorized to update this dataset", "Forbidden")
        body = copy.deepcopy(body)
        if isinstance(body.get("scientificMetadata"), dict):
            body["scientificMetadata"] = _encode_keys(body["scientificMetadata"])
        merge = headers.get("content-type", "").startswith("application/merge-patch+json")
        for key, value in copy.deepcopy(body).items():
            if merge and isinstance(value, dict) and isinstance(dataset.get(key), dict):
                dataset[key] = _merge(dataset[key], value)
            elif value is not None:
                dataset[key] = value
        dataset["scientificMetadata"] = _with_si(dataset.get("scientificMetadata") or {})
        dataset["updatedBy"], dataset["updatedAt"] = user, self._stamp()
        return 200, copy.deepcopy(dataset)

    def _list_origdatablocks(self, *, flt: dict[str, Any], user: str, **_: Any) -> tuple[int, Any]:
        visible = [b for b in self.origdatablocks if self._may_read(user, b)]
        return 200, apply_filter(visible, flt, ("_id",))

    def _list_datablocks(self, *, params: dict[str, str], **_: Any) -> tuple[int, Any]:
        if params["pid"] not in self.datasets:
            raise _Reply(404, f"Dataset {params['pid']} not found", "Not Found")
        return 200, [copy.deepcopy(b) for b in self.datablocks if b["datasetId"] == params["pid"]]

    def _create_datablock(self, *, params: dict[str, str], body: dict[str, Any], user: str,
                          **_: Any) -> tuple[int, Any]:
        """As the real server: archiveId is unique across all datablocks (a second one is refused)."""
        dataset = self.datasets.get(params["pid"])
        if dataset is None:
            raise _Reply(404, f"Dataset {params['pid']} not found", "Not Found")
        if any(b["archiveId"] == body["archiveId"] for b in self.datablocks):
            raise _Reply(409, f"datablock with archiveId {body['archiveId']} exists", "Conflict")
        stamp = self._stamp()
        block = {"ownerGroup": dataset["ownerGroup"], "accessGroups": dataset.get("accessGroups", []),
                 **copy.deepcopy(body), "datasetId": dataset["pid"], "_id": str(uuid.uuid4()), "createdBy": user,
                 "updatedBy": user, "createdAt": stamp, "updatedAt": stamp}
        self.datablocks.append(block)
        return 201, copy.deepcopy(block)

    def _create_origdatablock(self, *, body: dict[str, Any], user: str, **_: Any) -> tuple[int, Any]:
        dataset = self.datasets.get(body["datasetId"])
        if dataset is None:
            raise _Reply(404, f"Dataset {body['datasetId']} not found", "Not Found")
        if not self._may_write(user, dataset):  # the 4.27 rule: ADMIN_GROUPS or the dataset's ownerGroup
            raise _Reply(403, "Unauthorized access", "Forbidden")
        stamp = self._stamp()
        block = {
            "ownerGroup": dataset["ownerGroup"],
            "accessGroups": dataset.get("accessGroups", []),
            "isPublished": False,
            **copy.deepcopy(body),
            "_id": str(uuid.uuid4()),
            "createdBy": user,
            "updatedBy": user,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        for entry in block["dataFileList"]:
            entry["time"] = _iso(_parse_instant(entry["time"]).timestamp())
        self.origdatablocks.append(block)  # no uniqueness check, as in the real server
        mine = self.blocks_of(dataset["pid"])
        dataset["size"] = sum(b["size"] for b in mine)
        dataset["numberOfFiles"] = sum(len(b["dataFileList"]) for b in mine)
        return 201, copy.deepcopy(block)

    def _patch_origdatablock(self, *, params: dict[str, str], body: dict[str, Any], user: str,
                             **_: Any) -> tuple[int, Any]:
        """PATCH replaces the fields given (a new dataFileList replaces the old) and recomputes the dataset's
        size and file count, as the real server does."""
        for block in self.origdatablocks:
            if block["_id"] == params["id"]:
                block.update({k: v for k, v in copy.deepcopy(body).items() if v is not None})
                for entry in block.get("dataFileList") or []:
                    entry["time"] = _iso(_parse_instant(entry["time"]).timestamp())
                block["updatedBy"], block["updatedAt"] = user, self._stamp()
                dataset = self.datasets.get(block["datasetId"])
                if dataset is not None:
                    mine = self.blocks_of(dataset["pid"])
                    dataset["size"] = sum(b["size"] for b in mine)
                    dataset["numberOfFiles"] = sum(len(b["dataFileList"]) for b in mine)
                return 200, copy.deepcopy(block)
        raise _Reply(404, f"OrigDatablock {params['id']} not found", "Not Found")

    def _list_attachments(self, *, flt: dict[str, Any], **_: Any) -> tuple[int, Any]:
        return 200, apply_filter(self.attachments, flt, ("aid",))

    def _create_attachment(self, *, body: dict[str, Any], user: str, **_: Any) -> tuple[int, Any]:
        aid = body.get("aid") or str(uuid.uuid4())
        if any(a["aid"] == aid for a in self.attachments):
            raise _Reply(409, f"Attachment {aid} already exists", "Conflict")
        stamp = self._stamp()
        attachment = {
            "accessGroups": [],
            "relationships": [],
            **copy.deepcopy(body),
            "aid": aid,
            "createdBy": user,
            "updatedBy": user,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        for rel in attachment["relationships"]:
            rel.setdefault("relationType", "is attached to")
        self.attachments.append(attachment)
        return 201, copy.deepcopy(attachment)

    def _patch_attachment(
        self, *, params: dict[str, str], body: dict[str, Any], user: str, **_: Any
    ) -> tuple[int, Any]:
        for attachment in self.attachments:
            if attachment["aid"] == params["aid"]:
                attachment.update({k: v for k, v in copy.deepcopy(body).items() if v is not None})
                attachment["updatedBy"], attachment["updatedAt"] = user, self._stamp()
                return 200, copy.deepcopy(attachment)
        raise _Reply(404, f"Attachment {params['aid']} not found", "Not Found")

    def _delete_attachment(self, *, params: dict[str, str], **_: Any) -> tuple[int, Any]:
        self.attachments = [a for a in self.attachments if a["aid"] != params["aid"]]
        return 200, {}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeSciCat

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake records requests itself."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        action, status, payload = self.owner.handle(self.command, self.path, headers, raw)
        if action == "drop":
            self.close_connection = True
            return  # no status line at all: the client sees the connection close
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(round(epoch, 3), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _error(status: int, message: Any, error: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {"statusCode": status, "message": message}
    if error:
        payload["error"] = error
    return payload


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def encode_uri_component(text: str) -> str:
    """JavaScript's ``encodeURIComponent``: what the server applies to a scientificMetadata key it stores."""
    return quote(text, safe="-_.!~*'()")


def _encode_keys(metadata: dict[str, Any]) -> dict[str, Any]:
    return {encode_uri_component(str(k)): v for k, v in metadata.items()}


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def iter_violations(fake: FakeSciCat) -> Iterator[str]:
    """Violations as readable lines, for assertion messages."""
    for v in fake.violations:
        yield f"{v.kind}: {v.method} {v.path}: {v.detail}"
