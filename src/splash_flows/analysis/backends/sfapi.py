"""The ``sfapi`` backend: reduce a batch in one Slurm job at NERSC, through the Superfacility API (seed flow 3).

1. The batch's frames go data733 -> the HPC tier (``analysis.sfapi.hpc_tier``) with the project's verified tier
   copy (Globus in production, a checksum-verified local copy here), recorded in the ledger like any copy.
2. One Slurm job per batch (``sbatch`` through SFAPI) runs the same entry point as the local backend:
   ``srun [podman-hpc run IMAGE] python -m splash_flows.analysis.job MANIFEST``, the manifest written by the
   script itself (a here-document), so nothing has to be uploaded first.
3. The job is polled until Slurm reports a terminal state. Every terminal state but COMPLETED (FAILED, TIMEOUT,
   CANCELLED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, DEADLINE, PREEMPTED ...) is a failure carrying the tail of the
   job's log. COMPLETED is not trusted either: the results file the job writes must exist and list each scan.
4. Each scan's outputs come back HPC tier -> data733 with the verified copy, against the checksums the job
   computed; an output that does not verify is that scan's error.

``sfapi_client`` polls with its own sleeps and its ``complete()`` waits only for the states it knows (not
NODE_FAIL, BOOT_FAIL or DEADLINE), so this module polls ``job.update()`` itself, with an injectable sleep. The
client is the deployment's one SFAPI client (``splash_flows.sfapi.build_client`` over the top-level ``sfapi:``
credentials), shared with the HPSS tier and the preflight.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splash_flows.analysis.backends.base import ProgressFn
from splash_flows.analysis.job import MANIFEST_VERSION, ScanJob, ScanOutcome
from splash_flows.analysis.reduce import Settings
from splash_flows.config import LocalTierConfig, SfapiConfig, SfapiCredentialsConfig
from splash_flows.errors import AnalysisError, ConfigError, CredentialError, HpcJobError, SplashFlowsError
from splash_flows.tiers.base import CopyItem, CopyResult

if TYPE_CHECKING:
    from sfapi_client import Client

    from splash_flows.context import Context

log = logging.getLogger(__name__)

#: Slurm states in which a job is still on its way; any other state is terminal.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                           "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED"})
COMPLETED = "COMPLETED"
#: Folder (on the HPC tier) holding one sub-folder per batch: manifest, results file and Slurm log.
WORK_FOLDER = ".splash-analysis"
LOG_TAIL = 4000


def build_sfapi_client(creds: SfapiCredentialsConfig | None) -> Client:
    """The deployment's SFAPI client for a reduction job; ConfigError when no credentials are configured or
    the key is unusable (the analysis of this batch fails, the raw data's move is not affected)."""
    from splash_flows import sfapi

    if creds is None:
        raise ConfigError("analysis.backend sfapi needs the top-level sfapi: section (key_file, expires)")
    try:
        return sfapi.build_client(creds)
    except CredentialError as err:
        raise ConfigError(f"{err}; {sfapi.RENEW}") from None


def job_script(cfg: SfapiConfig, *, work_dir: str, manifest: dict[str, Any]) -> str:
    """The Slurm batch script of one analysis batch (the manifest inline, so nothing is uploaded first)."""
    manifest_path = posixpath.join(work_dir, "manifest.json")
    results_path = posixpath.join(work_dir, "results.json")
    entry = ["python", "-m", "splash_flows.analysis.job", manifest_path, "--results", results_path]
    if cfg.image:
        root = str(manifest["root"])
        command = ["podman-hpc", "run", "--rm", "--volume", f"{root}:{root}", cfg.image, *entry]
    else:
        command = entry
    text = json.dumps(manifest, indent=1)
    if "SPLASH_MANIFEST_END" in text:
        raise AnalysisError("the manifest contains the here-document terminator")
    lines = [
        "#!/bin/bash",
        f"#SBATCH -q {cfg.qos}",
        f"#SBATCH -A {cfg.account}",
        f"#SBATCH -C {cfg.constraint}",
        "#SBATCH -N 1",
        f"#SBATCH --time={cfg.time_limit}",
        "#SBATCH --job-name=splash-analysis",
        f"#SBATCH --output={posixpath.join(work_dir, 'slurm-%j.log')}",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(work_dir)}",
        f"cat > {shlex.quote(manifest_path)} <<'SPLASH_MANIFEST_END'",
        text,
        "SPLASH_MANIFEST_END",
    ]
    if cfg.env_setup and not cfg.image:
        lines.append(cfg.env_setup)
    lines.append("srun " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines) + "\n"


class SfapiBackend:
    """Reduce batches in Slurm jobs at NERSC (see module doc)."""

    name = "sfapi"

    def __init__(self, ctx: Context, cfg: SfapiConfig, *,
                 client_factory: Callable[[SfapiCredentialsConfig | None], Client] = build_sfapi_client,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self._client_factory = client_factory
        self._sleep = sleep
        self._monotonic = monotonic

    @classmethod
    def from_context(cls, ctx: Context) -> SfapiBackend:
        """The backend as configured in ``analysis.sfapi``."""
        return cls(ctx, ctx.config.analysis.sfapi)

    # ------------------------------------------------------------------ paths on the HPC tier

    @property
    def hpc_tier(self) -> str:
        return self.cfg.hpc_tier

    def _hpc_root(self) -> str:
        """The HPC tier's root as the compute nodes see it."""
        if self.cfg.hpc_root:
            return self.cfg.hpc_root.rstrip("/")
        tier_cfg = self.ctx.config.tier(self.hpc_tier)
        if isinstance(tier_cfg, LocalTierConfig):
            return str(tier_cfg.root)
        raise ConfigError("analysis.sfapi.hpc_root is required when the hpc tier is not a local folder")

    def _local(self, relpath: str) -> Path | None:
        """Where a file of the HPC tier is on this machine, if the tier is mounted here."""
        tier_cfg = self.ctx.config.tier(self.hpc_tier)
        root = tier_cfg.root if isinstance(tier_cfg, LocalTierConfig) else getattr(tier_cfg, "local_root", None)
        return Path(root) / relpath if root is not None else None

    def _read(self, client: Client, relpath: str) -> str | None:
        """The text of a file on the HPC tier (through the mount, else SFAPI's download), None if absent."""
        local = self._local(relpath)
        if local is not None:
            try:
                return local.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise AnalysisError(f"cannot read {relpath} on {self.hpc_tier}: {exc.strerror or exc}") from exc
        remote = posixpath.join(self._hpc_root(), relpath)
        try:
            found = client.compute(self.cfg.machine).ls(remote)
            return str(found[0].download().read()) if found else None
        except _client_errors():
            return None

    # ------------------------------------------------------------------ the batch

    def run(self, jobs: Sequence[ScanJob], settings: Settings, progress: ProgressFn | None = None) -> list[ScanOutcome]:
        """Copy the frames to the HPC tier, run one Slurm job, check it, copy the results back (verified)."""
        if not jobs:
            return []
        self._stage_inputs(jobs)
        batch = f"{WORK_FOLDER}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        root = self._hpc_root()
        manifest = {"version": MANIFEST_VERSION, "root": root, "settings": settings.as_dict(),
                    "scans": [asdict(j) for j in jobs]}
        script = job_script(self.cfg, work_dir=posixpath.join(root, batch), manifest=manifest)
        client = self._client_factory(self.ctx.config.sfapi)
        try:
            job_id, state = self._submit_and_wait(client, script)
            if state != COMPLETED:
                tail = self._log_tail(client, batch, job_id)
                raise HpcJobError(f"Slurm job {job_id} ended {state}, not COMPLETED; its log ends:\n{tail}",
                                  job_id=job_id, state=state, log=tail)
            text = self._read(client, f"{batch}/results.json")
            if text is None:
                tail = self._log_tail(client, batch, job_id)
                raise HpcJobError(f"Slurm job {job_id} COMPLETED but wrote no results file ({batch}/results.json); "
                                  f"its log ends:\n{tail}", job_id=job_id, state=state, log=tail)
            outcomes = self._parse_results(text, jobs, job_id)
        finally:
            close = getattr(client, "close", None)
            if callable(close):
                close()
        outcomes = self._fetch_outputs(outcomes)
        if progress is not None:
            for outcome in outcomes:
                progress(outcome)
        return outcomes

    def _stage_inputs(self, jobs: Sequence[ScanJob]) -> None:
        """The verified copy of every frame and sidecar of the batch, data733 -> HPC tier."""
        from splash_flows.services.move import move_files

        paths = sorted({p for job in jobs for p in job.files.values()})
        report = move_files(self.ctx, paths, targets=[self.hpc_tier])
        failures = report.failures()
        if failures:
            first = "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:3])
            raise AnalysisError(f"{len(failures)} frame(s) not copied to {self.hpc_tier}: {first}")

    def _submit_and_wait(self, client: Client, script: str) -> tuple[str, str]:
        """Submit the script; poll until Slurm reports a terminal state. Returns (job id, state)."""
        errors = _client_errors()
        try:
            compute = client.compute(self.cfg.machine)
            job = compute.submit_job(script)
        except errors as exc:
            raise HpcJobError(f"SFAPI refused or failed the job submission on {self.cfg.machine}: "
                              f"{type(exc).__name__}: {exc}") from exc
        job_id = str(job.jobid)
        log.info("analysis batch submitted as Slurm job %s on %s", job_id, self.cfg.machine)
        deadline = self._monotonic() + self.cfg.job_timeout_s
        while True:
            try:
                job.update()
            except errors as exc:
                raise HpcJobError(f"cannot read the state of Slurm job {job_id}: {type(exc).__name__}: {exc}",
                                  job_id=job_id) from exc
            state = _state_name(job.state)
            if state and state not in ACTIVE_STATES:
                return job_id, state
            if self._monotonic() >= deadline:
                raise HpcJobError(f"Slurm job {job_id} still {state or 'unknown'} after {self.cfg.job_timeout_s:.0f} s",
                                  job_id=job_id, state=state)
            self._sleep(self.cfg.poll_interval_s)

    def _log_tail(self, client: Client, batch: str, job_id: str) -> str:
        try:
            text = self._read(client, f"{batch}/slurm-{job_id}.log")
        except SplashFlowsError as exc:
            return f"(log unreadable: {exc})"
        if text is None:
            return f"(no log at {batch}/slurm-{job_id}.log)"
        return text[-LOG_TAIL:]

    def _parse_results(self, text: str, jobs: Sequence[ScanJob], job_id: str) -> list[ScanOutcome]:
        try:
            data = json.loads(text)
            by_key = {o["scan_key"]: ScanOutcome.from_dict(o) for o in data["scans"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise HpcJobError(f"Slurm job {job_id}: unreadable results file: {exc}", job_id=job_id,
                              state=COMPLETED) from exc
        outcomes = []
        for job in jobs:
            outcome = by_key.get(job.scan_key)
            if outcome is None:
                outcome = ScanOutcome(job.scan_key, False, error=f"Slurm job {job_id} reported nothing for it")
            outcomes.append(outcome)
        return outcomes

    def _fetch_outputs(self, outcomes: list[ScanOutcome]) -> list[ScanOutcome]:
        """Copy each scan's outputs HPC tier -> data733, verified against the job's checksums."""
        source = self.ctx.tier(self.hpc_tier)
        target = self.ctx.tier(self.ctx.config.move.source)
        for outcome in outcomes:
            if not outcome.ok:
                continue
            items = [CopyItem(o.path, o.checksum, o.size) for o in outcome.outputs]
            try:
                results = target.copy_from(source, items)
            except SplashFlowsError as exc:
                outcome.ok, outcome.error = False, f"results not copied back from {self.hpc_tier}: {exc}"
                continue
            bad = [f"{item.path}: {res}" for item, res in zip(items, results, strict=True)
                   if not isinstance(res, CopyResult) or res.checksum != item.checksum]
            if bad:
                outcome.ok = False
                outcome.error = f"results not verified back on {self.ctx.config.move.source}: " + "; ".join(bad)
        return outcomes


def _client_errors() -> tuple[type[BaseException], ...]:
    """What the SFAPI client raises: its own error, httpx's (HTTP status, network), tenacity's give-up."""
    import httpx
    import tenacity
    from sfapi_client.exceptions import SfApiError

    return (SfApiError, httpx.HTTPError, tenacity.RetryError, OSError, ValueError)


def _state_name(state: Any) -> str:
    """``JobState.COMPLETED`` / ``"COMPLETED"`` / ``"CANCELLED by 123"`` -> the Slurm state word."""
    value = getattr(state, "value", state)
    return str(value).split()[0].upper() if value else ""
