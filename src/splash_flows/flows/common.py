"""Pieces shared by every beamline's flows: retry policy, run naming, and logs an operator can read.

Expected failures (a refused file, a failed copy: our typed ``SplashFlowsError``) are said in one line with
their cause, never as a Prefect traceback: flows end with ``failed_state(err)`` instead of raising, and the
filter installed on Prefect's run loggers at import (``quiet_expected_failures``) drops the traceback Prefect
attaches when a task raises one of ours. A bug (any other exception) keeps its traceback. Warnings that would
repeat on every run (the same pending scans, the same refused paths) go through ``RepeatedWarnings``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from typing import Any, TypeVar, cast

from prefect.client.schemas.objects import State, TaskRun
from prefect.states import Failed
from prefect.utilities.annotations import quote

from splash_flows.errors import SplashFlowsError, headline
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


def failed_state(err: SplashFlowsError) -> State[Any]:
    """The Failed state a flow returns for an expected failure: its message is one line (``headline``), the
    error itself is the state's data (``state.result()`` raises it; calling the flow raises it)."""
    return Failed(message=headline(err), data=err)


class _ExpectedFailureFilter(logging.Filter):
    """On Prefect's run loggers: a record carrying one of our typed errors loses its traceback, and the error
    is named by its one-line headline instead of its (possibly long, multi-line) repr."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SplashFlowsError):
            message = record.getMessage().replace(repr(exc), f"{type(exc).__name__}: {headline(exc)}")
            record.msg, record.args = message, ()
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _ExpectedFailureFilter()
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def quiet_expected_failures() -> None:
    """Install the filter on Prefect's flow-run and task-run loggers (idempotent; done at import)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


quiet_expected_failures()


class RepeatedWarnings:
    """Say a warning once, not at every run: the first time a topic's content is seen (or when it changed) it
    is a WARNING; the same content again is an INFO line saying it is unchanged and since when, until
    ``rewarn_after`` seconds have passed (then it is a WARNING again, so it is not forgotten). One instance per
    process (``repeated``), shared by the flow runs it executes (the runner runs many)."""

    def __init__(self, rewarn_after: float = 3600.0) -> None:
        self.rewarn_after = rewarn_after
        self._seen: dict[str, tuple[Hashable, float, int]] = {}
        self._lock = threading.Lock()

    def log(self, logger: logging.Logger | logging.LoggerAdapter[Any], topic: str, content: Hashable,
            message: str, *args: Any) -> bool:
        """Log ``message % args`` as a WARNING, or as an INFO "unchanged" line when ``content`` is what this
        topic said last time. Returns True when it was a WARNING."""
        now = time.monotonic()
        with self._lock:
            previous = self._seen.get(topic)
            if previous is not None and previous[0] == content and now - previous[1] < self.rewarn_after:
                self._seen[topic] = (content, previous[1], previous[2] + 1)
                repeats, since = previous[2] + 1, now - previous[1]
                warn = False
            else:
                self._seen[topic] = (content, now, 0)
                warn = True
        if warn:
            logger.warning(message, *args)
        else:
            logger.info("unchanged since %.0f min ago (%d repeat(s), warned then): " + message,
                        since / 60, repeats, *args)
        return warn


#: The process-wide memory of warnings already given.
repeated = RepeatedWarnings()
