"""The durable outbox: enqueue once, claim with a lease, record each outcome.

A (subscriber, step) or (subscriber, newsletter) pair is inserted at most once (unique keys,
``ON CONFLICT DO NOTHING``). Workers claim due rows with a lease; a worker that dies leaves its
rows in ``sending`` until the lease expires and another worker reclaims them. Outcomes are
written only by the lease holder, so a reclaimed message is never recorded twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, TextClause, exists, select, union_all, update
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import Database
from ..dbutil import insert_ignore
from ..models import MESSAGES_DUE_STATES_SQL, DeliveryControl, Message
from .controls import PAUSED
from .mime import new_message_id

DUE_STATES = ("queued", "deferred")

AnySelect = Select[*tuple[Any, ...]]
AnyRow = Row[*tuple[Any, ...]]


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


def _due_states(session: AsyncSession) -> TextClause:
    """The due states as the partial index ``ix_messages_due_order`` states them, qualified."""
    dialect = session.get_bind().dialect.name
    states = MESSAGES_DUE_STATES_SQL.get(dialect, MESSAGES_DUE_STATES_SQL["postgresql"])
    return sql_text(states.replace("state IN", "messages.state IN"))


def _not_paused() -> ColumnElement[bool]:
    return ~exists().where(DeliveryControl.name == PAUSED, DeliveryControl.value == "1")


async def claim(db: Database, *, owner: str, now: dt.datetime, limit: int, lease_s: int) -> list[int]:
    """Lease up to ``limit`` due messages to ``owner``; their ids, oldest first. None while
    sending is paused."""
    async with db.transaction() as session:
        rows = await claim_in(session, owner=owner, now=now, limit=limit, lease_s=lease_s)
    return [row.id for row in rows]


async def claim_in(
    session: AsyncSession,
    *,
    owner: str,
    now: dt.datetime,
    limit: int,
    lease_s: int,
    shape: Callable[[AnySelect], AnySelect] | None = None,
) -> list[AnyRow]:
    """``claim`` inside the caller's transaction, returning rows, oldest first: ``id``,
    ``next_attempt_at``, ``attempts`` (before this attempt is counted) and whatever ``shape``
    adds to the select of ``messages`` (columns, outer joins; one row per message).

    Two index walks pick the rows, each stopping after ``limit``: the due states in claim order
    (a partial index) and expired leases (in-flight rows only). The picks are subqueries of
    their own, so the planner cannot trade the ordered walk for a sort of the whole backlog to
    suit what ``shape`` joins. The pause flag is read in the same statement: once a pause is
    committed, claims find nothing.
    """
    picks = [
        select(Message.id).where(*where, _not_paused())
        .order_by(Message.next_attempt_at, Message.id).limit(limit)
        .with_for_update(skip_locked=True)
        .subquery(name)
        for name, where in (
            ("due", (_due_states(session), Message.next_attempt_at <= now)),
            ("expired", (Message.state == "sending", Message.lease_expires_at < now)),
        )
    ]
    picked = union_all(*(select(pick.c.id) for pick in picks)).subquery("picked")
    query: AnySelect = (select(Message.id, Message.next_attempt_at, Message.attempts)
                        .select_from(picked.join(Message, Message.id == picked.c.id)))
    if shape is not None:
        query = shape(query)
    rows: list[AnyRow] = list((await session.execute(query)).all())
    # Oldest first across both picks; rows locked beyond the batch are let go at commit.
    rows = sorted(rows, key=lambda row: (row.next_attempt_at, row.id))[:limit]
    if rows:
        await session.execute(
            update(Message)
            .where(Message.id.in_([row.id for row in rows]))
            .values(
                state="sending",
                lease_owner=owner,
                lease_expires_at=now + dt.timedelta(seconds=lease_s),
                attempts=Message.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
    return rows


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
        .execution_options(synchronize_session=False)
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
