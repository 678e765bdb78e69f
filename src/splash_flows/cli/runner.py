"""``splash-flows runner``: run the deployments' flow runs in this long-lived process (low latency).

See ``splash_flows.flows.runner`` for why and how, and docs/DEPLOYMENT.md for when to prefer it over process
workers. It serves the deployments ``splash-flows init-work-pools`` created; it changes none of them.
"""

from __future__ import annotations

import os
import sys

import typer

from splash_flows.cli.common import configure_logging, err_console, fail_cleanly, state
from splash_flows.cli.init import API_URL_HELP, resolve_api_url


def runner(
    ctx: typer.Context,
    api_url: str | None = typer.Option(None, "--api-url", help=API_URL_HELP),
    deployment: list[str] = typer.Option([], "--deployment", "-d",
                                         help="Serve only this deployment of prefect.yaml (repeatable; default: "
                                              "every one whose flow is installed)."),
    limit: int = typer.Option(4, "--limit", min=1, max=64, help="Flow runs executed at once."),
    poll: float = typer.Option(0.25, "--poll", min=0.1, max=60,
                               help="Seconds between checks for due runs (one read each; a pool is polled only "
                               "when a run of it is due, or every 15 s)."),
    grace: float = typer.Option(60.0, "--grace", min=0, help="On SIGINT/SIGTERM, seconds to let runs finish."),
) -> None:
    """Serve the 7.3.3 deployments in-process: claim their scheduled runs and execute them here."""
    with fail_cleanly():
        url = resolve_api_url(api_url)
        os.environ.setdefault("PREFECT_API_URL", url)
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        configure_logging(state(ctx).verbose)  # Prefect's polling (httpx) only with --verbose
        from splash_flows.flows.runner import build_runner

        served, missing = build_runner(url, deployment or None, limit=limit, poll_seconds=poll)
        served.grace_seconds = grace
        for name, why in missing.items():
            err_console.print(f"[yellow]not served:[/] {name}: {why}", highlight=False, soft_wrap=True)
        served.install_signal_handlers()
        code = served.run()
    if code != 0:
        sys.stderr.flush()
        os._exit(code)  # in-flight flow threads cannot be joined; they were marked Crashed above
