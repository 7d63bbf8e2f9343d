"""Factories for the public-endpoint tests: an app with test-friendly limits, subscribers with a
sent mail, and waiting for the tracking queue to reach the database."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from responder.models import Event, Layer, Message, Subscriber
from responder.web.public.common import PUBLIC, Public

from .conftest import App


def state(app: App) -> Public:
    return app.client.server.app[PUBLIC]


async def flushed(app: App) -> None:
    await state(app).tracker.drained()


async def make_subscriber(
    app: App, email: str = "reader@example.com", *, layer: int = 1, status: str = "active", sent_ago_s: float = 3600
) -> tuple[int, int]:
    """An active subscriber in ``layer`` with one sent mail; (subscriber id, message id)."""
    now = app.clock.now()
    async with app.rt.db.transaction() as session:
        layer_row = (await session.execute(select(Layer).where(Layer.position == layer))).scalar_one()
        subscriber = Subscriber(
            email=email,
            name="Reader",
            status=status,
            layer_id=layer_row.id,
            layer_entered_at=now - dt.timedelta(days=1),
            attributes={},
            tags=[],
            created_at=now - dt.timedelta(days=1),
            confirmed_at=now - dt.timedelta(days=1),
        )
        session.add(subscriber)
        await session.flush()
        message = Message(
            subscriber_id=subscriber.id,
            kind="newsletter",
            template_name="layer1-welcome",
            state="sent",
            attempts=1,
            next_attempt_at=now,
            message_id=f"<{email}.{now.timestamp()}@t>",
            created_at=now - dt.timedelta(seconds=sent_ago_s),
            sent_at=now - dt.timedelta(seconds=sent_ago_s),
        )
        session.add(message)
        await session.flush()
        return subscriber.id, message.id


async def another_message(app: App, subscriber_id: int, *, state: str = "sent", sent_ago_s: float | None = 3600) -> int:
    """One more mail to ``subscriber_id``, sent ``sent_ago_s`` ago (None: not recorded as sent)."""
    now = app.clock.now()
    async with app.rt.db.transaction() as session:
        message = Message(
            subscriber_id=subscriber_id,
            kind="newsletter",
            template_name="x",
            state=state,
            attempts=1,
            next_attempt_at=now,
            message_id=f"<another.{subscriber_id}.{now.timestamp()}@t>",
            created_at=now,
            sent_at=None if sent_ago_s is None else now - dt.timedelta(seconds=sent_ago_s),
        )
        session.add(message)
        await session.flush()
        return message.id


async def events(app: App, **where: Any) -> list[Event]:
    async with app.rt.db.read() as session:
        query = select(Event).order_by(Event.id)
        for key, value in where.items():
            query = query.where(getattr(Event, key) == value)
        return list((await session.execute(query)).scalars())
