"""The shape shared by the scheduler and the delivery worker: do a unit of work, idle when
there was none, wake early when told, stop between units."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class PollingLoop:
    name = "loop"

    def __init__(self, wake: asyncio.Event, poll_s: float) -> None:
        self._wake = wake
        self._poll_s = poll_s
        self._stopping = asyncio.Event()

    async def run_once(self) -> int:
        raise NotImplementedError

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.run_once()
            except Exception:  # the loop must outlive one bad unit (a database blip, …)
                log.exception("%s: unit of work failed", self.name)
                done = 0
            if done == 0:
                await self._idle()

    async def _idle(self) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stopping.wait())]
        await asyncio.wait(waiters, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        self._wake.clear()

    def stop(self) -> None:
        self._stopping.set()
