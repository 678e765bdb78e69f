"""Pieces shared by every beamline's flows: retry policy and run naming."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from prefect.client.schemas.objects import State, TaskRun
from prefect.utilities.annotations import quote

from splash_flows.services.move import is_transient

T = TypeVar("T")


def passthrough(value: T) -> T:
    """Hand ``value`` to a task as it is: Prefect does not walk it looking for futures (it may be large, or hold
    a database engine). Typed as the value itself so task signatures stay checked."""
    return cast(T, quote(value))


def _exception_of(state: State[Any]) -> BaseException | None:
    if isinstance(state.data, BaseException):
        return state.data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as err:  # noqa: BLE001 - reading a failed state's result may itself raise; that error is the cause
        return err
    return result if isinstance(result, BaseException) else None


def retry_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a task only when its error is transient (I/O, service); never for a refused or missing file."""
    err = _exception_of(state)
    return err is not None and is_transient(err)


def batch_run_name(prefix: str, paths: list[str]) -> str:
    """``<prefix>-<first file>+N``: a run name that says which files it carries."""
    if not paths:
        return f"{prefix}-empty"
    first = paths[0].rsplit("/", 1)[-1]
    return f"{prefix}-{first}" + (f"+{len(paths) - 1}" if len(paths) > 1 else "")
