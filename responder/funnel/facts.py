"""Where the facts about a subscriber are written: their events, their status and their last
human activity. Nothing else in the server inserts an event row or sets a status; what follows
from an event (webhooks, sequences, judging) is the recording service's (``funnel.events``).

Bulk paths write the same facts with statements of their own, for speed, and are named here
so nobody looks for another: opens and clicks are inserted, and ``last_human_at`` touched, by
the tracking writer process in its own SQLite transaction (``tracking.writer``) or by the
tracker at driver level (``tracking.batch.insert_events``, then ``touch_activity``); delivery
inserts one ``sent`` event per sent message from the outbox rows (``SENT_EVENTS``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ..core.status import REACHED_FROM
from ..models import Event, Message, Subscriber

EVENTS = cast(Table, Event.__table__)
_m = cast(Table, Message.__table__)
SENT_EVENTS = insert(EVENTS).from_select(
    ["subscriber_id", "message_id", "type", "machine", "data", "created_at"],
    select(
        _m.c.subscriber_id,
        _m.c.id,
        literal("sent", EVENTS.c.type.type),
        literal(False, EVENTS.c.machine.type),
        literal({}, EVENTS.c.data.type),
        bindparam("now", type_=EVENTS.c.created_at.type),
    )
    .where(_m.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_m.c.id),
)  # parameters: ids (sent message ids), now


async def add_event(
    session: AsyncSession,
    subscriber_id: int,
    type: str,
    now: dt.datetime,
    *,
    message_id: int | None = None,
    url: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    machine: bool = False,
    data: dict[str, Any] | None = None,
) -> Event:
    """One event row, flushed so it has its id."""
    event = Event(
        subscriber_id=subscriber_id,
        message_id=message_id,
        type=type,
        url=url,
        ip=ip,
        user_agent=user_agent,
        machine=machine,
        data=data or {},
        created_at=now,
    )
    session.add(event)
    await session.flush()
    return event


async def add_events(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Many event rows in one statement (keys: ``Event``'s columns)."""
    if rows:
        await session.execute(insert(Event), rows)


async def set_status(session: AsyncSession, subscriber_ids: Iterable[int], status: str, now: dt.datetime) -> list[int]:
    """Change these subscribers to ``status`` where ``core.status`` allows it from where they
    are; the ids that changed. Leaving for ``unsubscribed`` or ``complained`` stamps
    ``unsubscribed_at``; confirming stamps ``confirmed_at`` (the first time)."""
    ids = sorted(set(subscriber_ids))
    if not ids:
        return []
    values: dict[str, Any] = {"status": status}
    if status in ("unsubscribed", "complained"):
        values["unsubscribed_at"] = case((Subscriber.unsubscribed_at.is_(None), now), else_=Subscriber.unsubscribed_at)
    if status == "active":
        values["confirmed_at"] = case((Subscriber.confirmed_at.is_(None), now), else_=Subscriber.confirmed_at)
    changed = sorted(
        (
            await session.execute(
                update(Subscriber)
                .where(Subscriber.id.in_(ids), Subscriber.status.in_(REACHED_FROM[status]))
                .values(**values)
                .returning(Subscriber.id)
                .execution_options(synchronize_session=False)
            )
        ).scalars()
    )
    for subscriber in _loaded(session, changed):
        set_committed_value(subscriber, "status", status)
        for column in ("unsubscribed_at", "confirmed_at"):
            if column in values and getattr(subscriber, column) is None:
                set_committed_value(subscriber, column, now)
    return changed


async def touch_activity(session: AsyncSession, latest: Mapping[int, dt.datetime]) -> None:
    """Record each subscriber's latest human event time, never moving it backwards."""
    for subscriber_id, at in latest.items():
        await session.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber_id,
                (Subscriber.last_human_at.is_(None)) | (Subscriber.last_human_at < at),
            )
            .values(last_human_at=at)
            .execution_options(synchronize_session=False)
        )
    for subscriber in _loaded(session, latest):
        if subscriber.last_human_at is None or subscriber.last_human_at < latest[subscriber.id]:
            set_committed_value(subscriber, "last_human_at", latest[subscriber.id])


def _loaded(session: AsyncSession, ids: Iterable[int]) -> list[Subscriber]:
    """The subscribers among ``ids`` this session holds as objects: a bulk statement does not
    update them, and an expired attribute cannot be loaded lazily in async code."""
    wanted = set(ids)
    return [
        obj for obj in session.sync_session.identity_map.values() if isinstance(obj, Subscriber) and obj.id in wanted
    ]
