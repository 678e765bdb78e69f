"""Setting up a Prefect server for the 7.3.3 flows: wait for it, create the work pools, deploy ``prefect.yaml``.

The one implementation behind ``splash-flows init-work-pools``, ``flows/bl733/init_work_pools.py`` and
``splash-flows up``. Deploying runs ``prefect --no-prompt deploy`` in the folder holding ``prefect.yaml`` --
exactly what an operator following the seed runs by hand -- so the file stays the single definition of the
deployments. Running it twice changes nothing: existing pools keep their settings except a concurrency limit the
flows need (``limit_to_set``), deployments are updated in place (same ids, same schedules by slug).
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from splash_flows.errors import ConfigError, OrchestrationError, ServerUnavailableError
from splash_flows.flows.launcher import launcher_command
from splash_flows.flows.zombies import (
    AUTOMATION_NAME,
    automation_status,
    automation_summary,
    ensure_automation,
    heartbeat_env,
)
from splash_flows.processes import child_env, python_argv

BL733_DIR = Path(__file__).resolve().with_name("bl733")
PREFECT_YAML = BL733_DIR / "prefect.yaml"
DEFAULT_POOL_CONCURRENCY = 4
# Pools whose flows must never overlap with themselves, whatever --concurrency says.
SERIAL_POOLS = frozenset({"prune_733_pool", "archive_733_pool"})


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as ``prefect.yaml`` declares it."""

    name: str
    entrypoint: str
    pool: str

    @property
    def module(self) -> str:
        """The module the entrypoint lives in (``a.b.c.flow`` -> ``a.b.c``; ``file.py:flow`` -> ``file``)."""
        if ":" in self.entrypoint:
            return Path(self.entrypoint.rsplit(":", 1)[0]).stem
        return self.entrypoint.rsplit(".", 1)[0]

    def unavailable_reason(self) -> str | None:
        """Why this deployment's flow cannot be imported here (its module is not installed), else None."""
        if ":" in self.entrypoint:
            path = PREFECT_YAML.parent / self.entrypoint.rsplit(":", 1)[0]
            return None if path.is_file() else f"entrypoint file {path} does not exist"
        try:
            found = importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            found = False
        return None if found else f"entrypoint module {self.module} is not installed"


@dataclass
class InitReport:
    """What the init did: each pool's fate, the deployments deployed, and those that could not be."""

    api_url: str
    pools: dict[str, str] = field(default_factory=dict)
    deployed: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    automations: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"pool {name}: {what}" for name, what in self.pools.items()]
        out += [f"automation {name!r}: {what}" for name, what in self.automations.items()]
        out += [f"deployment {name}: deployed" for name in self.deployed]
        out += [f"deployment {name}: NOT deployed: {why}" for name, why in self.unavailable.items()]
        return out


def read_deployment_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """The deployments declared in a ``prefect.yaml``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the Prefect project file: {err}") from None
    specs: list[DeploymentSpec] = []
    for i, dep in enumerate((data or {}).get("deployments") or []):
        try:
            specs.append(DeploymentSpec(name=str(dep["name"]), entrypoint=str(dep["entrypoint"]),
                                        pool=str(dep["work_pool"]["name"])))
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: deployments[{i}] needs name, entrypoint and work_pool.name") from None
    return specs


def sync_client(api_url: str) -> Any:
    """A synchronous Prefect client for ``api_url`` that carries the configured credentials
    (``PREFECT_API_AUTH_STRING`` for a server protected by ``PREFECT_SERVER_API_AUTH_STRING``, or an API key)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    return SyncPrefectClient(api_url,
                             auth_string=api.auth_string.get_secret_value() if api.auth_string else None,
                             api_key=api.key.get_secret_value() if api.key else None)


def api_url_for(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def server_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check now."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_server(api_url: str, timeout: float = 120.0, interval: float = 0.5) -> float:
    """Poll ``{api_url}/health`` until it answers 200; return the seconds waited.

    Raises ServerUnavailableError naming the URL and the last error when it never does within ``timeout``.
    """
    start = time.monotonic()
    last = "no answer"
    url = f"{api_url.rstrip('/')}/health"
    while True:
        try:
            resp = httpx.get(url, timeout=min(5.0, max(interval, 1.0)))
            if resp.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as err:
            last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if time.monotonic() - start >= timeout:
            raise ServerUnavailableError(f"the Prefect server at {api_url} did not answer {url} within "
                                         f"{timeout:.0f} s (last: {last}); is it running, and is PREFECT_API_URL "
                                         f"right?")
        time.sleep(interval)


def pool_limits(pools: Sequence[str], concurrency: int = DEFAULT_POOL_CONCURRENCY) -> dict[str, int]:
    """The concurrency limit each pool gets when created: ``concurrency``, or 1 for pools that must be serial."""
    return {p: (1 if p in SERIAL_POOLS else concurrency) for p in dict.fromkeys(pools)}


def limit_to_set(name: str, current: int | None, wanted: int) -> int | None:
    """The concurrency limit an EXISTING pool must be given, or None to leave it as it is.

    A pool that must be serial (``SERIAL_POOLS``) always gets 1, whatever limit it had; any other pool gets
    ``wanted`` only when it has no limit at all (a process worker then starts runs without bound), so a limit
    an operator chose is kept. Applying the result twice changes nothing.
    """
    if name in SERIAL_POOLS:
        return None if current == 1 else 1
    return wanted if current is None else None


def pool_template() -> dict[str, Any]:
    """The base job template of our pools: the process worker's default, with the environment every flow-run
    process of the pool gets by default (``zombies.heartbeat_env``: heartbeats at the interval the zombie-run
    automation expects). A deployment's own ``job_variables.env`` is merged over it."""
    from prefect.workers.process import ProcessWorker

    template: dict[str, Any] = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["env"]["default"] = heartbeat_env()
    # The job command: the pre-forked launcher's client (flows/launcher.py), which starts the engine itself when
    # no launcher listens. Without a command Prefect 3.9 starts two Pythons per run (its workspace supervisor,
    # then the engine), each importing Prefect: ~6 s before the first step (docs/PERFORMANCE.md).
    template["variables"]["properties"]["command"]["default"] = launcher_command()
    return template


def _missing_command(template: Mapping[str, Any]) -> str | None:
    """The job command a pool's template must be given: ours when it has none (a command an operator set is
    kept), else None."""
    command = template.get("variables", {}).get("properties", {}).get("command", {}).get("default")
    return None if command else launcher_command()


def _missing_env(template: Mapping[str, Any]) -> dict[str, str]:
    """The heartbeat settings a pool's template lacks or has otherwise (empty when it has them)."""
    default = template.get("variables", {}).get("properties", {}).get("env", {}).get("default") or {}
    return {k: v for k, v in heartbeat_env().items() if default.get(k) != v}


def ensure_work_pools(api_url: str, limits: Mapping[str, int]) -> dict[str, str]:
    """Create each missing pool (type ``process``) with its concurrency limit and our job template, and give
    existing pools the limit they need (``limit_to_set``: pools made by hand with ``prefect work-pool create``
    have none) and the template's heartbeat environment when they lack it (other template settings are kept)."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    template = pool_template()
    outcome: dict[str, str] = {}
    try:
        with sync_client(api_url) as client:
            for name, limit in limits.items():
                try:
                    pool = client.read_work_pool(name)
                except ObjectNotFound:
                    client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template,
                                                           concurrency_limit=limit))
                    outcome[name] = f"created (type process, concurrency limit {limit})"
                    continue
                new_limit = limit_to_set(name, pool.concurrency_limit, limit)
                if new_limit is None:
                    outcome[name] = f"exists (type {pool.type}, concurrency limit {pool.concurrency_limit})"
                else:
                    client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=new_limit))
                    outcome[name] = (f"exists (type {pool.type}); concurrency limit set: {pool.concurrency_limit}"
                                     f" -> {new_limit}")
                missing = _missing_env(pool.base_job_template)
                command = _missing_command(pool.base_job_template)
                if (missing or command) and pool.type == "process":
                    updated = copy.deepcopy(pool.base_job_template)
                    props = updated.setdefault("variables", {}).setdefault("properties", {})
                    if missing:
                        env = props.setdefault("env", copy.deepcopy(template["variables"]["properties"]["env"]))
                        env["default"] = {**(env.get("default") or {}), **missing}
                        outcome[name] += f"; job template env set: {', '.join(f'{k}={v}' for k, v in missing.items())}"
                    if command:
                        props.setdefault("command", copy.deepcopy(template["variables"]["properties"]["command"]))
                        props["command"]["default"] = command
                        outcome[name] += f"; job command set: {command}"
                    client.update_work_pool(name, WorkPoolUpdate(base_job_template=updated))
                if pool.type != "process":
                    outcome[name] += (f"; WARNING: type {pool.type}, not process: `prefect worker start --type "
                                      "process` refuses it (recreate it with --type process)")
    except (httpx.HTTPError, PrefectHTTPStatusError) as err:
        raise OrchestrationError(f"creating work pools on {api_url} failed: {err}") from None
    return outcome


def ensure_zombie_automation(api_url: str) -> str:
    """Make (or re-make as specified) the automation that marks Crashed the runs whose process is gone
    (``splash_flows.flows.zombies``)."""
    with sync_client(api_url) as client:
        return ensure_automation(client)


def deploy(api_url: str, names: Sequence[str] | None = None, *, folder: Path = BL733_DIR,
           timeout: float = 600.0) -> list[str]:
    """Run ``prefect --no-prompt deploy`` (``--all``, or ``--name`` for each of ``names``) in ``folder``.

    Returns the names deployed. Raises OrchestrationError with Prefect's own output when it fails.
    """
    args = ["--all"] if names is None else [a for n in names for a in ("--name", n)]
    if names is not None and not names:
        return []
    argv = python_argv("-m", "prefect", "--no-prompt", "deploy", *args)
    env = child_env({"PREFECT_API_URL": api_url})
    try:
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise OrchestrationError(f"`prefect deploy` in {folder} against {api_url} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise OrchestrationError(f"`prefect deploy {' '.join(args)}` in {folder} against {api_url} failed "
                                 f"(exit {done.returncode}):\n{tail}")
    return [s.name for s in read_deployment_specs(folder / "prefect.yaml")] if names is None else list(names)


def init_work_pools(api_url: str, *, names: Sequence[str] | None = None,
                    concurrency: int = DEFAULT_POOL_CONCURRENCY, health_timeout: float = 120.0,
                    project_file: Path = PREFECT_YAML) -> InitReport:
    """Wait for the server, create the missing pools of every deployment in ``project_file``, deploy.

    ``names`` None deploys all. A deployment whose flow module is not installed is not deployed and is listed
    in ``InitReport.unavailable`` (the caller decides whether that is fatal); the others are deployed.
    """
    wait_for_server(api_url, timeout=health_timeout)
    specs = read_deployment_specs(project_file)
    known = {s.name for s in specs}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"{project_file}: no deployment named {', '.join(unknown)} (known: {', '.join(known)})")
    report = InitReport(api_url=api_url)
    report.pools = ensure_work_pools(api_url, pool_limits([s.pool for s in specs], concurrency))
    report.automations[AUTOMATION_NAME] = ensure_zombie_automation(api_url)
    wanted = [s for s in specs if names is None or s.name in names]
    for spec in wanted:
        reason = spec.unavailable_reason()
        if reason is not None:
            report.unavailable[spec.name] = reason
    ready = [s.name for s in wanted if s.name not in report.unavailable]
    everything = names is None and not report.unavailable
    report.deployed = deploy(api_url, None if everything else ready, folder=project_file.parent)
    return report


def preview(*, project_file: Path = PREFECT_YAML, names: Sequence[str] | None = None,
            concurrency: int = DEFAULT_POOL_CONCURRENCY, api_url: str | None = None) -> dict[str, Any]:
    """What ``init_work_pools`` would create and deploy, resolved, changing nothing (Prefect 3.9 has no
    ``prefect deploy --output yaml``): each work pool with its type and concurrency limit, and each deployment
    with its flow (imported from the entrypoint, as ``prefect deploy`` does), description, tags, parameters
    (the flow's defaults overridden by ``prefect.yaml``), work pool and queue, schedules and pull steps.

    With ``api_url`` (a server that answers), each pool and deployment also says whether it exists there
    already (read-only requests); without one, nothing is contacted.
    """
    try:
        data = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{project_file}: cannot read the Prefect project file: {err}") from None
    specs = read_deployment_specs(project_file)
    known = {s.name for s in specs}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"{project_file}: no deployment named {', '.join(unknown)} (known: {', '.join(known)})")
    raw = {str(d["name"]): d for d in data.get("deployments") or []}
    wanted = [s for s in specs if names is None or s.name in names]
    limits = pool_limits([s.pool for s in specs], concurrency)
    pools: list[dict[str, Any]] = [{"name": p, "type": "process", "concurrency_limit": limits[p],
                                    "job_template_env": heartbeat_env()}
                                   for p in dict.fromkeys(s.pool for s in wanted)]
    deployments: list[dict[str, Any]] = []
    for spec in wanted:
        dep = raw[spec.name]
        out: dict[str, Any] = {"name": spec.name, "entrypoint": spec.entrypoint}
        params = dict(dep.get("parameters") or {})
        reason = spec.unavailable_reason()
        if reason is None:
            from prefect.flows import load_flow_from_entrypoint

            flow: Any = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
            defaults = {k: v.get("default") for k, v in flow.parameters.properties.items() if "default" in v}
            out["flow"] = flow.name
            out["full_name"] = f"{flow.name}/{spec.name}"
            params = {**defaults, **params}
        else:
            out["available"] = f"no: {reason} (init-work-pools leaves it out)"
        pool = dep.get("work_pool") or {}
        out.update({
            "description": dep.get("description"),
            "tags": list(dep.get("tags") or []),
            "parameters": params,
            "work_pool": {"name": spec.pool, "work_queue_name": pool.get("work_queue_name"),
                          "job_variables": pool.get("job_variables") or {}},
            "schedules": list(dep.get("schedules") or []),
            "pull": copy.deepcopy(dep.get("pull", data.get("pull")) or []),
        })
        deployments.append(out)
    automation = automation_summary()
    if api_url is not None:
        _annotate_from_server(api_url, pools, deployments, automation)
    return {"prefect_version": data.get("prefect-version"), "project_file": str(project_file),
            "work_pools": pools, "automations": [automation], "deployments": deployments}


def _annotate_from_server(api_url: str, pools: list[dict[str, Any]], deployments: list[dict[str, Any]],
                          automation: dict[str, Any]) -> None:
    """Add ``on_server`` to each pool, deployment and the automation: what exists at ``api_url`` (read-only)."""
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    wait_for_server(api_url, timeout=10)
    try:
        with sync_client(api_url) as client:
            for pool in pools:
                try:
                    found = client.read_work_pool(pool["name"])
                    pool["on_server"] = (f"exists (type {found.type}, concurrency limit {found.concurrency_limit}); "
                                         "left as it is")
                except ObjectNotFound:
                    pool["on_server"] = "missing: would be created"
            for dep in deployments:
                if "full_name" not in dep:
                    continue
                try:
                    client.read_deployment_by_name(dep["full_name"])
                    dep["on_server"] = "exists: would be updated in place"
                except ObjectNotFound:
                    dep["on_server"] = "missing: would be created"
            automation["on_server"] = automation_status(client)
    except (httpx.HTTPError, PrefectHTTPStatusError) as err:
        raise OrchestrationError(f"reading work pools and deployments on {api_url} failed: {err}") from None


DISPATCHER_DEPLOYMENT = "dispatcher/run_733_dispatcher"


def trigger_deployment(api_url: str, batches: Sequence[Sequence[str]], *, deployment: str = DISPATCHER_DEPLOYMENT,
                       config_path: str | None = None, tags: Sequence[str] = ()) -> list[str]:
    """Create one flow run of ``deployment`` per batch of paths (parameter ``paths``); return the run ids.

    The runs are independent (not sub-runs of anything) and start as soon as a worker or runner claims them.
    """
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    ids: list[str] = []
    try:
        with sync_client(api_url) as client:
            try:
                dep = client.read_deployment_by_name(deployment)
            except ObjectNotFound:
                raise OrchestrationError(f"deployment {deployment} does not exist on {api_url}; run "
                                         "`splash-flows init-work-pools`") from None
            for batch in batches:
                params: dict[str, Any] = {"paths": list(batch)}
                if config_path is not None:
                    params["config_path"] = config_path
                run = client.create_flow_run_from_deployment(dep.id, parameters=params, tags=list(tags))
                ids.append(str(run.id))
    except (httpx.HTTPError, PrefectHTTPStatusError) as err:
        raise OrchestrationError(f"triggering {deployment} on {api_url} failed after {len(ids)} run(s): "
                                 f"{err}") from None
    return ids
