"""The ledger: the system of record for where every file is, and what happened to it.

The names below are imported on first use (PEP 562), so that a light module of this package (``ledger.reads``,
``ledger.dbapi``: the read path of ``splash-flows status``) can be imported without SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splash_flows.ledger.models import CopyState, EventKind
    from splash_flows.ledger.store import FileStatus, Ledger, NewSource, SourceRecord, VerifiedCopy

__all__ = ["CopyState", "EventKind", "FileStatus", "Ledger", "NewSource", "SourceRecord", "VerifiedCopy"]
_HOME = {"CopyState": "models", "EventKind": "models", "FileStatus": "store", "Ledger": "store",
         "NewSource": "store", "SourceRecord": "store", "VerifiedCopy": "store"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"splash_flows.ledger.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
