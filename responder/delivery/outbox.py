"""The durable outbox: enqueue once, claim with a lease, record each outcome.

A (subscriber, step) or (subscriber, newsletter) pair is inserted at most once (unique keys,
``ON CONFLICT DO NOTHING``). Workers claim due rows with a lease; a worker that dies leaves its
rows in ``sending`` until the lease expires and another worker reclaims them. Outcomes are
written only by the lease holder, so a reclaimed message is never recorded twice.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update

from ..db import Database
from ..dbutil import insert_ignore
from ..models import Message
from .mime import new_message_id

DUE_STATES = ("queued", "deferred")


async def enqueue(
    session: object,
    *,
    subscriber_id: int,
    kind: str,
    template_name: str,
    now: dt.datetime,
    domain: str,
    step_id: int | None = None,
    newsletter_id: int | None = None,
) -> int | None:
    """Queue one message; None if this subscriber already has this step or newsletter."""
    return await insert_ignore(
        session,  # type: ignore[arg-type]
        Message,
        {
            "subscriber_id": subscriber_id,
            "kind": kind,
            "step_id": step_id,
            "newsletter_id": newsletter_id,
            "template_name": template_name,
            "state": "queued",
            "attempts": 0,
            "next_attempt_at": now,
            "message_id": new_message_id(domain),
            "created_at": now,
        },
    )


async def claim(db: Database, *, owner: str, now: dt.datetime, limit: int, lease_s: int) -> list[int]:
    """Lease up to ``limit`` due messages to ``owner``; their ids, oldest first."""
    due = or_(
        and_(Message.state.in_(DUE_STATES), Message.next_attempt_at <= now),
        and_(Message.state == "sending", Message.lease_expires_at < now),
    )
    async with db.transaction() as session:
        ids = list(
            (
                await session.execute(
                    select(Message.id)
                    .where(due)
                    .order_by(Message.next_attempt_at, Message.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if ids:
            await session.execute(
                update(Message)
                .where(Message.id.in_(ids))
                .values(
                    state="sending",
                    lease_owner=owner,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    attempts=Message.attempts + 1,
                )
            )
    return ids


async def finish(
    session: object, message_id: int, owner: str, **values: object
) -> bool:
    """Record an outcome if ``owner`` still holds the lease; False if it was lost."""
    result = await session.execute(  # type: ignore[attr-defined]
        update(Message)
        .where(Message.id == message_id, Message.lease_owner == owner, Message.state == "sending")
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return bool(result.rowcount)


async def finish_many(session: object, message_ids: list[int], owner: str,
                      **values: object) -> list[int]:
    """``finish`` for many messages with the same outcome values in one statement; the ids
    whose lease ``owner`` still held."""
    if not message_ids:
        return []
    result = await session.execute(  # type: ignore[attr-defined]
        update(Message)
        .where(Message.id.in_(message_ids), Message.lease_owner == owner,
               Message.state == "sending")
        .values(lease_owner=None, lease_expires_at=None, **values)
        .returning(Message.id)
    )
    return list(result.scalars())


async def renew(db: Database, message_ids: list[int], owner: str, *, now: dt.datetime,
                lease_s: int) -> int:
    """Extend ``owner``'s lease on those of ``message_ids`` it still holds; how many."""
    async with db.transaction() as session:
        result = await session.execute(
            update(Message)
            .where(Message.id.in_(message_ids), Message.lease_owner == owner,
                   Message.state == "sending")
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_s))
        )
    return int(result.rowcount)  # type: ignore[attr-defined]
