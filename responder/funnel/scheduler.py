"""The scheduler: each tick moves due newsletter batches and sequence steps into the outbox,
and runs the sweep when it is due. One scheduler at a time per database (an advisory lock)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import delete

from ..audience import limits
from ..db import Database
from ..loop import PollingLoop
from ..models import InboundMail
from ..runtime import Runtime
from . import governor, newsletters, rollup
from .judge import Judged
from .stepper import run_due_steps
from .sweep import sweep

log = logging.getLogger(__name__)

SCHEDULER_LOCK = 0x72657370  # advisory lock key shared by every scheduler of one database
GOVERNOR_LOCK = 0x72657371  # one complaint governor at a time


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
        self.governed_at: dt.datetime | None = None  # the complaint governor's last count
        self.complaint_seen = -1  # the newest complaint it counted
        self.rolled_at: dt.datetime | None = None  # the last roll-up
        self._governing: asyncio.Task[None] | None = None

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
        await self._govern(now)
        await self._roll_up(now)
        rt.wake_webhooks()
        return done.processed + batches

    async def _roll_up(self, now: dt.datetime) -> None:
        """Count new events into the daily figures and prune what the retention period no
        longer keeps, every ``rollup_every_s`` (``funnel.rollup``); a failure waits for the next."""
        every = dt.timedelta(seconds=self.rt.settings.rollup_every_s)
        if self.rolled_at is not None and now < self.rolled_at + every:
            return
        self.rolled_at = now
        try:
            await rollup.roll(self.rt.db, now)
            await rollup.prune(self.rt.db, self.rt.settings, now)
        except Exception:
            log.exception("the roll-up could not count")

    async def _govern(self, now: dt.datetime) -> None:
        """Start the complaint governor when its time has come or a complaint is new; it runs
        beside the ticks (its MX look-ups can take seconds), one run at a time."""
        if self._governing is not None and not self._governing.done():
            return
        async with self.rt.db.read() as session:
            newest = await governor.latest_complaint(session)
        every = dt.timedelta(seconds=self.rt.settings.governor_every_s)
        if newest == self.complaint_seen and self.governed_at is not None and now < self.governed_at + every:
            return
        self.governed_at, self.complaint_seen = now, newest
        self._governing = self.rt.start_background(self._run_governor(now))

    async def _run_governor(self, now: dt.datetime) -> None:
        db = self.rt.db
        # SQLite has one scheduler (this one, which runs one count at a time); PostgreSQL many.
        lock = contextlib.nullcontext() if db.is_sqlite else db.exclusive(GOVERNOR_LOCK)
        try:
            async with lock:
                await governor.run(db, self.rt.settings, now)
        except Exception:  # counted again at the next turn
            log.exception("the complaint governor could not count")
        self.rt.wake_webhooks()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._governing is not None:
            self._governing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._governing
