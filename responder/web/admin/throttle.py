"""Failed sign-ins slow an attacker down: after ``max_failures`` failures for one username
within ``window_s``, that username is refused until the oldest failure leaves the window.
Kept in memory, per process; a pure function of the failures it was told and ``now``."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict, deque

MAX_FAILURES = 10
WINDOW_S = 900


class SignInThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: int = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window = dt.timedelta(seconds=window_s)
        self.failures: defaultdict[str, deque[dt.datetime]] = defaultdict(deque)

    def _recent(self, key: str, now: dt.datetime) -> deque[dt.datetime]:
        times = self.failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[key]
        return times

    def wait_s(self, key: str, now: dt.datetime) -> int:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._recent(key.lower(), now)
        if len(times) < self.max_failures:
            return 0
        return max(1, int((times[0] + self.window - now).total_seconds()))

    def failed(self, key: str, now: dt.datetime) -> None:
        self._recent(key.lower(), now)
        self.failures[key.lower()].append(now)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key.lower(), None)
