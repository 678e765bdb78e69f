"""Alerts without a network: what is found, that it is summarised into one message, sent once, rate-limited,
repeated only after ``repeat_minutes``, retried when nobody received it, and remembered across a restart (the
state is in the ledger). Both ledger backends. Delivery through real SMTP and HTTP is tested in
tests/integration/test_alert_delivery.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from splash_flows.config import AlertsConfig, Config
from splash_flows.ledger import Ledger, NewSource
from splash_flows.ledger.models import OutboxEntry, SourceFile
from splash_flows.monitoring.alerts import Expiry, check_alerts, recent_messages

T = datetime.now(UTC) + timedelta(minutes=1)  # files registered by a test are detected just before T


class RecordingNotifier:
    """A test double of the Apprise notifier: records each message; fails on demand (as a dead SMTP would)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = False

    def __call__(self, title: str, body: str) -> list[str]:
        if self.fail:
            return ["mailto://***@127.0.0.1: not accepted"]
        self.sent.append((title, body))
        return []


@pytest.fixture
def cfg(config: Config) -> Config:
    alerts = AlertsConfig(urls=[SecretStr("json://127.0.0.1:9/hook")], min_interval_minutes=15, repeat_minutes=360,
                          outbox_limit=2, max_examples=10)
    return config.model_copy(update={"alerts": alerts})


@pytest.fixture
def ledger(cfg: Config) -> Iterator[Ledger]:
    led = Ledger.open(cfg.ledger.url_value())
    yield led
    led.close()


def late_files(ledger: Ledger, n: int, at: datetime) -> None:
    """``n`` files detected two hours before ``at`` and copied nowhere (late against a 60 min objective)."""
    ledger.register_sources("data733", [NewSource(f"ALS-00622/20261130/f{i:04d}.edf", 10, 1.0, "xxh3_128", f"c{i}")
                                        for i in range(n)])
    with ledger.session() as sess:
        sess.execute(update(SourceFile).values(detected_at=at - timedelta(hours=2)))


def test_500_late_files_are_one_message_sent_once_even_after_a_restart(ledger: Ledger, cfg: Config) -> None:
    late_files(ledger, 500, T)
    notify = RecordingNotifier()
    out = check_alerts(ledger, cfg, notify, now=lambda: T)
    assert out.sent and len(notify.sent) == 1
    title, body = notify.sent[0]
    assert "500 late" in title and "500 files not safe within 60 min" in body
    assert body.count("ALS-00622/20261130/f") == 10 and "... and 490 more" in body
    assert "http://127.0.0.1:8733/#flag=late" in body
    later = T + timedelta(minutes=20)
    assert not check_alerts(ledger, cfg, notify, now=lambda: later).sent  # still late, already told
    restarted = Ledger.open(cfg.ledger.url_value())
    try:
        assert check_alerts(restarted, cfg, notify, now=lambda: later).reason == "nothing new"
    finally:
        restarted.close()
    assert len(notify.sent) == 1
    reminder = check_alerts(ledger, cfg, notify, now=lambda: T + timedelta(minutes=361))
    assert reminder.sent and len(notify.sent) == 2  # still late after repeat_minutes: said again, once
    assert [m["kinds"] for m in recent_messages(ledger)] == [{"late": 500}, {"late": 500}]


def test_events_are_summarised_and_wait_for_the_rate_limit(ledger: Ledger, cfg: Config) -> None:
    src = ledger.register_sources("data733", [NewSource("p/a.edf", 1, 1.0, "xxh3_128", "c")])[0]
    notify = RecordingNotifier()
    ledger.record_failed("p/a.edf", "cfs", "cfs: No space left on device", source=src)
    first = check_alerts(ledger, cfg, notify, now=lambda: T)
    assert first.sent and [f.kind for f in first.findings] == ["transfer_failed"]
    assert "cfs:p/a.edf: cfs: No space left on device" in notify.sent[0][1]
    for _ in range(3):
        ledger.record_failed("p/a.edf", "cfs", "timeout", source=src)
    limited = check_alerts(ledger, cfg, notify, now=lambda: T + timedelta(minutes=5))
    assert not limited.sent and limited.reason.startswith("rate-limited")
    after = check_alerts(ledger, cfg, notify, now=lambda: T + timedelta(minutes=16))
    assert after.sent and [(f.kind, f.count) for f in after.findings] == [("transfer_failed", 3)]
    assert len(notify.sent) == 2
    assert not check_alerts(ledger, cfg, notify, now=lambda: T + timedelta(minutes=40)).sent


def test_undelivered_messages_are_retried_not_lost(ledger: Ledger, cfg: Config) -> None:
    src = ledger.register_sources("data733", [NewSource("p/a.edf", 1, 1.0, "xxh3_128", "c")])[0]
    ledger.record_failed("p/a.edf", "lamarr", "refused", source=src)
    notify = RecordingNotifier()
    notify.fail = True
    out = check_alerts(ledger, cfg, notify, now=lambda: T)
    assert not out.sent and out.errors and "not delivered" in out.reason
    notify.fail = False
    again = check_alerts(ledger, cfg, notify, now=lambda: T + timedelta(minutes=1))
    assert again.sent and len(notify.sent) == 1
    assert [m["delivered"] for m in recent_messages(ledger)] == [True, False]


def test_outbox_and_expiring_credentials_are_conditions(ledger: Ledger, cfg: Config) -> None:
    with ledger.session() as sess:
        for i in range(3):
            sess.add(OutboxEntry(idempotency_key=f"k{i}", deployment="d/x", paths=["a"], state="pending", attempts=1))
    soon = Expiry("SFAPI client", T + timedelta(days=5), "make a new client in Iris")
    far = Expiry("other", T + timedelta(days=60), "-")
    notify = RecordingNotifier()
    out = check_alerts(ledger, cfg, notify, expiries=[soon, far], now=lambda: T)
    assert sorted(f.kind for f in out.findings) == ["credential", "outbox"]
    body = notify.sent[0][1]
    assert "outbox holds 3 unsent batches (limit 2)" in body and "SFAPI client expires in 5.0 days" in body
    assert "other" not in body
    # the outbox drains: the condition clears; when it returns it is reported again at once
    with ledger.session() as sess:
        sess.execute(update(OutboxEntry).values(state="sent"))
    assert check_alerts(ledger, cfg, notify, expiries=[far], now=lambda: T + timedelta(minutes=20)).reason == \
        "nothing new"
    with ledger.session() as sess:
        sess.execute(update(OutboxEntry).values(state="pending"))
    back = check_alerts(ledger, cfg, notify, expiries=[far], now=lambda: T + timedelta(minutes=40))
    assert back.sent and [f.kind for f in back.findings] == ["outbox"]


def test_nothing_wrong_sends_nothing(ledger: Ledger, cfg: Config) -> None:
    notify = RecordingNotifier()
    assert check_alerts(ledger, cfg, notify, now=lambda: T).reason == "nothing new"
    assert notify.sent == [] and recent_messages(ledger) == []
