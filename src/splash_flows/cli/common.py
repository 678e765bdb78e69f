"""Helpers shared by CLI commands: loading config, printing errors, JSON output.

Light on purpose: every command module imports this at start-up (see ``cli/main.py``), so it imports only the
standard library, typer, rich's console and ``splash_flows.errors``. The configuration (pydantic) is imported
when a command loads it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from splash_flows.errors import ConfigError, SplashFlowsError

if TYPE_CHECKING:
    from splash_flows.config import Config

console = Console()
err_console = Console(stderr=True)


@dataclass
class State:
    """Options given before the command (``splash-flows --config F status``)."""

    config_path: Path | None = None
    verbose: bool = False

    def load(self) -> Config:
        """The configuration (``--config``, else ``$SPLASH_FLOWS_CONFIG``, else the embedded default)."""
        from splash_flows.config import load_config

        return load_config(self.config_path)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn our typed errors into one clear line on stderr and a non-zero exit (2 for configuration)."""
    try:
        yield
    except ConfigError as err:
        err_console.print(f"[bold red]config error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except SplashFlowsError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, ensure_ascii=False) + "\n")


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


#: Libraries whose INFO lines are per request or per event (httpx logs every Prefect API call: two lines a second
#: from an idle runner's polling). Shown only with ``--verbose``.
NOISY_LOGGERS = ("httpx", "httpcore", "watchdog", "sqlalchemy", "alembic")


def configure_logging(verbose: bool) -> None:
    """Timestamped lines on stderr (journald keeps them) for long-running commands (runner, watch): INFO, with
    the noisy libraries at WARNING; ``--verbose``: DEBUG, with the libraries' INFO lines (Prefect's polling)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)  # its INFO is every SQL statement: never
