"""The warm-up schedule's shell: counting each provider's list mail today in the database (one
upsert counter per provider and day, shared by every worker process), and what the admin sees:
the caps, what went today and what is held until when. The decisions are ``core.warmup``'s."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..audience import limits
from ..core.governor import PROVIDERS
from ..core.warmup import HELD, Schedule, Verdict, judge
from ..models import Message, RateLimit

WINDOW_S = 86400  # a UTC day: the counter's windows start at multiples of it


def bucket(provider: str, day: int) -> str:
    return f"warmup:{provider}:{day}"


async def count(session: AsyncSession, schedule: Schedule, provider: str, now: dt.datetime) -> Verdict:
    """Count one list mail to ``provider`` now, and say whether it may go."""
    cap = schedule.cap(now)
    if cap is None:
        return Verdict(None)
    over = await limits.hit(session, bucket(provider, schedule.day(now)), now, limit=cap, window_s=WINDOW_S) > 0
    return judge(schedule, provider, cap + 1 if over else 1, now)


@dataclass(frozen=True)
class Status:
    """What the admin page shows."""

    caps: tuple[int, ...]
    start: dt.date
    day: int
    cap: int | None  # today's, per provider; None: not capped today
    sent: dict[str, int]  # list mail let through today, per provider
    held: list[tuple[dt.datetime, int]]  # (goes at, messages), soonest first


async def status(session: AsyncSession, schedule: Schedule, now: dt.datetime) -> Status:
    day, cap = schedule.day(now), schedule.cap(now)
    at = int(now.timestamp())
    rows = await session.execute(
        select(RateLimit.bucket, RateLimit.hits).where(
            RateLimit.bucket.in_([bucket(p, day) for p in PROVIDERS]), RateLimit.window_start == at - at % WINDOW_S
        )
    )
    hits = {name.rsplit(":", 2)[1]: count for name, count in rows}
    sent = {p: min(hits.get(p, 0), cap) if cap is not None else hits.get(p, 0) for p in PROVIDERS}
    # Held mail waits in the future, so the outbox's (state, next_attempt_at) index serves this.
    held = await session.execute(
        select(Message.next_attempt_at, func.count())
        .where(Message.state == "deferred", Message.next_attempt_at > now, Message.last_error.startswith(HELD))
        .group_by(Message.next_attempt_at)
        .order_by(Message.next_attempt_at)
    )
    return Status(schedule.caps, schedule.start, day, cap, sent, [(when, n) for when, n in held])
