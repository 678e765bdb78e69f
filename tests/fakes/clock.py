"""A clock tests move by hand: pruning is about months passing, and tests must never sleep."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """Callable like ``services.prune.system_clock``; returns ``now`` until ``advance`` moves it."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
