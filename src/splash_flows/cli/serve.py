"""``splash-flows serve`` (the data-safety page and /metrics) and ``splash-flows alerts`` (notify operators).

Alerts run either inside ``serve`` (every ``alerts.interval_seconds``, when ``alerts.urls`` is set; the systemd
unit ``splash-status.service`` does this) or on their own with ``splash-flows alerts`` (a loop) or
``splash-flows alerts --once`` (one check, e.g. from a timer). Their state is in the ledger, so running both
never sends a message twice; a check that starts within ``alerts.min_interval_minutes`` of the last message
sends nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import TYPE_CHECKING, Any

import typer

from splash_flows.cli.common import console, err_console, fail_cleanly, print_json, state

if TYPE_CHECKING:
    from splash_flows.config import Config
    from splash_flows.monitoring.alerts import Notifier

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def notifier(config: Config) -> Notifier:
    """The Apprise notifier of ``alerts.urls``; a URL Apprise does not understand is a ConfigError."""
    from splash_flows.errors import ConfigError
    from splash_flows.monitoring.alerts import apprise_notifier

    try:
        return apprise_notifier([u.get_secret_value() for u in config.alerts.urls])
    except ValueError as err:
        raise ConfigError(f"alerts.urls: {err}") from None


def _alert_loop(config: Config, stop: threading.Event, notify: Notifier) -> None:
    """Check for alerts every ``alerts.interval_seconds`` until ``stop`` is set (runs in a daemon thread)."""
    from splash_flows.errors import SplashFlowsError
    from splash_flows.ledger import Ledger
    from splash_flows.monitoring.alerts import check_alerts
    from splash_flows.monitoring.credentials import expiries

    ledger = Ledger.open(config.ledger.url_value(), upgrade=False)
    try:
        while not stop.is_set():
            try:
                outcome = check_alerts(ledger, config, notify, expiries=expiries(config))
                if outcome.sent:
                    log.warning("alert sent: %s", ", ".join(f"{f.count} {f.kind}" for f in outcome.findings))
            except SplashFlowsError as err:
                log.error("alert check failed: %s", err)
            stop.wait(config.alerts.interval_seconds)
    finally:
        ledger.close()


def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, "--host", help="Address to bind (default: monitoring.host, 127.0.0.1: "
                                    "this machine only). 0.0.0.0 exposes the page to the network."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="TCP port (default: monitoring.port)."),
    alerts: bool = typer.Option(True, "--alerts/--no-alerts", help="Also check for alerts every "
                                "alerts.interval_seconds (only when alerts.urls is set)."),
) -> None:
    """Serve the read-only data-safety page and Prometheus /metrics from the ledger.

    Per proposal and day: files on each tier, late, at risk, failed, pending catalogue, due for pruning; click
    any number for the files, any file for its whole history. The page updates itself."""
    with fail_cleanly():
        config = state(ctx).load()
        from splash_flows.ledger import Ledger

        ledger = Ledger.open(config.ledger.url_value())
        notify = notifier(config) if alerts and config.alerts.urls else None
    bind_host = host or config.monitoring.host
    bind_port = port or config.monitoring.port
    import uvicorn

    from splash_flows.context import build_catalogue
    from splash_flows.monitoring.web import create_app

    catalogue = None if config.catalogue.kind == "none" else (lambda: build_catalogue(config))
    app = create_app(config, ledger, bind=f"{bind_host}:{bind_port}", catalogue=catalogue)
    where = ("this machine only (loopback); use --host to change it" if is_loopback(bind_host)
             else "[bold]reachable from the network[/]: keep it behind a firewall or an authenticating proxy")
    console.print(f"data-safety page: http://{bind_host}:{bind_port}/   metrics: http://{bind_host}:{bind_port}"
                  f"/metrics\nbound to {bind_host}:{bind_port}, {where}; read-only (the ledger "
                  f"{ledger.describe()})", highlight=False, soft_wrap=True)
    stop = threading.Event()
    if notify is not None:
        threading.Thread(target=_alert_loop, args=(config, stop, notify), name="alerts", daemon=True).start()
        console.print(f"alerts: checked every {config.alerts.interval_seconds:g} s, sent to "
                      f"{len(config.alerts.urls)} target(s)", highlight=False)
    try:
        uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning", access_log=False)
    finally:
        stop.set()
        ledger.close()


def alerts(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Check once and exit (exit 1 if a message could not be "
                              "delivered)."),
    as_json: bool = typer.Option(False, "--json", help="Print what the check found and did as JSON."),
    history: bool = typer.Option(False, "--history", help="List the latest messages sent instead."),
) -> None:
    """Notify operators of trouble through Apprise: one summarised message per check, never twice.

    Late files, copies at risk, refused prunes, failed transfers, a long outbox and expiring credentials go to
    every URL of alerts.urls (e-mail, Slack, webhooks ...)."""
    with fail_cleanly():
        config = state(ctx).load()
        from splash_flows.ledger import Ledger
        from splash_flows.monitoring.alerts import check_alerts, recent_messages
        from splash_flows.monitoring.credentials import expiries

        ledger = Ledger.open(config.ledger.url_value())
        try:
            if history:
                rows = recent_messages(ledger)
                if as_json:
                    print_json(rows)
                else:
                    for r in rows:
                        mark = "sent" if r["delivered"] else "NOT DELIVERED"
                        console.print(f"{r['at'][:19]}  {mark:13}  {r['title']}", highlight=False, markup=False)
                return
            if not config.alerts.urls:
                err_console.print("alerts are off: alerts.urls is empty in the configuration", highlight=False)
            notify = notifier(config)
            if not once:
                stop = threading.Event()
                console.print(f"checking for alerts every {config.alerts.interval_seconds:g} s (Ctrl-C to stop)")
                try:
                    _alert_loop(config, stop, notify)
                except KeyboardInterrupt:
                    stop.set()
                return
            outcome = check_alerts(ledger, config, notify, expiries=expiries(config))
        finally:
            ledger.close()
    report: dict[str, Any] = {"sent": outcome.sent, "reason": outcome.reason, "message_id": outcome.message_id,
                              "errors": outcome.errors,
                              "findings": [{"kind": f.kind, "count": f.count, "headline": f.headline,
                                            "examples": f.examples} for f in outcome.findings]}
    if as_json:
        print_json(report)
    else:
        console.print(f"{outcome.reason}", highlight=False)
        for f in outcome.findings:
            console.print(f"  - {f.headline}", highlight=False, markup=False)
    if outcome.findings and not outcome.sent:
        raise typer.Exit(1)
