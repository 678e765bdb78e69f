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
        self.bare_message = message  # without the "tier:path: " prefix, for re-wrapping
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
        self.what = what
        lines = [f"{len(failures)} of {total} {what} failed:"]
        lines += [f"  - {err}" for err in failures.values()]
        super().__init__("\n".join(lines))

    def headline(self) -> str:
        """One line for a log or a run state: how many failed and the first cause (the message lists all)."""
        first = next(iter(self.failures.values()), None)
        more = len(self.failures) - 1
        cause = str(first).splitlines()[0] if first is not None else "no cause recorded"
        return (f"{len(self.failures)} of {self.total} {self.what} failed: {cause}"
                + (f" (and {more} more)" if more > 0 else ""))


def headline(err: BaseException) -> str:
    """One line saying what failed and why: a BatchError's headline, else the first line of the message."""
    if isinstance(err, BatchError):
        return err.headline()
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class MetadataError(SplashFlowsError):
    """A raw file could not be read at all (cannot be opened, is not an image of the expected shape).

    Bad *content* (a truncated sidecar, a garbled header line) is not raised: readers record it in the
    ``errors`` list of what they return, so a dataset is still catalogued with what could be read.
    Carries the path of the file that could not be read.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


class CatalogueError(SplashFlowsError):
    """The catalogue (SciCat or the embedded one) refused or could not be reached."""


class CatalogueUnavailable(CatalogueError):
    """The catalogue could not be reached or answered 5xx after retries; the ingest is retried later."""


class CataloguePermissionError(CatalogueError):
    """The catalogue account lacks a permission the ingest needs (e.g. attaching a dataset's file list). Found
    out before anything is written, so nothing half-made is left in the catalogue; an operator must act."""


class PruneRefused(SplashFlowsError):
    """A deletion was refused because a copy the retention policy requires could not be re-verified."""


class OrchestrationError(SplashFlowsError):
    """Prefect (server, deployment, work pool) could not be reached or refused a request."""


class GlobusTierError(TierError):
    """Globus refused or failed a request. Carries Globus's own ``code``, ``http_status`` and ``request_id``
    (quote the request id to Globus support) when the service answered."""

    def __init__(self, message: str, *, tier: str | None = None, path: str | None = None, code: str | None = None,
                 http_status: int | None = None, request_id: str | None = None) -> None:
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        super().__init__(message, tier=tier, path=path)


class GlobusAuthError(GlobusTierError):
    """The service credentials or consents do not work: wrong, expired or revoked client secret, a token Globus
    rejects, or a missing consent (data_access) for a collection. Retrying cannot help; an operator must act."""


class GlobusRequestRefused(GlobusTierError):
    """Globus answered a request with a refusal (permission denied, collection or path not found, bad request).
    Retrying the same request cannot help."""


class GlobusServiceUnavailable(GlobusTierError, TransferError):
    """Globus (or a collection's endpoint) could not be reached or answered 5xx after the SDK's retries.
    Transient: the work is retried later, and a submission keeps its submission_id so it never runs twice."""


class GlobusTaskError(TransferError):
    """A Globus task ended without doing its job: FAILED, its deadline passed, or it stayed inactive or kept
    faulting without progress and was cancelled. Carries the task id, Globus's status and its event list."""

    def __init__(self, message: str, *, tier: str | None = None, path: str | None = None, task_id: str | None = None,
                 status: str | None = None, reason: str = "failed",
                 events: list[dict[str, object]] | None = None) -> None:
        self.task_id = task_id
        self.status = status
        self.reason = reason  # failed | deadline | inactive | cancelled
        self.events = list(events or [])
        super().__init__(message, tier=tier, path=path)


class FlightCheckFailed(SplashFlowsError):
    """The Globus flight check found something that does not work (each failed check is in the message)."""


class TriggerRejected(OrchestrationError):
    """Prefect answered but refused a trigger for good (e.g. invalid parameters): sending the same request again
    cannot succeed, so the watcher marks its outbox entry failed instead of replaying it forever."""


class OrchestratorBusy(OrchestrationError):
    """Prefect answered that it is busy right now (503: its SQLite database was locked by another write; 429):
    the server is up, so the same request is retried within a fraction of a second, not after a back-off."""


class ExportControlledError(TierError):
    """A file matches an export-control pattern in the configuration; it must not leave its tier."""


class ServerUnavailableError(OrchestrationError):
    """The Prefect server did not answer its health check in time. The message names the URL."""


class NotAFileToMove(TierError):
    """A path the one rule of ``selection.MoveRule`` excludes: an ignored name (temporary, hidden, lock file)
    or a name that is not valid UTF-8."""


class WalkIncomplete(TierError):
    """A walk of a tier could not read part of the tree (a folder that cannot be listed); the rest was walked."""


class ArchiveJobError(TransferError):
    """An archive job at NERSC (htar / hsi in a Slurm job submitted through SFAPI) did not do its job: it ended in
    a state other than COMPLETED, its log shows a failed command (htar exit 70 leaves paths out while saying
    "SUCCESSFUL"), or its listing does not match the manifest. Carries the job id, its Slurm state and log path."""

    def __init__(self, message: str, *, tier: str | None = None, path: str | None = None, job_id: str | None = None,
                 state: str | None = None, log: str | None = None) -> None:
        self.job_id = job_id
        self.state = state
        self.log = log
        super().__init__(message, tier=tier, path=path)


class ArchiveJobPending(ArchiveJobError):
    """The job is still queued or running when this run stopped waiting: the bundle stays ``submitted`` and the
    next run polls the same job (it is never submitted twice)."""


class SfapiAuthError(TierError):
    """NERSC's Superfacility API refused the client's credentials (expired or revoked key, wrong client id, key
    file unreadable or not mode 600). Retrying cannot help: renew the key in Iris and update ``sfapi.key_file``."""


class SfapiUnavailable(TransferError):
    """The Superfacility API or the machine could not be reached or answered 5xx after retries (transient)."""


class AnalysisError(SplashFlowsError):
    """A scan could not be reduced (unreadable frame, missing monitor, bad calibration, failed job). Carries the
    scan key (or file) it is about; the other scans of the batch are reduced regardless."""

    def __init__(self, message: str, *, scan: str | None = None) -> None:
        self.scan = scan
        self.bare_message = message
        super().__init__(f"{scan}: {message}" if scan is not None else message)


class HpcJobError(AnalysisError):
    """An HPC (Slurm) job ended in a state other than COMPLETED, or COMPLETED without its results. Carries the
    job id, its final state and the tail of its log."""

    def __init__(self, message: str, *, job_id: str | None = None, state: str | None = None,
                 log: str = "", scan: str | None = None) -> None:
        self.job_id = job_id
        self.state = state
        self.log = log
        super().__init__(message, scan=scan)
class CredentialError(SplashFlowsError):
    """A credential (SFAPI key, catalogue account ...) is missing, unreadable, malformed, expired or refused; the
    message says which and why. Retrying cannot help: an operator must act."""
