"""A plain DB-API connection to the ledger for ``splash-flows status``: ``sqlite3`` or ``psycopg``, no SQLAlchemy.

``status`` must answer at once, and importing SQLAlchemy alone costs most of that budget (docs/PERFORMANCE.md
section 8), so it runs the queries of ``ledger.reads`` -- the same SQL text every other caller runs through
SQLAlchemy -- on a connection opened here:

* SQLite (``sqlite:///PATH``): the standard library's ``sqlite3``, opened **read-only** (``mode=ro``): status
  can never write the ledger, and in WAL mode its one read transaction sees a single snapshot while writers go on.
* PostgreSQL (``postgresql://`` or ``postgresql+psycopg://``: psycopg 3, the driver SQLAlchemy 2.1 uses and the
  project installs): ``psycopg``, with the session
  options ``Ledger.open`` sets (no JIT). One transaction, committed at the end: ``reads.fold_if_many`` may fold
  the counters' shards in it, as every other reader of the totals does.

``open_reader`` returns None whenever this path cannot promise what ``Ledger.open`` would do: another URL form
(an in-memory database, another driver, URL options), a database file that does not exist yet (``Ledger.open``
creates it), a schema that is not at the newest migration (``Ledger.open`` upgrades it; Alembic is not imported
to find that out: ``reads.current_revision`` against the head read from the migration files), or any error on
connecting (``Ledger.open`` then reports it as it always has). The caller then takes the SQLAlchemy path,
which gives the same answers through the same SQL.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from splash_flows.errors import LedgerError
from splash_flows.ledger import reads


class DbapiReader:
    """``reads.Reader`` over one DB-API connection (one transaction)."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row of ``sql`` (already in the driver's parameter style)."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql, dict(params))
            return [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
        finally:
            cur.close()


def sqlite_path(url: str) -> Path | None:
    """The database file of a plain ``sqlite:///PATH`` URL (no driver, no options, no %-escapes, which SQLAlchemy
    would decode; None otherwise)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or any(c in url for c in "?#%"):
        return None
    path = url[len(prefix):]
    return Path(path) if path and path != ":memory:" else None


#: URL schemes SQLAlchemy (2.1 and later, as pyproject requires) serves with psycopg 3
PSYCOPG_SCHEMES = ("postgresql", "postgresql+psycopg")


def psycopg_conninfo(url: str) -> tuple[str, str] | None:
    """``postgresql[+psycopg]://...`` as a libpq URI and the session ``options`` to connect with (the URL's own
    ``options`` and ``PG_NO_JIT``, as ``Ledger.open`` passes them); None for another scheme or driver."""
    parts = urlsplit(url)
    if parts.scheme not in PSYCOPG_SCHEMES:
        return None
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(filter(None, [*(v for k, v in query if k == "options"), reads.PG_NO_JIT]))
    rest = "&".join(f"{k}={quote(v, safe='')}" for k, v in query if k != "options")
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment)), options


def _connect(url: str) -> DbapiReader | None:
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            return None
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=60,
                               isolation_level=None)
        conn.execute("BEGIN")  # one snapshot for every read (WAL: no lock taken, writers go on)
        return DbapiReader(conn, "sqlite")
    conninfo = psycopg_conninfo(url)
    if conninfo is None:
        return None
    import psycopg

    return DbapiReader(psycopg.connect(conninfo[0], options=conninfo[1]), "postgresql")


def driver_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The errors a driver raises (DB-API ``Error``; psycopg's once it is imported), those of a file or URL that
    cannot be opened, and ``extra``."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, ValueError, *extra]
    if (psycopg := sys.modules.get("psycopg")) is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


@contextmanager
def open_reader(url: str) -> Iterator[DbapiReader | None]:
    """A reader of the ledger at ``url`` when this light path can serve it (see the module docstring), else
    None; the transaction is committed (PostgreSQL: a fold of the counters) and closed on leaving."""
    try:
        reader = _connect(url)
    except driver_errors(ImportError):  # (evaluated after the import) Ledger.open reports it, as always
        reader = None
    if reader is not None:
        try:
            head = reads.migration_head()
            at_head = head is not None and reads.current_revision(reader) == head
        except driver_errors():  # no alembic_version table, several revisions: Ledger.open upgrades or says why
            at_head = False
        if not at_head:
            reader.conn.close()
            reader = None
    if reader is None:
        yield None
        return
    try:
        yield reader
        reader.conn.commit()
    except driver_errors() as err:
        from splash_flows.config import redact_url

        raise LedgerError(f"ledger {redact_url(url)}: {type(err).__name__}: {err}") from None
    finally:
        reader.conn.close()


@contextmanager
def status_reader(url: str) -> Iterator[tuple[reads.Reader, str]]:
    """A reader of the ledger at ``url`` and how to name the ledger (password hidden), for ``status``: this
    module's light connection when it can serve, else ``Ledger.open`` (which creates or upgrades the schema as
    it always has, importing SQLAlchemy) and its ``Ledger.reader``. Either runs the same SQL (``ledger.reads``)."""
    from splash_flows.config import redact_url

    with open_reader(url) as light:
        if light is not None:
            yield light, redact_url(url)
            return
    from splash_flows.ledger.store import Ledger

    ledger = Ledger.open(url)
    try:
        with ledger.reader() as reader:
            yield reader, ledger.describe()
    finally:
        ledger.close()
