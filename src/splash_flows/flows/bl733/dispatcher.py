"""``dispatcher``: the entry point the file watcher triggers. Runs ``new_file_733`` for a batch."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from splash_flows.flows.bl733.catalogue import pending_state
from splash_flows.flows.bl733.move import new_file_733
from splash_flows.flows.common import batch_run_name


def _run_name() -> str:
    return batch_run_name("dispatcher", list(flow_run.parameters.get("paths", [])))


@flow(name="dispatcher", flow_run_name=_run_name, validate_parameters=True)
def dispatcher(paths: list[str], config_path: str | None = None) -> dict[str, Any] | State[Any]:
    """Run the move for a batch of data733 paths; Failed if any file did not reach every target verified."""
    result = new_file_733(paths=paths, config_path=config_path)
    if isinstance(result, dict):
        return pending_state(result) or result  # a batch's CataloguePending shows on the dispatcher run too
    return result
