"""The scheduler: each tick moves due newsletter batches and sequence steps into the outbox,
and runs the sweep when it is due. One scheduler at a time per database (an advisory lock)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete

from ..audience import limits
from ..db import Database
from ..loop import PollingLoop
from ..models import InboundMail
from ..runtime import Runtime
from . import newsletters
from .judge import Judged
from .stepper import run_due_steps
from .sweep import sweep

SCHEDULER_LOCK = 0x72657370  # advisory lock key shared by every scheduler of one database


async def sweep_on_demand(db: Database, now: dt.datetime, domain: str) -> list[Judged]:
    """A whole sweep now (``responder funnel sweep``, ``POST /api/v1/funnel/sweep``), taking
    the schedulers' turn so it never judges a subscriber at the same time as one of them."""
    async with db.exclusive(SCHEDULER_LOCK), db.transaction() as session:
        return await sweep(session, now, domain=domain)


def moves_json(made: list[Judged]) -> list[dict[str, object]]:
    """The moves and sunsets a sweep made, as the API and the command line show them."""
    return [
        {
            "subscriber_id": j.subscriber_id,
            "to_layer": j.decision.target_position,
            "sunset": j.decision.sunset,
            "reason": j.decision.reason,
        }
        for j in made
    ]


INBOUND_REMEMBERED = dt.timedelta(days=30)  # how long inbound Message-IDs are kept to spot copies


class Scheduler(PollingLoop):
    """Moves due sequence steps and newsletter batches into the outbox; sweeps at start and then
    every ``sweep_every_s``."""

    name = "scheduler"

    def __init__(self, rt: Runtime, *, batch_size: int = 200) -> None:
        super().__init__(rt.scheduler_wake, rt.settings.scheduler_poll_s)
        self.rt = rt
        self.batch_size = batch_size
        self.swept_at: dt.datetime | None = None  # this process's last sweep

    async def run_once(self) -> int:
        # Many `responder worker` processes may share one PostgreSQL: their ticks take turns,
        # so a newsletter's audience is copied once and a step is queued by one tick.
        async with self.rt.db.exclusive(SCHEDULER_LOCK):
            return await self._tick()

    async def _tick(self) -> int:
        rt = self.rt
        now = rt.clock.now()
        # The sweep goes first: whoever it sunsets or moves gets no mail of their old standing
        # in the same tick.
        every = dt.timedelta(seconds=rt.settings.sweep_every_s)
        if self.swept_at is None or now >= self.swept_at + every:
            async with rt.db.transaction() as session:
                await sweep(session, now, since=self.swept_at, domain=rt.settings.sender_domain)
                # A mail delivered again is one the sender retried within days, not months.
                await session.execute(delete(InboundMail).where(InboundMail.received_at < now - INBOUND_REMEMBERED))
                await limits.prune(session, now)
            self.swept_at = now
        # Either order would do for these two: each plans with the other's mail, queued, due or coming.
        async with rt.db.transaction() as session:
            batches = await newsletters.advance(session, now, domain=rt.settings.sender_domain)
        async with rt.db.transaction() as session:
            done = await run_due_steps(session, now, limit=self.batch_size, domain=rt.settings.sender_domain)
        if done.queued or batches:
            rt.wake_outbox()
        rt.wake_webhooks()
        return done.processed + batches
