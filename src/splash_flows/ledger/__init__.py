"""The ledger: the system of record for where every file is, and what happened to it."""

from splash_flows.ledger.models import CopyState, EventKind
from splash_flows.ledger.store import FileStatus, Ledger, NewSource, SourceRecord, VerifiedCopy

__all__ = ["CopyState", "EventKind", "FileStatus", "Ledger", "NewSource", "SourceRecord", "VerifiedCopy"]
