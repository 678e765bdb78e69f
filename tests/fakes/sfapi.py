"""A fake NERSC Superfacility API at the transport level (respx), for the sfapi archive tier.

It behaves as the service and HPSS do, failures included: a submitted job goes PENDING -> RUNNING -> its end
state (COMPLETED unless told otherwise), its log holds what the rendered script would print -- ``htar -tvf``
lines for the members of the job's member list, the ``SPLASH_<STEP>_EXIT`` lines, the packed size -- and it can
be told to drop a member from the listing (htar leaving a long path out with exit 70), change a size, answer
5xx to a submission (after creating the job or not), forget a job, or refuse the token (an expired key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import respx

BASE = "https://api.nersc.gov/api/v1.2"
TOKEN_URL = "https://oidc.nersc.gov/c2id/token"


@dataclass
class FakeJob:
    jobid: str
    name: str
    script: str
    log_path: str
    states: list[str]
    log: str = ""


@dataclass
class FakeSfapi:
    """State of the fake service; ``install(router)`` adds its routes to a respx router."""

    end_state: str = "COMPLETED"
    drop_member: str | None = None        # left out of the listing (and "exit 70" in the log)
    size_delta: dict[str, int] = field(default_factory=dict)
    zero_listing: bool = False
    exit70_only: bool = False             # COMPLETED, full listing, but "exit 70" in the log
    submit_5xx: int = 0                   # answer the next N submissions with 503 ...
    submit_5xx_creates: bool = False      # ... after creating the job anyway (the answer was lost)
    forget_jobs: bool = False             # sacct knows no job
    token_refused: bool = False
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    submissions: int = 0
    archives: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # HPSS path -> (member, size)
    contents: dict[str, bytes] = field(default_factory=dict)  # member -> bytes, for restores
    corrupt_restore: bool = False
    _next: int = 4242
    _tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def install(self, router: respx.MockRouter) -> None:
        router.post(TOKEN_URL).mock(side_effect=self._token)
        router.get(f"{BASE}/status/perlmutter").mock(return_value=httpx.Response(200, json={
            "name": "perlmutter", "full_name": "Perlmutter", "status": "active", "notes": [],
            "description": "", "system_type": "compute"}))
        router.post(f"{BASE}/compute/jobs/perlmutter").mock(side_effect=self._submit)
        router.get(f"{BASE}/compute/jobs/perlmutter").mock(side_effect=self._jobs)
        router.get(url__regex=rf"{re.escape(BASE)}/tasks/.+").mock(side_effect=self._task)
        router.get(url__regex=rf"{re.escape(BASE)}/utilities/ls/perlmutter/.+").mock(side_effect=self._ls)
        router.get(url__regex=rf"{re.escape(BASE)}/utilities/download/perlmutter/.+").mock(side_effect=self._download)
        router.post(f"{BASE}/utilities/command/perlmutter").mock(side_effect=self._command)

    # ------------------------------------------------------------------ routes

    def _auth(self, request: httpx.Request) -> httpx.Response | None:
        if self.token_refused:
            return httpx.Response(401, json={"detail": "token expired"})
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        if self.token_refused:
            return httpx.Response(401, json={"error": "invalid_client", "error_description": "the key has expired"})
        return httpx.Response(200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 600})

    def _submit(self, request: httpx.Request) -> httpx.Response:
        if (refused := self._auth(request)) is not None:
            return refused
        form = dict(httpx.QueryParams(request.content.decode()))
        script = form["job"]
        self.submissions += 1
        if self.submit_5xx > 0:
            self.submit_5xx -= 1
            if self.submit_5xx_creates:
                self._create(script)
            return httpx.Response(503, text="Service Unavailable")
        job = self._create(script)
        task = f"t{len(self._tasks) + 1}"
        self._tasks[task] = {"id": task, "status": "completed",
                             "result": json.dumps({"status": "ok", "jobid": job.jobid})}
        return httpx.Response(200, json={"task_id": task, "status": "OK", "error": None})

    def _create(self, script: str) -> FakeJob:
        name = re.search(r"#SBATCH -J (\S+)", script).group(1)  # type: ignore[union-attr]
        log_path = re.search(r"#SBATCH -o (\S+)", script).group(1)  # type: ignore[union-attr]
        job = FakeJob(str(self._next), name, script, log_path, ["PENDING", "RUNNING", self.end_state])
        self._next += 1
        job.log = self._log_of(job)
        self.jobs[job.jobid] = job
        self.files[log_path] = job.log.encode()
        return job

    def _log_of(self, job: FakeJob) -> str:
        script = job.script
        out = []
        members = []
        if "<<'SPLASH_MEMBERS_EOF'" in script:
            body = script.split("<<'SPLASH_MEMBERS_EOF'\n", 1)[1].split("\nSPLASH_MEMBERS_EOF", 1)[0]
            members = body.splitlines()
        if "htar -cvf" in script:
            out += [f"HTAR: a   {m}" for m in members if m != self.drop_member]
            if self.exit70_only:
                out.append("HTAR: HTAR SUCCESSFUL")
                out.append("###WARNING  htar returned non-zero exit status.  70 = exit code")
                out.append("Exit code 70")
            out.append("SPLASH_HTAR_CREATE_EXIT=0")  # htar's exit is lost when a wrapper forgets pipefail
            out.append("SPLASH_LISTING_BEGIN")
            if not self.zero_listing:
                for m in members:
                    if m == self.drop_member:
                        continue
                    size = 1000 + self.size_delta.get(m, 0)
                    out.append(f"HTAR: -rw-r--r--  alsuser/als {size:>10} 2026-01-10 12:00  {m}")
                out.append("HTAR: -rw-------  alsuser/als        256 2026-01-10 12:00  /tmp/HTAR_CF_CHK_1_2")
            out += ["HTAR: HTAR SUCCESSFUL", "SPLASH_LISTING_END", "SPLASH_HTAR_LIST_EXIT=0",
                    f"SPLASH_PACKED_SIZE={len(members) * 1536 + 10240}"]
        elif "SPLASH_LIST_EXIT" in script:
            path = re.search(r"htar -tvf (\S+) -Hnostage", script).group(1)  # type: ignore[union-attr]
            out.append("SPLASH_LISTING_BEGIN")
            out += [f"HTAR: -rw-r--r--  alsuser/als {size:>10} 2026-01-10 12:00  {m}"
                    for m, size in self.archives.get(path, [])]
            out += ["SPLASH_LISTING_END", "SPLASH_LIST_EXIT=0" if path in self.archives else "SPLASH_LIST_EXIT=72"]
        elif "SPLASH_RESTORE_EXIT" in script:
            work = re.search(r"^cd (\S+)$", script, re.MULTILINE).group(1)  # type: ignore[union-attr]
            members = re.search(r"-Hnostage (.+) \|\|", script).group(1).split()  # type: ignore[union-attr]
            for m in members:
                data = self.contents[m]
                self.files[f"{work}/{m}"] = (data[:-1] + bytes([data[-1] ^ 1])) if self.corrupt_restore else data
            out.append("SPLASH_RESTORE_EXIT=0")
        return "\n".join(out) + "\n"

    def _jobs(self, request: httpx.Request) -> httpx.Response:
        if (refused := self._auth(request)) is not None:
            return refused
        params = request.url.params
        kwargs = params.get_list("kwargs")
        if any(k.startswith("user=") for k in kwargs):  # squeue by user: every job not yet ended
            rows = [{"jobid": j.jobid, "name": j.name, "state": j.states[0]} for j in self.jobs.values()]
            return httpx.Response(200, json={"status": "OK", "output": rows, "error": None})
        jobid = next(k.split("=", 1)[1] for k in kwargs if k.startswith("jobid="))
        job = self.jobs.get(jobid)
        if job is None or self.forget_jobs:
            return httpx.Response(200, json={"status": "OK", "output": [], "error": None})
        state = job.states.pop(0) if len(job.states) > 1 else job.states[0]
        return httpx.Response(200, json={"status": "OK", "output": [{"jobid": jobid, "state": state,
                                                                       "jobname": job.name}], "error": None})

    def _task(self, request: httpx.Request) -> httpx.Response:
        task = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json=self._tasks[task])

    def _ls(self, request: httpx.Request) -> httpx.Response:
        path = "/" + request.url.path.split("/utilities/ls/perlmutter", 1)[1].lstrip("/")
        if path not in self.files:
            return httpx.Response(200, json={"status": "ERROR", "entries": [], "error": f"{path}: not found"})
        return httpx.Response(200, json={"status": "OK", "error": None, "entries": [{
            "perms": "-rw-r--r--", "hardlinks": 1, "user": "alsuser", "group": "als",
            "size": len(self.files[path]), "date": "2026-01-10T12:00:00", "name": path}]})

    def _download(self, request: httpx.Request) -> httpx.Response:
        path = "/" + request.url.path.split("/utilities/download/perlmutter", 1)[1].lstrip("/")
        data = self.files[path]
        if request.url.params.get("binary") in ("true", "True"):
            import base64

            return httpx.Response(200, json={"status": "OK", "file": base64.b64encode(data).decode(),
                                             "is_binary": True, "error": None})
        return httpx.Response(200, json={"status": "OK", "file": data.decode(), "is_binary": False, "error": None})

    def _command(self, request: httpx.Request) -> httpx.Response:
        body = dict(httpx.QueryParams(request.content.decode()))
        self.commands.append(body["executable"])
        for tmp, final in re.findall(r"hsi -q mv (\S+) (\S+)", body["executable"]):
            for job in self.jobs.values():
                if f"htar -cvf {tmp} " in job.script:
                    body_ = job.script.split("<<'SPLASH_MEMBERS_EOF'\n", 1)[1].split("\nSPLASH_MEMBERS_EOF", 1)[0]
                    self.archives[final] = [(m, 1000 + self.size_delta.get(m, 0)) for m in body_.splitlines()]
        task = f"t{len(self._tasks) + 1}"
        self._tasks[task] = {"id": task, "status": "completed",
                             "result": json.dumps({"status": "ok", "output": "", "error": None})}
        return httpx.Response(200, json={"task_id": task, "status": "OK", "error": None})
