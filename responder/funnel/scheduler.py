"""The scheduler: each tick moves due newsletter batches and sequence steps into the outbox,
and runs the sweep when it is due. One scheduler at a time per database (an advisory lock)."""

from __future__ import annotations

import datetime as dt

from ..loop import PollingLoop
from ..runtime import Runtime
from . import newsletters
from .stepper import run_due_steps
from .sweep import SWEEP_EVERY, sweep

SCHEDULER_LOCK = 0x72657370  # advisory lock key shared by every scheduler of one database


class Scheduler(PollingLoop):
    """Moves due sequence steps and newsletter batches into the outbox; sweeps once a day."""

    name = "scheduler"

    def __init__(self, rt: Runtime, *, batch_size: int = 200) -> None:
        super().__init__(rt.scheduler_wake, rt.settings.scheduler_poll_s)
        self.rt = rt
        self.batch_size = batch_size
        self.next_sweep_at: dt.datetime | None = None

    async def run_once(self) -> int:
        # Many `responder worker` processes may share one PostgreSQL: their ticks take turns,
        # so a newsletter's audience is copied once and a step is queued by one tick.
        async with self.rt.db.exclusive(SCHEDULER_LOCK):
            return await self._tick()

    async def _tick(self) -> int:
        rt = self.rt
        now = rt.clock.now()
        # Either order would do: each plans with the other's mail, queued, due or coming.
        async with rt.db.transaction() as session:
            batches = await newsletters.advance(session, now, domain=rt.settings.sender_domain)
        async with rt.db.transaction() as session:
            done = await run_due_steps(session, now, limit=self.batch_size, domain=rt.settings.sender_domain)
        if self.next_sweep_at is None or now >= self.next_sweep_at:
            async with rt.db.transaction() as session:
                await sweep(session, now)
            self.next_sweep_at = now + SWEEP_EVERY
        if done.queued or batches:
            rt.wake_outbox()
        rt.wake_webhooks()
        return done.processed + batches
