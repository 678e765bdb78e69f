"""Flow runs whose process died: found by their missing heartbeats and marked Crashed by the Prefect server.

A flow run whose process is killed (SIGKILL, OOM, a host that dies or loses power) stays Running -- or Pending,
when its worker died between claiming it and starting its process -- on the server forever: nothing is left to
report its end. It also keeps one slot of its work pool's concurrency limit, so a few dead runs stop the pool:
with ``prune_733_pool`` at 1, one is enough for no prune to ever run again. Our in-process runner marks the
orphans of a runner that died on ITS host (``InProcessRunner.crash_orphans``); nothing on the host that died can
do it for runs of a process worker, and no other host knows whose they were.

Prefect's own answer, and ours: every flow-run process sends a heartbeat event every ``HEARTBEAT_SECONDS``
(Prefect 3 does it from the engine when ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set; its default is 180 s), and
a server-side automation with a *proactive* trigger marks Crashed a run that, after a heartbeat or a move to
a Pending- or Running-type state, shows no sign of life (no heartbeat, no state change) within
``MISSING_AFTER_SECONDS``. Its files are then re-sent by the watcher or ``splash-flows reconcile``; the ledger,
not the run's state, says what is safe.

The interval reaches every flow-run process from one place: the work pools' base job template (``env``), which
``init-work-pools`` gives every pool it creates or finds, and the in-process runner applies it to the runs it
executes. The automation's window is derived from the same constant, so the two cannot disagree.

What a false alarm costs: a run whose heartbeats stop reaching the server for longer than the window -- the
server down for more than ``MISSING_AFTER_SECONDS`` while runs go on -- is marked Crashed although its process
lives on. The automation never forces a state (``force=False``), so a run that already ended keeps its state; a
live run marked Crashed finishes its copies (recorded in the ledger as always) but cannot then report Completed.
The error is on the safe side: an operator sees a failure and re-runs ``reconcile``, which finds nothing to send.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from splash_flows.errors import OrchestrationError

#: Seconds between two heartbeats of a flow-run process (Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
#: A run is marked Crashed when nothing is heard from it for this long: three heartbeats missed, plus 30 s for a
#: loaded machine or a slow event pipeline.
MISSING_AFTER_SECONDS = 4 * HEARTBEAT_SECONDS
#: The environment variable Prefect's engine reads for the interval (``flows.heartbeat_frequency``).
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
AUTOMATION_NAME = "splash-flows: mark Crashed the flow runs whose process is gone"
#: The names of Prefect's Pending- and Running-type states (a process worker moves a run to "Submitting", then
#: "InfrastructurePending"; retries run as "Retrying"): the states that hold a pool's concurrency slot. A state
#: change event is named after the state's NAME, so each is listed.
ACTIVE_STATE_NAMES = ("Pending", "Submitting", "InfrastructurePending", "Running", "Retrying")
#: Only runs of our deployments (every deployment in prefect.yaml carries this tag, and flow runs inherit it).
DEPLOYMENT_TAG = "bl733"


def heartbeat_env() -> dict[str, str]:
    """The environment every flow-run process gets (through the work pools' job template)."""
    return {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}


def automation_spec(*, missing_after_s: int = MISSING_AFTER_SECONDS, tag: str = DEPLOYMENT_TAG) -> Any:
    """The automation (``prefect.events.schemas.automations.AutomationCore``) that marks silent runs Crashed.

    Proactive event trigger, one bucket per flow run: a heartbeat, or a move to a state that holds a pool slot
    (``ACTIVE_STATE_NAMES``), opens a window
    of ``missing_after_s``; any event of that run (the next heartbeat, any state change, including our custom
    final states such as ``CataloguePending``) closes it; a window that closes empty fires the action.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    if missing_after_s <= HEARTBEAT_SECONDS:
        raise OrchestrationError(f"the missing-heartbeat window ({missing_after_s} s) must be longer than the "
                                 f"heartbeat interval ({HEARTBEAT_SECONDS} s), or live runs would be crashed")
    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.id": f"prefect.tag.{tag}"},
        after={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{name}" for name in ACTIVE_STATE_NAMES)},
        expect={"prefect.flow-run.*"},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=missing_after_s),
    )
    action = ChangeFlowRunState(
        name="Crashed", state=StateType.CRASHED, force=False,
        message=(f"no heartbeat nor state change for {missing_after_s} s: its process is gone (killed, or its host "
                 "died); files not verified are re-sent by the watcher or `splash-flows reconcile`"))
    return AutomationCore(
        name=AUTOMATION_NAME, enabled=True, trigger=trigger, actions=[action],
        description=(f"Flow runs tagged {tag} send a heartbeat every {HEARTBEAT_SECONDS} s ({HEARTBEAT_ENV} in "
                     "the work pools' job template). A run silent for longer than the window is marked Crashed, "
                     "so it does not hold its work pool's concurrency slot forever. Made by "
                     "`splash-flows init-work-pools`; it is re-made as specified on each run."))


def ensure_automation(client: Any, spec: Any | None = None) -> str:
    """Create the automation, or bring an existing one (same name) back to ``spec``; say what was done.

    ``client`` is a synchronous Prefect client. Idempotent: a second call finds it as specified and changes
    nothing. More than one automation of that name (made by hand) are all replaced by one.
    """
    from prefect.exceptions import PrefectHTTPStatusError

    spec = spec if spec is not None else automation_spec()
    try:
        found, same = _on_server(client, spec)
        if same:
            return "exists, as specified"
        for old in found:
            client.delete_automation(old.id)
        client.create_automation(spec)
    except (httpx.HTTPError, PrefectHTTPStatusError) as err:
        raise OrchestrationError(f"the automation {spec.name!r} could not be made on {client.api_url}: {err}") \
            from None
    return "updated to the specification" if found else "created"


def automation_status(client: Any, spec: Any | None = None) -> str:
    """What ``ensure_automation`` would do on the server ``client`` talks to, changing nothing (``--preview``)."""
    spec = spec if spec is not None else automation_spec()
    found, same = _on_server(client, spec)
    if same:
        return "exists, as specified; left as it is"
    return "differs: would be re-made as specified" if found else "missing: would be created"


def automation_summary(spec: Any | None = None) -> dict[str, Any]:
    """The automation as ``init-work-pools --preview`` prints it: name, description, trigger and actions."""
    spec = spec if spec is not None else automation_spec()
    data: dict[str, Any] = normalised(spec.model_dump(mode="json", include={"name", "description", "trigger",
                                                                             "actions"}))
    return data


def _on_server(client: Any, spec: Any) -> tuple[list[Any], bool]:
    """The automations named like ``spec`` on the server, and whether they are exactly one, as specified."""
    found = client.read_automations_by_name(spec.name)
    wanted = _comparable(spec)
    same = len(found) == 1 and {k: v for k, v in _comparable(found[0]).items() if k in wanted} == wanted
    return found, same


def _comparable(automation: Any) -> dict[str, Any]:
    """An automation as JSON without what the server assigns (ids) and with its sets (a trigger's ``after``,
    ``expect``, ``for_each``: JSON lists in whatever order the set iterates, which differs between processes)
    sorted -- what decides whether it is as specified."""
    out: dict[str, Any] = normalised(automation.model_dump(mode="json"))
    return out


def normalised(value: Any) -> Any:
    """``value`` (JSON) without ``id`` keys, lists of strings sorted."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        items = [normalised(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value
