"""The reply hold's one writer (``Subscriber.held_until``): a human reply holds the subscriber's
counted mail (core.hold), answering or closing its enquiry releases it; each change plans their
waiting mail again (funnel.ledger), so held rows move after the hold and released ones move back
to the first moment the caps allow."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.hold import held, hold_after_reply, hold_after_settling
from ..models import Enquiry, Subscriber
from .enrollments import look_again
from .ledger import replan


async def hold_for_reply(session: AsyncSession, subscriber: Subscriber, now: dt.datetime, hold_s: int) -> None:
    """A person replied just now: hold their drip steps and newsletters."""
    current = subscriber.held_until if held(subscriber.held_until, now) else None
    until = hold_after_reply(current, now, hold_s)
    if until != subscriber.held_until:
        subscriber.held_until = until
        await session.flush()
        await replan(session, {subscriber.id}, now)


async def release_after_settling(session: AsyncSession, subscriber_id: int, now: dt.datetime, hold_s: int) -> None:
    """An enquiry of theirs was answered or closed: the hold ends, unless another reply of
    theirs still waits for an answer (then it lasts as long as that one's would)."""
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.held_until is None:
        return
    waiting = (
        await session.execute(
            select(Enquiry.created_at).where(
                Enquiry.subscriber_id == subscriber_id, Enquiry.source == "reply", Enquiry.state == "open"
            )
        )
    ).scalars()
    until = hold_after_settling(list(waiting), hold_s, now)
    if until != subscriber.held_until:
        subscriber.held_until = until
        await session.flush()
        await replan(session, {subscriber_id}, now)
        await look_again(session, subscriber_id, now)
