"""Is this host's clock sane enough to delete by? The guard prune runs before it deletes anything.

Pruning is the one step where a wrong clock destroys data: a clock that jumps a year forward makes every copy
look due. Due dates live in the ledger (acquisition time + the rule, set when the copy was verified), so the
only thing a prune run takes from its host is "now" -- and it checks that "now" against two witnesses it does
not control before trusting it:

- the ledger database server's own clock (PostgreSQL ``now()``; another machine in production): a skew over
  the tolerance refuses the run;
- the newest time a move recorded (``detected`` / ``copied`` / ``verified`` / ``skipped`` events, stamped by
  the moving processes' clocks, never by a prune's): a "now" earlier than that by more than the tolerance means
  the clock went back (or jumped forward and back), so the run is refused too -- it would judge due dates by a
  time that the ledger proves wrong.

On SQLite there is no second clock (the database is a file on this host), so only the second witness applies
and a forward jump cannot be told from a long quiet period there. A refusal is recorded by the caller as a
``prune_refused`` event without a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text

from splash_flows.errors import PruneRefused
from splash_flows.ledger.models import Event, EventKind
from splash_flows.ledger.store import Ledger

MAX_SKEW = timedelta(minutes=5)
MOVE_KINDS = [EventKind.DETECTED, EventKind.COPIED, EventKind.VERIFIED, EventKind.SKIPPED]


@dataclass(frozen=True)
class ClockCheck:
    """What the clock was compared with: the ledger server's time (None on SQLite) and the newest event."""

    now: datetime
    ledger_server_now: datetime | None
    newest_event: datetime | None


def check_clock(ledger: Ledger, now: datetime, *, max_skew: timedelta = MAX_SKEW) -> ClockCheck:
    """Raise ``PruneRefused`` when ``now`` disagrees with the ledger server's clock or precedes the newest
    ledger event by more than ``max_skew``; return the evidence otherwise."""
    with ledger.session() as sess:
        newest = sess.scalar(select(func.max(Event.at)).where(Event.kind.in_(MOVE_KINDS)))
        server_now: datetime | None = None
        if sess.get_bind().dialect.name == "postgresql":
            server_now = sess.execute(text("SELECT now()")).scalar_one()
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    if server_now is not None and abs(now - server_now) > max_skew:
        raise PruneRefused(f"this host's clock says {now.isoformat()} but the ledger server's says "
                           f"{server_now.isoformat()} (more than {max_skew} apart): no copy is deleted by a clock "
                           "that may be wrong; fix the time (NTP) and prune again")
    if newest is not None and now < newest - max_skew:
        raise PruneRefused(f"this host's clock says {now.isoformat()} but the ledger recorded an event at "
                           f"{newest.isoformat()}: the clock went back (or jumped and came back); no copy is "
                           "deleted until the clock is past the ledger's newest record")
    return ClockCheck(now, server_now, newest)
