"""Logs an operator can read (issue 12.6): an expected failure is one line with its cause, no traceback; the
same warning at every run is summarised."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from splash_flows.errors import BatchError, SourceMissingError
from tests.conftest import write_file

pytestmark = pytest.mark.prefect


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@contextmanager
def run_logs() -> Iterator[_Records]:
    """What Prefect's run loggers (and ours) emit, whatever handlers Prefect configured."""
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs", "splash_flows")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_a_refused_and_a_missing_file_are_one_line_each_without_traceback(
        prefect_harness: None, config_file: Path) -> None:
    from splash_flows.flows.bl733.dispatcher import dispatcher

    write_file(config_file.parent / "site" / "data733", "ok.edf", b"fine")
    with run_logs() as logs:
        state = dispatcher(paths=["ok.edf", "gone.edf", "../out.edf"], config_path=str(config_file),
                           return_state=True)
    assert state.is_failed()
    assert "\n" not in (state.message or "") and "gone.edf" in (state.message or "")
    with pytest.raises(BatchError):
        state.result()
    assert "Traceback" not in logs.text()
    mentions = [r for r in logs.records if r.levelno >= logging.WARNING and "gone.edf" in r.getMessage()]
    assert len(mentions) == 1 and "../out.edf" in mentions[0].getMessage(), [r.getMessage() for r in mentions]

    # the same refusals again: summarised as unchanged, not warned again
    with run_logs() as logs:
        dispatcher(paths=["ok.edf", "gone.edf", "../out.edf"], config_path=str(config_file), return_state=True)
    again = [r for r in logs.records if "refused (recorded in the ledger" in r.getMessage()]
    assert len(again) == 1 and again[0].levelno == logging.INFO and "unchanged since" in again[0].getMessage()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING and "gone.edf" in r.getMessage()]
    assert "Traceback" not in logs.text()


def test_the_filter_keeps_tracebacks_of_bugs_and_drops_ours() -> None:
    from splash_flows.flows.common import _FILTER

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:  # noqa: BLE001 - building a record the way logger.exception does
            import sys

            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed with %r", (exc,),
                                     sys.exc_info())

    ours = record(BatchError("copies", {"a": SourceMissingError("data733:a: file not found")}, total=2))
    assert _FILTER.filter(ours) and ours.exc_info is None
    assert ours.getMessage() == "failed with BatchError: 1 of 2 copies failed: data733:a: file not found"
    bug = record(KeyError("x"))
    assert _FILTER.filter(bug) and bug.exc_info is not None


def test_repeated_warnings_warn_once_then_say_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    from splash_flows.flows.common import RepeatedWarnings

    log = logging.getLogger("test.repeated")
    rw = RepeatedWarnings(rewarn_after=3600)
    with caplog.at_level(logging.INFO, logger="test.repeated"):
        assert rw.log(log, "t", frozenset({"a"}), "pending %s", "a")
        assert not rw.log(log, "t", frozenset({"a"}), "pending %s", "a")
        assert rw.log(log, "t", frozenset({"a", "b"}), "pending %s", "a, b")  # changed: warn again
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]
    always = RepeatedWarnings(rewarn_after=0)  # past the re-warn interval: a WARNING again
    assert always.log(log, "t", 1, "x") and always.log(log, "t", 1, "x")
