"""The archive tier of kind ``sfapi``: HPSS tape at NERSC, written by ``htar``/``hsi`` in Slurm jobs submitted
through the Superfacility API (``sfapi-client``).

One job per bundle, in QOS ``xfer`` (htar runs only there), rendered by ``render_write_script``:

- ``set -euo pipefail``; ``cd`` to the source tier's folder on the NERSC file system; the member list written
  from a here-document (no upload needed); ``htar -cvf <tmp> -Hverify=all -L <list>`` (htar's own CRC and
  compare) into a temporary name beside the final one; then ``htar -tvf <tmp> -Hnostage`` between two marker
  lines, so the listing lands in the job's log. A file archived alone goes with ``hsi cput`` and is listed
  with ``hsi ls -l``. Every command's exit status is echoed as ``SPLASH_<STEP>_EXIT=<n>``.
- Our code, not the exit code, decides: the job must end COMPLETED (``job.complete()`` would return FAILED or
  TIMEOUT without raising, so the state is polled here with back-off and every terminal state but COMPLETED
  is a failure), the log must show no failed step and no ``exit 70`` (htar's "some paths were left out"), and
  the listing must hold exactly the manifest's members with their sizes (``compare_listing``: fewer members,
  a size mismatch or zero matches fail, naming the bundle and the members). Only then is the temporary name
  renamed to the final one (``hsi mv``).
- The job id, script and log path are recorded in the ledger (``record_job``) right after submission, so a
  restarted run polls the same job instead of submitting a second one. A submission answered 5xx is retried
  only after looking for a job of the same (per-attempt unique) name, so a lost answer never starts a second
  job; the library's own retries are bypassed for that one POST.
- Credentials: the top-level ``sfapi:`` section (``splash_flows.sfapi``), the client of a person's or service's
  own NERSC account (HPSS refuses collaboration accounts); the key file must be mode 600. A refused or unusable
  key is ``SfapiAuthError``.

The prune step re-checks an hpss copy by the bundle's listing (``htar -tvf -Hnostage``, cached per bundle
for the life of this object) against the manifest: the member must be listed with the manifest's size; its
checksum is the manifest's, compared by ``htar -Hverify=all`` when written (no tape recall here).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from splash_flows.checksum import new_hasher
from splash_flows.config import SfapiCredentialsConfig, SfapiTierConfig
from splash_flows.errors import (
    ArchiveJobError,
    ArchiveJobPending,
    CredentialError,
    SfapiAuthError,
    SfapiUnavailable,
    SourceMissingError,
    TierError,
    VerificationError,
)
from splash_flows.ledger import archive as la
from splash_flows.ledger.archive import BundleRecord, MemberRecord
from splash_flows.ledger.store import Ledger
from splash_flows.paths import safe_join
from splash_flows.tiers.archive import ArchiveTierBase, BundleProgress, BundleWritten, ListedMember, compare_listing
from splash_flows.tiers.base import FileStat, Tier

log = logging.getLogger(__name__)

ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"})
LIST_BEGIN, LIST_END = "SPLASH_LISTING_BEGIN", "SPLASH_LISTING_END"
_EOF = "SPLASH_MEMBERS_EOF"
_STEP_EXIT = re.compile(r"^SPLASH_([A-Z_]+)_EXIT=(\d+)\s*$", re.MULTILINE)
_EXIT_70 = re.compile(r"\bexit(?:ed)?(?:\s+with)?(?:\s+(?:code|status))?\s*[=:]?\s*70\b", re.IGNORECASE)
_HTAR_LINE = re.compile(
    r"^HTAR: ([-dlcbps])[-rwxsStT]{9}\s+\S+\s+(\d+)\s+\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}(?::\d{2})?\s+(.+)$")
_SIZE_LINE = re.compile(r"^SPLASH_PACKED_SIZE=(\d+)\s*$", re.MULTILINE)
_NOT_FOUND = re.compile(r"not found", re.IGNORECASE)


def parse_htar_listing(text: str) -> list[ListedMember]:
    """Regular-file members of an ``htar -tvf`` listing (htar's own consistency file left out)."""
    out = []
    for line in text.splitlines():
        m = _HTAR_LINE.match(line.rstrip("\n"))
        if m and m.group(1) == "-":
            name = m.group(3).strip()
            if not name.rsplit("/", 1)[-1].startswith("HTAR_CF_CHK_"):
                out.append(ListedMember(name, int(m.group(2))))
    return out


def log_section(text: str, begin: str = LIST_BEGIN, end: str = LIST_END) -> str | None:
    """The lines between the two markers of a job log (None when the markers are not both there)."""
    if begin not in text or end not in text.split(begin, 1)[1]:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


def log_failures(text: str) -> list[str]:
    """What in a job log says a step failed: a non-zero ``SPLASH_<STEP>_EXIT``, ``exit 70``, ``HTAR FAILED``."""
    out = [f"{step.lower()} exited {code}" for step, code in _STEP_EXIT.findall(text) if code != "0"]
    if _EXIT_70.search(text) and not any(o.endswith(" 70") for o in out):
        out.append("the log reports exit 70 (htar left paths out of the archive)")
    if "HTAR FAILED" in text:
        out.append("htar reported HTAR FAILED")
    return out


class SfapiArchiveTier(ArchiveTierBase):
    """HPSS at NERSC through SFAPI (module doc)."""

    kind = "sfapi"

    def __init__(self, name: str, cfg: SfapiTierConfig, checksum_alg: str, *, ledger: Ledger | None,
                 credentials: SfapiCredentialsConfig | None = None, client_factory: Callable[[], Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
                 submit_attempts: int = 4) -> None:
        self.name = name
        self.cfg = cfg
        self.credentials = credentials
        self.checksum_alg = checksum_alg
        self.ledger = ledger
        self._client_factory = client_factory or self._default_client
        self._sleep = sleep
        self._monotonic = monotonic
        self._submit_attempts = submit_attempts
        self._compute_obj: Any = None
        self._listings: dict[str, list[ListedMember]] = {}

    def __repr__(self) -> str:
        return f"SfapiArchiveTier({self.name!r}, {self.cfg.root!r}, account={self.cfg.account!r})"

    # ------------------------------------------------------------------------------------------ client

    def _default_client(self) -> Any:
        """The deployment's one SFAPI client (``splash_flows.sfapi``), from the top-level ``sfapi:`` section."""
        from splash_flows import sfapi

        if self.credentials is None:
            raise SfapiAuthError("no SFAPI credentials: set the top-level sfapi: section (key_file, expires)",
                                 tier=self.name)
        try:
            return sfapi.build_client(self.credentials)
        except CredentialError as err:
            raise SfapiAuthError(f"{err}; {sfapi.RENEW}", tier=self.name) from None

    def _compute(self) -> Any:
        if self._compute_obj is None:
            client = self._client_factory()
            self._compute_obj = self._call("reach the machine", lambda: client.compute(self.cfg.machine))
        return self._compute_obj

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one SFAPI call, turning the library's and httpx's errors into ours."""
        from authlib.integrations.base_client.errors import OAuthError
        from sfapi_client.exceptions import ClientKeyError, SfApiError

        try:
            return fn()
        except (OAuthError, ClientKeyError) as err:
            key = self.credentials.key_file if self.credentials else "(none)"
            raise SfapiAuthError(f"SFAPI refused the credentials in {key} (account {self.cfg.account}) while "
                                 f"trying to {what}: {_text(err)}; renew the key in Iris and update "
                                 "sfapi.key_file", tier=self.name) from None
        except httpx.HTTPStatusError as err:
            code = err.response.status_code
            if code in (401, 403):
                raise SfapiAuthError(f"SFAPI answered {code} to {what} (account {self.cfg.account}): "
                                     f"{err.response.text[:300]}", tier=self.name) from None
            if code >= 500 or code == 429:
                raise SfapiUnavailable(f"SFAPI answered {code} to {what}", tier=self.name) from None
            raise TierError(f"SFAPI refused to {what}: HTTP {code}: {err.response.text[:300]}",
                            tier=self.name) from None
        except httpx.TransportError as err:
            raise SfapiUnavailable(f"SFAPI unreachable while trying to {what}: {err}", tier=self.name) from None
        except SfApiError as err:
            raise TierError(f"SFAPI could not {what}: {_text(err)}", tier=self.name) from None
        except Exception as err:
            if type(err).__name__ == "RetryError":
                raise SfapiUnavailable(f"SFAPI kept failing to {what} after retries", tier=self.name) from None
            raise

    # ------------------------------------------------------------------------------------------ names

    def final_path(self, name: str) -> str:
        return f"{self.cfg.root}/{name}"

    def bundle_url(self, name: str) -> str:
        return f"hpss:{self.final_path(name)}"

    def url(self, path: str) -> str:
        found = self._member(path)
        if found is None:
            return f"hpss:{self.cfg.root} (not archived) {path}"
        return self.bundle_url(found[0].name) + (f":{found[1].member}" if found[0].kind == "tar" else "")

    # ------------------------------------------------------------------------------------------ scripts

    def _header(self, job_name: str, log_path: str) -> list[str]:
        return ["#!/bin/bash", f"#SBATCH -q {self.cfg.qos}", f"#SBATCH -C {self.cfg.constraint}",
                f"#SBATCH --time={self.cfg.time_limit}", f"#SBATCH -J {job_name}",
                f"#SBATCH -o {log_path}", f"#SBATCH -e {log_path}", "set -euo pipefail"]

    def render_write_script(self, bundle: BundleRecord, job_name: str, tmp: str, log_path: str) -> str:
        """The job that writes ``bundle`` under ``tmp`` and lists it (module doc)."""
        lines = self._header(job_name, log_path)
        folder = tmp.rsplit("/", 1)[0]
        lines += [f"cd {shlex.quote(self.cfg.source_root)}", f"hsi -q mkdir -p {shlex.quote(folder)}"]
        if bundle.kind == "file":
            (m,) = bundle.members
            q = shlex.quote
            lines += ["rc=0", f"hsi -q \"cput -p {q(m.member)} : {q(tmp)}\" || rc=$?", 'echo "SPLASH_CPUT_EXIT=$rc"',
                      '[ "$rc" -eq 0 ] || exit "$rc"', f"echo {LIST_BEGIN}", "rc=0",
                      f"hsi -q \"ls -l {q(tmp)}\" 2>&1 || rc=$?", f"echo {LIST_END}", 'echo "SPLASH_LS_EXIT=$rc"',
                      '[ "$rc" -eq 0 ] || exit "$rc"']
            return "\n".join(lines) + "\n"
        for m in bundle.members:
            if "\n" in m.member or m.member == _EOF:
                raise TierError(f"bundle {bundle.name}: member {m.member!r} cannot be named in a member list",
                                tier=self.name)
        lines += ['LIST="$(mktemp)"', "trap 'rm -f \"$LIST\"' EXIT", f"cat > \"$LIST\" <<'{_EOF}'"]
        lines += [m.member for m in bundle.members] + [_EOF]
        qt = shlex.quote(tmp)
        lines += ["rc=0", f"htar -cvf {qt} -Hverify=all -L \"$LIST\" || rc=$?", 'echo "SPLASH_HTAR_CREATE_EXIT=$rc"',
                  '[ "$rc" -eq 0 ] || exit "$rc"', f"echo {LIST_BEGIN}", "rc=0",
                  f"htar -tvf {qt} -Hnostage || rc=$?", f"echo {LIST_END}", 'echo "SPLASH_HTAR_LIST_EXIT=$rc"',
                  '[ "$rc" -eq 0 ] || exit "$rc"',
                  f"echo \"SPLASH_PACKED_SIZE=$(hsi -q ls -l {qt} 2>&1 | awk 'NF>=5 {{print $5; exit}}')\""]
        return "\n".join(lines) + "\n"

    def render_list_script(self, bundle: BundleRecord, job_name: str, log_path: str) -> str:
        """A job that only lists a verified bundle (the prune re-check), recalling nothing from tape."""
        q = shlex.quote(self.final_path(bundle.name))
        cmd = f"htar -tvf {q} -Hnostage" if bundle.kind == "tar" else f"hsi -q \"ls -l {q}\" 2>&1"
        lines = self._header(job_name, log_path)
        lines += [f"echo {LIST_BEGIN}", "rc=0", f"{cmd} || rc=$?", f"echo {LIST_END}", 'echo "SPLASH_LIST_EXIT=$rc"',
                  '[ "$rc" -eq 0 ] || exit "$rc"']
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------------------------ jobs

    def _submit(self, script: str, job_name: str) -> str:
        """Submit ``script``; on a transient failure, adopt a job of the same name if one exists, else retry."""
        compute = self._compute()
        delay = self.cfg.poll_initial_s
        last: Exception | None = None
        for attempt in range(1, self._submit_attempts + 1):
            try:
                return str(self._call(f"submit job {job_name}", lambda: self._post_job(compute, script)))
            except SfapiUnavailable as err:
                last = err
                existing = self._find_job(compute, job_name)
                if existing is not None:
                    log.info("job %s was created by a submission whose answer was lost: %s", job_name, existing)
                    return existing
                log.warning("submitting %s failed (%s), attempt %d of %d", job_name, err, attempt,
                            self._submit_attempts)
                self._sleep(delay)
                delay = min(delay * self.cfg.poll_backoff, self.cfg.poll_max_s)
        raise SfapiUnavailable(f"could not submit job {job_name}: {last}", tier=self.name)

    def _post_job(self, compute: Any, script: str) -> str:
        client = compute.client
        post = getattr(type(client).post, "__wrapped__", type(client).post)  # one POST: no blind library retry
        r = post(client, f"compute/jobs/{compute.name}", {"job": script, "isPath": False})
        answer = r.json()
        if str(answer.get("status", "")).lower() == "error":
            raise TierError(f"SFAPI refused the job: {answer.get('error')}", tier=self.name)
        result = self._task_result(compute, str(answer["task_id"]))
        jobid = result.get("jobid")
        if str(result.get("status", "")).lower() == "error" or jobid is None:
            raise TierError(f"SFAPI task {answer['task_id']} did not submit the job: {result.get('error')}",
                            tier=self.name)
        return str(jobid)

    def _task_result(self, compute: Any, task_id: str) -> dict[str, Any]:
        while True:
            task = compute.client.get(f"tasks/{task_id}").json()
            status = str(task.get("status") or "").lower()
            if status in ("completed", "failed", "cancelled"):
                raw = task.get("result")
                result = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
                if status != "completed":
                    raise TierError(f"SFAPI task {task_id} {status}: {result}", tier=self.name)
                return dict(result)
            self._sleep(1.0)

    def _find_job(self, compute: Any, job_name: str) -> str | None:
        from sfapi_client.jobs import JobCommand

        try:
            jobs = self._call("list the account's jobs",
                              lambda: compute.jobs(user=self.cfg.account, command=JobCommand.squeue))
        except SfapiUnavailable:
            return None
        for job in jobs:
            if getattr(job, "name", None) == job_name:
                return str(job.jobid)
        return None

    def _job_state(self, compute: Any, job_id: str) -> str | None:
        """The job's Slurm state from sacct, or None when NERSC does not know the job."""
        from sfapi_client.exceptions import SfApiError
        from sfapi_client.jobs import JobCommand

        try:
            job = compute.job(job_id, command=JobCommand.sacct)
        except SfApiError as err:
            if _NOT_FOUND.search(_text(err)):
                return None
            raise
        state = job.state
        return str(getattr(state, "value", state) or "UNKNOWN").split()[0]

    def wait(self, job_id: str, *, what: str, log_path: str | None) -> None:
        """Poll with back-off until the job ends; every end but COMPLETED raises ArchiveJobError."""
        compute = self._compute()
        delay, start, missing = self.cfg.poll_initial_s, self._monotonic(), 0
        while True:
            state = self._call(f"read the state of job {job_id}", lambda: self._job_state(compute, job_id))
            if state is None:
                missing += 1
                if missing >= 3:
                    raise ArchiveJobError(f"{what}: job {job_id} not found at NERSC (sacct knows no such job)",
                                          tier=self.name, job_id=job_id, state=None, log=log_path)
            elif state == "COMPLETED":
                return
            elif state not in ACTIVE_STATES:
                tail = self._log_tail(log_path)
                raise ArchiveJobError(f"{what}: job {job_id} ended {state} (log {log_path}){tail}", tier=self.name,
                                      job_id=job_id, state=state, log=log_path)
            if self._monotonic() - start > self.cfg.job_timeout_s:
                raise ArchiveJobPending(f"{what}: job {job_id} still {state} after {self.cfg.job_timeout_s:.0f} s; "
                                        f"the next run polls it again", tier=self.name, job_id=job_id,
                                        state=state, log=log_path)
            self._sleep(delay)
            delay = min(delay * self.cfg.poll_backoff, self.cfg.poll_max_s)

    def read_file(self, path: str, *, binary: bool = False) -> Any:
        """A file on the NERSC file systems, through SFAPI (text, or bytes with ``binary``)."""
        compute = self._compute()

        def fetch() -> Any:
            (remote,) = compute.ls(path)
            return remote.download(binary=binary).read()

        return self._call(f"read {path}", fetch)

    def _log_tail(self, log_path: str | None) -> str:
        if not log_path:
            return ""
        try:
            text = str(self.read_file(log_path))
        except TierError:
            return ""
        return "; log ends: " + " | ".join(text.strip().splitlines()[-5:])

    def _run(self, command: str, what: str) -> str:
        compute = self._compute()
        return str(self._call(what, lambda: compute.run(command)) or "")

    # ------------------------------------------------------------------------------------------ bundles

    def write_bundle(self, source: Tier, bundle: BundleRecord,
                     progress: BundleProgress | None = None) -> BundleWritten:
        if self.ledger is None:
            raise TierError("the sfapi archive tier needs the ledger to record its jobs", tier=self.name)
        final = self.final_path(bundle.name)
        if bundle.state == "submitted" and bundle.job_id and bundle.job_script:
            job_id, log_path = bundle.job_id, bundle.job_log or ""
            tmp = _tmp_of(bundle.job_script, final)
        else:
            job_name = f"splash-{bundle.id}-a{bundle.attempts + 1}"
            tmp = f"{final}.part-{job_name}"
            log_path = f"{self.cfg.log_dir}/{job_name}.log"
            script = self.render_write_script(bundle, job_name, tmp, log_path)
            job_id = self._submit(script, job_name)
            la.record_job(self.ledger, bundle.id, job_id=job_id, script=script, log=log_path)
        what = f"bundle {bundle.name}"
        self.wait(job_id, what=what, log_path=log_path)
        text = str(self.read_file(log_path))
        failures = log_failures(text)
        if failures:
            raise ArchiveJobError(f"{what}: job {job_id} COMPLETED but its log says: {'; '.join(failures)} (log "
                                  f"{log_path})", tier=self.name, job_id=job_id, state="COMPLETED", log=log_path)
        listing = self._listing_from_log(bundle, text, job_id, log_path, tmp)
        try:
            compare_listing(bundle, listing, tier=self.name)
        except VerificationError as err:
            raise ArchiveJobError(f"{err.bare_message} (job {job_id}, log {log_path})", tier=self.name,
                                  job_id=job_id, state="COMPLETED", log=log_path) from None
        moves = [f"hsi -q mv {shlex.quote(tmp)} {shlex.quote(final)}"]
        if bundle.kind == "tar":
            moves.append(f"hsi -q mv {shlex.quote(tmp + '.idx')} {shlex.quote(final + '.idx')}")
        self._run(" && ".join(moves), f"rename {tmp} to {final}")
        size = _SIZE_LINE.search(text)
        packed = int(size.group(1)) if size else (bundle.packed_size or bundle.size)
        if progress:
            progress(bundle.name, bundle.size)
        return BundleWritten(packed, self.bundle_url(bundle.name), {
            "verified": "job COMPLETED; htar -Hverify=all; htar -tvf listing == manifest (names and sizes)",
            "job_id": job_id, "job_log": log_path, "listed_members": len(listing)})

    def _listing_from_log(self, bundle: BundleRecord, text: str, job_id: str, log_path: str,
                          listed_as: str) -> list[ListedMember]:
        section = log_section(text)
        if section is None:
            raise ArchiveJobError(f"bundle {bundle.name}: job {job_id} log has no listing (log {log_path})",
                                  tier=self.name, job_id=job_id, state="COMPLETED", log=log_path)
        if bundle.kind == "file":
            (m,) = bundle.members
            for line in section.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[-1] == listed_as and parts[4].isdigit():
                    return [ListedMember(m.member, int(parts[4]))]
            return []
        return parse_htar_listing(section)

    def listing(self, bundle: BundleRecord) -> list[ListedMember]:
        """The listing of a verified bundle from a listing job (cached per bundle for this object's life)."""
        if bundle.name in self._listings:
            return self._listings[bundle.name]
        job_name = f"splash-list-{bundle.id}-{int(time.time())}"
        log_path = f"{self.cfg.log_dir}/{job_name}.log"
        job_id = self._submit(self.render_list_script(bundle, job_name, log_path), job_name)
        self.wait(job_id, what=f"listing bundle {bundle.name}", log_path=log_path)
        text = str(self.read_file(log_path))
        failures = log_failures(text)
        if failures:
            raise ArchiveJobError(f"listing bundle {bundle.name}: {'; '.join(failures)} (job {job_id}, log "
                                  f"{log_path})", tier=self.name, job_id=job_id, state="COMPLETED", log=log_path)
        listing = self._listing_from_log(bundle, text, job_id, log_path, self.final_path(bundle.name))
        self._listings[bundle.name] = listing
        return listing

    # ------------------------------------------------------------------------------------------ Tier

    def stat(self, path: str) -> FileStat | None:
        """The member's size as the bundle's listing shows it (None: not in a verified bundle or not listed)."""
        found = self._member(path)
        if found is None:
            return None
        bundle, member = found
        sizes = {m.name: m.size for m in self.listing(bundle)}
        if member.member not in sizes:
            return None
        return FileStat(path, sizes[member.member], 0.0)

    def checksum(self, path: str) -> str:
        """The manifest's checksum of a member the listing shows with the manifest's size (no tape recall)."""
        found = self._member(path)
        if found is None:
            raise SourceMissingError("not in any verified bundle", tier=self.name, path=path)
        st = self.stat(path)
        if st is None:
            raise SourceMissingError(f"not listed in bundle {found[0].name}", tier=self.name, path=path)
        if st.size != found[1].size:
            raise VerificationError(f"listed with {st.size} bytes, manifest says {found[1].size}", tier=self.name,
                                    path=path)
        return found[1].checksum

    def restore(self, bundle: BundleRecord, members: Sequence[MemberRecord], dest: Path) -> list[Path]:
        """``htar -xvf`` (or ``hsi get``) into a folder under ``log_dir`` in a job, then each file downloaded
        through SFAPI and verified against the ledger's checksum here (suited to single files and drills)."""
        job_name = f"splash-restore-{bundle.id}-{int(time.time())}"
        log_path = f"{self.cfg.log_dir}/{job_name}.log"
        work = f"{self.cfg.log_dir}/{job_name}"
        q = shlex.quote
        lines = [*self._header(job_name, log_path), f"mkdir -p {q(work)}", f"cd {q(work)}", "rc=0"]
        if bundle.kind == "tar":
            lines.append(f"htar -xvf {q(self.final_path(bundle.name))} -Hnostage "
                         + " ".join(q(m.member) for m in members) + " || rc=$?")
        else:
            lines.append(f"hsi -q \"get {q(members[0].member)} : {q(self.final_path(bundle.name))}\" || rc=$?")
        lines += ['echo "SPLASH_RESTORE_EXIT=$rc"', '[ "$rc" -eq 0 ] || exit "$rc"']
        job_id = self._submit("\n".join(lines) + "\n", job_name)
        self.wait(job_id, what=f"restore from bundle {bundle.name}", log_path=log_path)
        failures = log_failures(str(self.read_file(log_path)))
        if failures:
            raise ArchiveJobError(f"restore from bundle {bundle.name}: {'; '.join(failures)} (log {log_path})",
                                  tier=self.name, job_id=job_id, state="COMPLETED", log=log_path)
        out = []
        for m in members:
            data = self.read_file(f"{work}/{m.member}", binary=True)
            hasher = new_hasher(self.checksum_alg)
            hasher.update(data)
            if hasher.hexdigest() != m.checksum:
                raise VerificationError(f"restored from bundle {bundle.name}: {self.checksum_alg} "
                                        f"{hasher.hexdigest()} != the ledger's {m.checksum}; not restored",
                                        tier=self.name, path=m.source_path)
            target = safe_join(dest, m.source_path, tier="restore")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.restore.part")
            tmp.write_bytes(data)
            tmp.rename(target)
            out.append(target)
        return out


def _tmp_of(script: str, final: str) -> str:
    """The temporary name a recorded write script used (so a resumed run renames the right file)."""
    m = re.search(r"SBATCH -J (\S+)", script)
    return f"{final}.part-{m.group(1)}" if m else f"{final}.part"


def _text(err: BaseException) -> str:
    return str(getattr(err, "message", None) or getattr(err, "description", None) or err)
