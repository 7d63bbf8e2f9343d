"""Send rate limits: a global messages-per-second window and, per recipient domain, a cap on
concurrent sends and a messages-per-minute sliding window.

``SlidingWindow`` is the pure core (explicit ``now``, no clock of its own); ``SendLimits`` is
the shell that waits on a monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        assert limit >= 1 and window_s > 0
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    @classmethod
    def per_second(cls, rate_per_s: float) -> SlidingWindow:
        """A window for a (possibly fractional) rate: 0.5/s is 1 event per 2 s."""
        limit = max(1, math.floor(rate_per_s))
        return cls(limit, limit / rate_per_s)

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before one more event fits; 0 if it fits at once."""
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window_s - now

    def record(self, now: float) -> None:
        self._times.append(now)


_UNLIMITED: AbstractAsyncContextManager[None] = nullcontext()


class SendLimits:
    def __init__(
        self,
        *,
        rate_per_s: float = 0,
        domain_concurrency: int = 0,
        domain_rate_per_min: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._global = SlidingWindow.per_second(rate_per_s) if rate_per_s > 0 else None
        self._domain_concurrency = domain_concurrency
        self._domain_rate_per_min = domain_rate_per_min
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._windows: dict[str, SlidingWindow] = {}
        self._monotonic = monotonic

    def slot(self, domain: str) -> AbstractAsyncContextManager[None]:
        """Hold one of the domain's concurrent slots and wait until both windows allow a send."""
        if self._global is None and self._domain_concurrency <= 0 and self._domain_rate_per_min <= 0:
            return _UNLIMITED  # no limits: nothing to hold or wait for, once per message
        return self._slot(domain)

    @asynccontextmanager
    async def _slot(self, domain: str) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if self._domain_concurrency > 0:
                semaphore = self._semaphores.setdefault(domain, asyncio.Semaphore(self._domain_concurrency))
                await stack.enter_async_context(semaphore)
            windows = [w for w in (self._global, self._domain_window(domain)) if w is not None]
            while True:
                now = self._monotonic()
                wait_s = max((w.delay(now) for w in windows), default=0.0)
                if wait_s <= 0:
                    break
                await asyncio.sleep(wait_s)
            for window in windows:
                window.record(now)
            yield

    def _domain_window(self, domain: str) -> SlidingWindow | None:
        if self._domain_rate_per_min <= 0:
            return None
        window = self._windows.get(domain)
        if window is None:
            window = self._windows[domain] = SlidingWindow(self._domain_rate_per_min, 60.0)
        return window
