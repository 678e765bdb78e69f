"""Environment for running Prefect from the CLI. Must run before ``prefect`` is first imported."""

from __future__ import annotations

import os
from pathlib import Path


def prepare_prefect_env(home: Path, *, quiet: bool = True) -> None:
    """Point Prefect at ``home`` (its ephemeral SQLite server lives there) unless the user set it, turn off
    telemetry (these machines are offline), and keep Prefect's own console logging at WARNING when ``quiet``."""
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
