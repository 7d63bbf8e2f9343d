"""A sliding-window rate limiter kept in memory, with an explicit ``now`` and bounded size.

Each key (an IP, an address) keeps the times of its recent hits; a hit is allowed while fewer than
``limit`` fall inside the window. When more than ``max_keys`` keys are tracked the least recently
used are forgotten, so a flood of distinct keys costs bounded memory (and at worst lets a
forgotten key start afresh).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

from ..errors import RateLimited


class SlidingWindow:
    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """0 if a hit is allowed now, else the seconds until it will be; does not record."""
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) < self.limit:
            return 0.0
        return hits[0] + self.window_s - now

    def hit(self, key: str, now: float) -> float:
        """Record a hit if allowed; 0 when recorded, else the seconds to wait (nothing recorded)."""
        wait = self.retry_after(key, now)
        if wait > 0:
            return wait
        hits = self._hits.setdefault(key, deque())
        hits.append(now)
        self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return 0.0


def check(limiter: SlidingWindow, key: str, now: float, what: str) -> None:
    """Record a hit or raise ``RateLimited`` with a whole number of seconds to wait."""
    wait = limiter.hit(key, now)
    if wait > 0:
        raise RateLimited(f"too many requests for this {what}; try again later", retry_after_s=max(1, math.ceil(wait)))
