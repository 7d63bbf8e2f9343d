"""Time as an injectable dependency: the system clock in production, a movable one in tests."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def micros_of(at: dt.datetime) -> int:
    """An aware time as integer microseconds since the epoch (exact, unlike a float)."""
    return (at - EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> dt.datetime:
    """The aware UTC time ``micros_of`` gave these microseconds for."""
    return EPOCH + dt.timedelta(microseconds=micros)


class Clock(Protocol):
    def now(self) -> dt.datetime: ...

    def micros(self) -> int:
        """``now()`` as ``micros_of`` gives it; what the open pixel stamps its hits with."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return utcnow()

    def micros(self) -> int:
        return time.time_ns() // 1000


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def micros(self) -> int:
        return micros_of(self._now)

    def advance(self, seconds: float = 0, **kwargs: float) -> dt.datetime:
        self._now += dt.timedelta(seconds=seconds, **kwargs)
        return self._now
