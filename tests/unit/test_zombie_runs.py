"""The zombie-run automation and the heartbeat interval behind it (``splash_flows.flows.zombies``): what it
matches, that it can never be made with a window that would crash live runs, that every pool's job template
carries the interval, and that making it twice changes nothing. The real server firing it is tested in
tests/integration (a worker killed mid-batch, two hosts with one killed)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from splash_flows.errors import OrchestrationError
from splash_flows.flows.deploy import _missing_env, pool_template
from splash_flows.flows.zombies import (
    ACTIVE_STATE_NAMES,
    AUTOMATION_NAME,
    HEARTBEAT_ENV,
    HEARTBEAT_SECONDS,
    MISSING_AFTER_SECONDS,
    automation_spec,
    ensure_automation,
    normalised,
)


def test_the_window_is_longer_than_the_heartbeat_interval_by_a_margin() -> None:
    assert MISSING_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS
    with pytest.raises(OrchestrationError, match="must be longer than the heartbeat interval"):
        automation_spec(missing_after_s=HEARTBEAT_SECONDS)


def test_the_trigger_watches_each_tagged_run_for_silence_and_crashes_it_without_forcing() -> None:
    spec = automation_spec()
    trigger = spec.trigger
    assert trigger.posture.value == "Proactive" and trigger.threshold == 1
    assert trigger.within.total_seconds() == MISSING_AFTER_SECONDS
    assert trigger.for_each == {"prefect.resource.id"}  # one window per flow run
    # every state that holds a pool slot opens a window (not Scheduled: a run given back; not final states)
    assert trigger.after == {"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{n}" for n in ACTIVE_STATE_NAMES)}
    # any sign of life closes the window, our own final state names (CataloguePending, ...) included; judged by
    # the server's own matching rules
    from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger

    server_side = ServerEventTrigger.model_validate(trigger.model_dump(mode="json"))
    assert server_side.starts_after("prefect.flow-run.heartbeat")
    assert server_side.expects("prefect.flow-run.CataloguePending")
    assert server_side.expects("prefect.flow-run.heartbeat")
    assert not server_side.expects("prefect.deployment.ready")
    [action] = spec.actions
    assert (action.type, action.state.value, action.force) == ("change-flow-run-state", "CRASHED", False)
    assert "reconcile" in (action.message or "")


def test_the_active_state_names_are_every_pending_or_running_state_prefect_makes() -> None:
    """A state change event is named after the state's name: a Prefect upgrade that adds a Pending- or
    Running-type state (as 3.x added Submitting and InfrastructurePending) must be added to the trigger."""
    import inspect

    import prefect.states
    from prefect.client.schemas.objects import StateType

    slot_holding: set[str] = set()
    for name, factory in inspect.getmembers(prefect.states, inspect.isfunction):
        if not name[:1].isupper():
            continue
        try:
            state = factory()
        except TypeError:
            continue  # needs arguments (Paused, Suspended, ...): not a Pending/Running type
        if state.type in (StateType.PENDING, StateType.RUNNING):
            slot_holding.add(state.name)
    assert slot_holding == set(ACTIVE_STATE_NAMES)


def test_every_pool_template_gives_flow_runs_the_heartbeat_interval() -> None:
    template = pool_template()
    assert template["variables"]["properties"]["env"]["default"] == {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}
    assert _missing_env(template) == {}
    bare: dict[str, Any] = {"variables": {"properties": {"env": {"type": "object"}}}}
    assert _missing_env(bare) == {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}
    other = {"variables": {"properties": {"env": {"default": {HEARTBEAT_ENV: "180"}}}}}
    assert _missing_env(other) == {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}  # a slower interval is corrected


class FakeAutomationsClient:
    """The automation calls of Prefect's sync client, over a dict; assigns ids as the server does."""

    api_url = "http://127.0.0.1:1/api"

    def __init__(self) -> None:
        self.stored: dict[UUID, Any] = {}
        self.calls: list[str] = []

    def read_automations_by_name(self, name: str) -> list[Any]:
        return [a for a in self.stored.values() if a.name == name]

    def create_automation(self, automation: Any) -> UUID:
        from prefect.events.schemas.automations import Automation

        self.calls.append("create")
        new_id = uuid4()
        data = automation.model_dump(mode="json")
        data["trigger"]["id"] = str(uuid4())  # the server gives the trigger an id of its own
        self.stored[new_id] = Automation.model_validate({**data, "id": str(new_id)})
        return new_id

    def delete_automation(self, automation_id: UUID) -> None:
        self.calls.append("delete")
        del self.stored[automation_id]


def test_making_it_twice_changes_nothing_and_a_changed_one_is_put_back() -> None:
    client = FakeAutomationsClient()
    assert ensure_automation(client) == "created"
    assert ensure_automation(client) == "exists, as specified"
    assert client.calls == ["create"]
    assert ensure_automation(client, automation_spec(missing_after_s=60)) == "updated to the specification"
    assert ensure_automation(client) == "updated to the specification"
    [only] = client.read_automations_by_name(AUTOMATION_NAME)
    assert only.trigger.within.total_seconds() == MISSING_AFTER_SECONDS
    client.create_automation(automation_spec())  # a second one made by hand: both replaced by one
    assert ensure_automation(client) == "updated to the specification"
    assert len(client.read_automations_by_name(AUTOMATION_NAME)) == 1


def test_the_comparison_ignores_server_ids_and_the_order_sets_come_in() -> None:
    """A trigger's sets reach the server and come back as JSON lists in the order each process's set iterates
    (string hashes differ per process): a second init found the automation "changed" and re-made it."""
    made = {"id": "1", "trigger": {"id": "a", "after": ["x", "y"], "for_each": ["r"]}, "actions": [{"type": "t"}]}
    read = {"id": "2", "trigger": {"id": "b", "after": ["y", "x"], "for_each": ["r"]}, "actions": [{"type": "t"}]}
    assert normalised(made) == normalised(read)
    assert normalised({"trigger": {"after": ["x"]}}) != normalised({"trigger": {"after": ["x", "z"]}})
