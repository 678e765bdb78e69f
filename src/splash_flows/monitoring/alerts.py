"""Alerts: tell an operator, once, when data is not safe or a step needs a person.

What is alerted on:

- **late**: files not safe (verified on every move target) within ``monitoring.safe_within_minutes``;
- **at_risk**: a copy the ledger held verified failed its re-check (event ``at_risk``);
- **prune_refused**: a due copy was not deleted because a check failed (event ``prune_refused``);
- **transfer_failed**: a copy failed after its retries (event ``failed``);
- **outbox**: the watcher's outbox holds more unsent batches than ``alerts.outbox_limit``;
- **credential**: a credential (the SFAPI key ...) expires within ``alerts.credential_warn_days``.

One check (``check_alerts``) sends at most ONE message through Apprise to every configured URL, summarising
everything new since the last message (500 late files are one line with a count and a few examples, not 500
messages), with links to the data-safety page. Events are read from the ledger's log after a cursor; conditions
are re-reported only after ``alerts.repeat_minutes`` while they hold, and again as soon as they return after
clearing. Messages are at most one per ``alerts.min_interval_minutes``; what happens in between waits for the next.
The cursor, the conditions and every message sent are kept in the ledger (``alert_state``, ``alert_messages``),
in the same transaction, so a restarted process never sends the same thing twice.

Delivery: a message counts as sent when at least one URL accepted it (the others are named in the message's
``error`` and in the log); when none did, nothing advances and the next check tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select

from splash_flows.config import Config
from splash_flows.ledger.models import AlertMessage, AlertState, Event, EventKind
from splash_flows.ledger.safety import list_files, overview
from splash_flows.ledger.store import Ledger

log = logging.getLogger(__name__)

EVENT_ALERTS = {  # event kind -> (alert kind, headline)
    EventKind.AT_RISK: ("at_risk", "copies AT RISK (held verified, failed their re-check)"),
    EventKind.PRUNE_REFUSED: ("prune_refused", "prunes refused"),
    EventKind.FAILED: ("transfer_failed", "copies failed after their retries"),
}
PAGE_LINK = {"late": "#flag=late", "at_risk": "#flag=at_risk", "prune_refused": "#flag=due",
             "transfer_failed": "#flag=failed", "outbox": "", "credential": ""}


@dataclass(frozen=True)
class Expiry:
    """A credential that expires: what it is, when, and what to do."""

    name: str
    expires_at: datetime
    hint: str


@dataclass
class Finding:
    """One kind of trouble in one message: how many, a headline, a few examples."""

    kind: str
    count: int
    headline: str
    examples: list[str] = field(default_factory=list)
    key: str = ""  # the condition key (conditions only)


@dataclass
class AlertOutcome:
    """What one check did: the findings, whether a message went out, and why not otherwise."""

    findings: list[Finding]
    sent: bool
    reason: str
    message_id: int | None = None
    errors: list[str] = field(default_factory=list)


class Notifier(Protocol):
    """Sends one message to every target; returns an error line per target that did not accept it."""

    def __call__(self, title: str, body: str) -> list[str]: ...


def apprise_notifier(urls: Sequence[str]) -> Notifier:
    """Apprise, one target per URL, so a failing target is named (by Apprise's privacy form of its URL)."""
    import apprise

    targets = []
    for url in urls:
        server = apprise.Apprise.instantiate(url)
        if server is None:
            raise ValueError("an alerts URL is not one Apprise understands (check its scheme: mailto://, json://, "
                             "slack:// ...)")
        targets.append(server)

    def send(title: str, body: str) -> list[str]:
        errors = []
        for server in targets:
            if not server.notify(body=body, title=title, body_format=apprise.NotifyFormat.TEXT):
                shown = server.url(privacy=True)  # type: ignore[no-untyped-call]
                errors.append(f"{shown}: not accepted (see the log for Apprise's reason)")
        return errors

    return send


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _load_state(ledger: Ledger) -> dict[str, dict[str, Any]]:
    with ledger.session() as sess:
        return {row.key: dict(row.value or {}) for row in sess.scalars(select(AlertState))}


def _event_findings(ledger: Ledger, after: int, top: int, limit: int) -> list[Finding]:
    found: list[Finding] = []
    with ledger.session() as sess:
        for ev_kind, (kind, headline) in EVENT_ALERTS.items():
            where = (Event.kind == ev_kind, Event.id > after, Event.id <= top)
            n = sess.scalar(select(func.count()).select_from(Event).where(*where)) or 0
            if not n:
                continue
            rows = sess.execute(select(Event.tier, Event.path, Event.detail).where(*where)
                                .order_by(Event.id).limit(limit))
            examples = [f"{tier or '?'}:{path or '?'}: {_reason(detail)}" for tier, path, detail in rows]
            found.append(Finding(kind, int(n), f"{n} {headline}", examples))
    return found


def _reason(detail: Any) -> str:
    if isinstance(detail, dict):
        for key in ("reason", "why", "error"):
            if detail.get(key):
                return str(detail[key])[:300]
    return "see the file's history"


def _condition_findings(ledger: Ledger, config: Config, now: datetime, expiries: Sequence[Expiry],
                        limit: int) -> list[Finding]:
    ov = overview(ledger, config, now=now)
    found: list[Finding] = []
    if ov.late:
        age = now - ov.oldest_not_safe if ov.oldest_not_safe else timedelta(0)
        examples = [f.path for f in list_files(ledger, config, flag="late", limit=limit, now=now)]
        found.append(Finding("late", ov.late, f"{ov.late} files not safe within "
                             f"{config.monitoring.safe_within_minutes:g} min (oldest detected {_ago(age)} ago)",
                             examples, key="condition:late"))
    pending = ov.outbox.get("pending", 0)
    if pending > config.alerts.outbox_limit:
        found.append(Finding("outbox", pending, f"the watcher's outbox holds {pending} unsent batches (limit "
                             f"{config.alerts.outbox_limit}): Prefect is not accepting runs", key="condition:outbox"))
    warn = timedelta(days=config.alerts.credential_warn_days)
    for e in expiries:
        left = e.expires_at - now
        if left <= warn:
            state = "EXPIRED" if left <= timedelta(0) else f"expires in {_ago(left)}"
            found.append(Finding("credential", 1, f"{e.name} {state} ({e.expires_at:%Y-%m-%d %H:%M} UTC): {e.hint}",
                                 key=f"condition:credential:{e.name}"))
    return found


def _ago(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def compose(config: Config, findings: Sequence[Finding]) -> tuple[str, str]:
    """Title and plain-text body of one message summarising every finding."""
    parts = [f"{f.count} {f.kind.replace('_', ' ')}" if f.kind != "credential" else "credential expiring"
             for f in findings]
    title = f"[splash-flows {config.beamline}] " + ", ".join(parts)
    page = config.monitoring.url()
    lines: list[str] = []
    for f in findings:
        lines.append(f"* {f.headline}")
        lines += [f"    - {x}" for x in f.examples]
        if f.count > len(f.examples) and f.examples:
            lines.append(f"    ... and {f.count - len(f.examples)} more")
        link = PAGE_LINK.get(f.kind, "")
        lines.append(f"    see {page}{link}")
    lines.append("")
    lines.append(f"Data-safety page: {page}   (every file's history is one click away)")
    return title[:250], "\n".join(lines)


def check_alerts(ledger: Ledger, config: Config, notify: Notifier, *, expiries: Sequence[Expiry] = (),
                 now: Callable[[], datetime] = _utcnow) -> AlertOutcome:
    """Look for trouble, send at most one message, and record what was sent (see the module's docstring)."""
    at = now()
    state = _load_state(ledger)
    limit = config.alerts.max_examples
    with ledger.session() as sess:
        top = int(sess.scalar(select(func.max(Event.id))) or 0)
    after = int(state.get("events", {}).get("last_id", 0))
    findings = _event_findings(ledger, after, top, limit)
    conditions = _condition_findings(ledger, config, at, expiries, limit)
    repeat = timedelta(minutes=config.alerts.repeat_minutes)
    active_keys = {f.key for f in conditions}
    for f in conditions:
        prev = state.get(f.key, {})
        sent_at = prev.get("last_sent")
        if not prev.get("active") or not sent_at or at - datetime.fromisoformat(sent_at) >= repeat:
            findings.append(f)
    cleared = [k for k, v in state.items() if k.startswith("condition:") and v.get("active") and k not in active_keys]
    if not findings:
        _save(ledger, at, top if top > after else None, conditions, cleared, sent=False)
        return AlertOutcome([], False, "nothing new")
    last = state.get("last_message", {}).get("at")
    if last and at - datetime.fromisoformat(last) < timedelta(minutes=config.alerts.min_interval_minutes):
        return AlertOutcome(findings, False, "rate-limited: a message went out less than "
                            f"{config.alerts.min_interval_minutes:g} min ago; this waits for the next one")
    title, body = compose(config, findings)
    errors = notify(title, body) if config.alerts.urls else ["no alerts.urls configured"]
    delivered = len(errors) < max(len(config.alerts.urls), 1)
    for err in errors:
        log.warning("alert not delivered: %s", err)
    message_id = _save(ledger, at, top if delivered else None, conditions, cleared, sent=delivered,
                       message=(title, body, {f.kind: f.count for f in findings}, errors), findings=findings)
    return AlertOutcome(findings, delivered, "sent" if delivered else "not delivered: " + "; ".join(errors),
                        message_id, errors)


def _save(ledger: Ledger, at: datetime, last_id: int | None, conditions: Sequence[Finding], cleared: Sequence[str],
          *, sent: bool, message: tuple[str, str, dict[str, int], list[str]] | None = None,
          findings: Sequence[Finding] = ()) -> int | None:
    """Record the check in one transaction: the message, the event cursor, the conditions."""
    reported = {f.key for f in findings if f.key}
    with ledger.session() as sess:
        def put(key: str, value: dict[str, Any]) -> None:
            row = sess.get(AlertState, key)
            if row is None:
                sess.add(AlertState(key=key, value=value, updated_at=at))
            else:
                row.value, row.updated_at = value, at

        message_id = None
        if message is not None:
            title, body, kinds, errors = message
            row = AlertMessage(at=at, title=title, body=body, kinds=kinds, delivered=sent,
                               error="; ".join(errors) or None)
            sess.add(row)
            sess.flush()
            message_id = row.id
        if not sent and message is not None:
            return message_id  # nothing reached anyone: keep the cursor and conditions, try again next time
        if last_id is not None:
            put("events", {"last_id": last_id})
        for f in conditions:
            prev = sess.get(AlertState, f.key)
            value = dict(prev.value) if prev is not None else {}
            value.update({"active": True, "count": f.count})
            if f.key in reported:
                value["last_sent"] = at.isoformat()
            put(f.key, value)
        for key in cleared:
            put(key, {"active": False, "cleared_at": at.isoformat()})
        if sent:
            put("last_message", {"at": at.isoformat(), "id": message_id})
        return message_id


def recent_messages(ledger: Ledger, limit: int = 20) -> list[dict[str, Any]]:
    """The latest messages (newest first), for the page and ``alerts --json``."""
    with ledger.session() as sess:
        rows = sess.scalars(select(AlertMessage).order_by(AlertMessage.id.desc()).limit(limit))
        return [{"id": r.id, "at": r.at.isoformat(), "title": r.title, "kinds": r.kinds, "delivered": r.delivered,
                 "error": r.error} for r in rows]

