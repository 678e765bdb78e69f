"""One exception tree for everything Splash Flows can fail at.

Every error names what failed (file, tier) and why, so an operator reading one log line knows what to do.
Callers catch ``SplashFlowsError`` (or a subclass) -- never a bare ``Exception``.
"""

from __future__ import annotations


class SplashFlowsError(Exception):
    """Base of every error Splash Flows raises on purpose."""


class ConfigError(SplashFlowsError):
    """The configuration file is missing, unreadable or invalid."""


class LedgerError(SplashFlowsError):
    """The ledger (the system of record) could not be read or written."""


class TierError(SplashFlowsError):
    """A storage tier operation failed. Carries the tier name and the tier-relative path when known."""

    def __init__(self, message: str, *, tier: str | None = None, path: str | None = None) -> None:
        self.tier = tier
        self.path = path
        where = ""
        if path is not None and tier is not None:
            where = f"{tier}:{path}: "
        elif tier is not None:
            where = f"{tier}: "
        super().__init__(f"{where}{message}")


class PathEscapeError(TierError):
    """A path would leave its tier root (``..``, absolute path, or a symlink pointing outside)."""


class SourceMissingError(TierError):
    """The file to copy does not exist (or vanished) on its source tier."""


class TransferError(TierError):
    """Copying a file to a tier failed (I/O error, service refused, task failed)."""


class VerificationError(TierError):
    """A copy exists but does not match the source (checksum or size mismatch)."""


class SourceChangedError(TierError):
    """The source file changed under us (still being written, or overwritten after it was registered)."""


class DeleteError(TierError):
    """Deleting a copy from a tier failed."""


class BatchError(SplashFlowsError):
    """Some items of a batch failed; the others completed. ``failures`` maps an item to its error."""

    def __init__(self, what: str, failures: dict[str, SplashFlowsError], total: int) -> None:
        self.failures = failures
        self.total = total
        lines = [f"{len(failures)} of {total} {what} failed:"]
        lines += [f"  - {err}" for err in failures.values()]
        super().__init__("\n".join(lines))


class CatalogueError(SplashFlowsError):
    """The catalogue (SciCat or the embedded one) refused or could not be reached."""


class CatalogueUnavailable(CatalogueError):
    """The catalogue could not be reached or answered 5xx after retries; the ingest is retried later."""


class PruneRefused(SplashFlowsError):
    """A deletion was refused because a copy the retention policy requires could not be re-verified."""


class OrchestrationError(SplashFlowsError):
    """Prefect (server, deployment, work pool) could not be reached or refused a request."""


class ExportControlledError(TierError):
    """A file matches an export-control pattern in the configuration; it must not leave its tier."""


class ServerUnavailableError(OrchestrationError):
    """The Prefect server did not answer its health check in time. The message names the URL."""
