"""``splash-flows watch``: watch the data733 root and trigger one dispatcher run per batch of finished files.

Runs until SIGINT/SIGTERM, then stops cleanly (batches not yet accepted by Prefect stay in the ledger's outbox
and are replayed by the next start). Needs ``PREFECT_API_URL`` pointing at the Prefect server that holds the
dispatcher deployment. Exit codes: 0 after a signal, 1 when the watcher failed, 2 for a configuration error.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from splash_flows.cli.common import State, configure_logging, console, fail_cleanly, state
from splash_flows.cli.prefect_env import prepare_prefect_env


def watch(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", dir_okay=False,
                                       help="Configuration file (overrides the global --config)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every file event (DEBUG)."),
) -> None:
    """Watch data733 and trigger the dispatcher deployment for every batch of finished files."""
    st = state(ctx)
    configure_logging(verbose or st.verbose)
    with fail_cleanly():
        cfg = State(config_path=config or st.config_path).load()
        prepare_prefect_env(Path(os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect"))), quiet=True)
        from splash_flows.config import redact_url
        from splash_flows.flows.trigger import PrefectDeploymentTrigger
        from splash_flows.ledger import Ledger
        from splash_flows.watcher import Watcher, run_until_signalled

        settings = cfg.watcher
        flow_config = cfg.flow_config_path()
        trigger = PrefectDeploymentTrigger(settings.deployment, flow_config, timeout=settings.trigger_timeout_s)
        ledger = Ledger.open(cfg.ledger.url_value())
        try:
            watcher = Watcher(cfg, ledger, trigger)
            console.print(f"watching {watcher.root} (tier {watcher.tier}, {settings.mode} mode"
                          + (f", every {settings.poll_interval_s:g} s" if settings.mode == "polling" else "")
                          + f", quiet period {settings.quiet_period_s:g} s)\n"
                          f"triggering deployment {settings.deployment} at {redact_url(trigger.api_url)} "
                          f"(config_path={flow_config}); ledger {ledger.describe()}\n"
                          "stop with Ctrl-C or SIGTERM", highlight=False, soft_wrap=True)
            code = run_until_signalled(watcher)
        finally:
            ledger.close()
    if code:
        raise typer.Exit(code)
