"""Alerts delivered for real: an SMTP server (aiosmtpd) and an HTTP webhook receiver on 127.0.0.1 (free ports),
reached through Apprise's mailto:// and json:// URLs. The induced failure is the one the prune re-check finds: a
bit flipped in a verified cfs copy (the copy is marked at risk and the data733 deletion refused). Exactly one
alert arrives at each; checking again, or after a restart, sends nothing more."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from splash_flows.config import AlertsConfig, Config, MonitoringConfig
from splash_flows.ledger import Ledger
from splash_flows.monitoring.alerts import apprise_notifier, check_alerts
from splash_flows.services import prune
from tests.fakes.clock import FakeClock
from tests.support.postgres import free_port
from tests.support.prune import T0, acquire, flip_byte, move_and_schedule, observed_context, tier_path

pytestmark = pytest.mark.integration


class SmtpInbox:
    """A real SMTP server (aiosmtpd) on a free loopback port that keeps every message it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Message] = []
        self.port = free_port()
        inbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                inbox.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpInbox:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class WebhookReceiver:
    """An HTTP server on a free loopback port that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[tuple[SmtpInbox, WebhookReceiver]]:
    with SmtpInbox() as smtp, WebhookReceiver() as hook:
        yield smtp, hook


def _alerting(config: Config, smtp: SmtpInbox, hook: WebhookReceiver) -> Config:
    urls = [SecretStr(f"mailto://127.0.0.1:{smtp.port}?from=splash@bl733.example&to=ops@bl733.example"),
            SecretStr(f"json://127.0.0.1:{hook.port}/alerts")]
    return config.model_copy(update={"alerts": AlertsConfig(urls=urls),
                                     "monitoring": MonitoringConfig(page_url="http://flow-733:8733/")})


def test_a_corrupted_copy_found_by_the_prune_recheck_is_one_alert_at_each_receiver(
        sqlite_config: Config, receivers: tuple[SmtpInbox, WebhookReceiver], tmp_path: Path) -> None:
    smtp, hook = receivers
    config = _alerting(sqlite_config, smtp, hook)
    clock = FakeClock(T0)
    ctx = observed_context(config)
    try:
        paths = [f"ALS-00622/20260105/scan_{i}.edf" for i in range(3)]
        for i, p in enumerate(paths):
            acquire(ctx, p, bytes([i]) * 3000, clock.now)
        move_and_schedule(ctx, paths, clock)
        notify = apprise_notifier([u.get_secret_value() for u in config.alerts.urls])
        assert check_alerts(ctx.ledger, config, notify).reason == "nothing new"  # all safe: nothing to say
        flip_byte(tier_path(ctx, "cfs", paths[1]), offset=1234)
        clock.advance(days=200)
        report = prune.execute_prune(ctx, clock=clock)
        assert [(c.tier, c.path) for c in report.at_risk] == [("cfs", paths[1])]

        outcome = check_alerts(ctx.ledger, config, notify)
        assert outcome.sent and outcome.errors == []
        assert sorted(f.kind for f in outcome.findings) == ["at_risk", "prune_refused"]
        assert check_alerts(ctx.ledger, config, notify).reason == "nothing new"
    finally:
        ctx.close()
    restarted = Ledger.open(config.ledger.url_value())  # a restarted process reads what was sent from the ledger
    try:
        assert check_alerts(restarted, config, notify).reason == "nothing new"
    finally:
        restarted.close()

    assert len(smtp.messages) == 1 and len(hook.bodies) == 1
    mail = smtp.messages[0]
    assert mail["To"] == "ops@bl733.example" and "1 at risk" in mail["Subject"]
    parts = [m for m in mail.walk() if m.get_content_type() == "text/plain"]
    raw = parts[0].get_payload(decode=True)
    assert isinstance(raw, bytes)
    body = raw.decode()
    assert f"cfs:{paths[1]}" in body and "http://flow-733:8733/#flag=at_risk" in body
    posted = hook.bodies[0]
    assert "1 at risk" in posted["title"] and "1 prune refused" in posted["title"]
    assert f"cfs:{paths[1]}" in posted["message"] and "data733:" + paths[1] in posted["message"]


def test_alerts_once_from_the_command_line(tmp_path: Path) -> None:
    """``splash-flows alerts --once`` as an operator's timer runs it: sends once, then has nothing new; a URL
    Apprise does not know is one config error line."""
    import subprocess
    import sys

    import yaml

    from splash_flows.config import default_config_data, load_config_file

    with WebhookReceiver() as hook:
        data = default_config_data(tmp_path / "site")
        data["alerts"] = {"urls": [f"json://127.0.0.1:{hook.port}/alerts"]}
        cfg = tmp_path / "splash.yaml"
        cfg.write_text(yaml.safe_dump(data))
        ledger = Ledger.open(load_config_file(cfg).ledger.url_value())
        try:
            ledger.record_failed("ALS-00622/x.edf", "cfs", "cfs: No space left on device")
        finally:
            ledger.close()

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "splash_flows", "--config", str(cfg), "alerts", *args],
                                  capture_output=True, text=True, timeout=120, check=False)

        first = run("--once", "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["sent"] is True and len(hook.bodies) == 1
        second = run("--once", "--json")
        assert json.loads(second.stdout)["reason"] == "nothing new" and len(hook.bodies) == 1
        history = run("--history")
        assert "sent" in history.stdout and "1 transfer failed" in history.stdout
    data["alerts"] = {"urls": ["nosuchscheme://x"]}
    cfg.write_text(yaml.safe_dump(data))
    bad = run("--once")
    assert bad.returncode == 2 and "alerts.urls" in bad.stderr and "nosuchscheme" not in bad.stderr
