"""Fixtures for the funnel tests: a runtime without background loops (the tests run the
scheduler by hand), a small subscriber factory, and ``settle`` for the running app (its own
scheduler and outbox done with everything due now)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from responder.app import start_runtime
from responder.clock import FakeClock
from responder.funnel.enrollments import enroll, record_entries
from responder.funnel.scheduler import Scheduler
from responder.models import Enrollment, Layer, Message, Newsletter, Subscriber
from responder.runtime import Runtime
from responder.templating.service import Upload, upload_template

from .conftest import App, make_settings
from .db_template import seeded


@pytest.fixture
async def rt(database_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A seeded database and runtime; nothing runs in the background."""
    settings = make_settings(database_url, "file:///tmp/unused-outbox")
    await seeded(settings, clock.now())
    started = await start_runtime(settings, clock)
    try:
        yield started.runtime
    finally:
        await started.runtime.close()


async def make_subscriber(rt: Runtime, email: str, *, layer: int = 1, **fields: Any) -> Subscriber:
    """An active subscriber in the layer at position ``layer``, enrolled in its sequence."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        target = (
            await session.execute(select(Layer).where(Layer.position == layer, Layer.removed_at.is_(None)))
        ).scalar_one()
        subscriber = Subscriber(
            email=email,
            name=fields.pop("name", ""),
            status="active",
            layer_id=target.id,
            layer_entered_at=now,
            attributes=fields.pop("attributes", {}),
            tags=fields.pop("tags", []),
            created_at=now,
            confirmed_at=now,
            **fields,
        )
        session.add(subscriber)
        await session.flush()
        await record_entries(session, [(subscriber.id, target)], "test: placed", now)
        await enroll(session, subscriber, target.id, now)
    return subscriber


async def tick(rt: Runtime) -> int:
    """Run the scheduler until nothing more is due now."""
    scheduler = Scheduler(rt)
    total = 0
    while done := await scheduler.run_once():
        total += done
    return total


async def settle(app: App) -> None:
    """Wake the server's scheduler and wait until it and the outbox have done all that is due now
    (one scheduler only: two would race to start the same newsletter)."""
    now = app.clock.now()
    for _ in range(1000):
        app.rt.wake_scheduler()
        app.rt.wake_outbox()
        async with app.rt.db.read() as session:
            # Upstream first: work the scheduler commits between two counts shows in the later.
            waiting = sum(
                [
                    (
                        await session.execute(
                            select(func.count())
                            .select_from(Newsletter)
                            .where(Newsletter.state.in_(("scheduled", "sending")), Newsletter.scheduled_at <= now)
                        )
                    ).scalar_one(),
                    (
                        await session.execute(
                            select(func.count())
                            .select_from(Enrollment)
                            .where(Enrollment.state == "active", Enrollment.due_at <= now)
                        )
                    ).scalar_one(),
                    (
                        await session.execute(
                            select(func.count())
                            .select_from(Message)
                            .where(Message.state.in_(("queued", "sending", "deferred")), Message.next_attempt_at <= now)
                        )
                    ).scalar_one(),
                ]
            )
        if not waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the scheduler and the outbox did not finish")


async def mark_sent(rt: Runtime) -> int:
    """Stand in for the delivery worker (tested on its own): every queued row is sent now."""
    from sqlalchemy import update

    async with rt.db.transaction() as session:
        result = await session.execute(
            update(Message).where(Message.state == "queued").values(state="sent", sent_at=rt.clock.now())
        )
        return int(result.rowcount)


async def templates_sent(rt: Runtime, subscriber_id: int) -> list[str]:
    async with rt.db.read() as session:
        return list(
            (
                await session.execute(
                    select(Message.template_name).where(Message.subscriber_id == subscriber_id).order_by(Message.id)
                )
            ).scalars()
        )


async def layer_of(rt: Runtime, subscriber_id: int) -> int:
    async with rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None and subscriber.layer_id is not None
        layer = await session.get(Layer, subscriber.layer_id)
        assert layer is not None
        return layer.position


async def active_enrollments(rt: Runtime, subscriber_id: int) -> int:
    async with rt.db.read() as session:
        return int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(Enrollment)
                    .where(Enrollment.subscriber_id == subscriber_id, Enrollment.state == "active")
                )
            ).scalar_one()
        )


async def add_template(
    rt: Runtime, name: str, body: str = "<p>Hello {{ subscriber.first_name }}</p>", **kw: str
) -> None:
    """Upload a small HTML template through the service an admin's upload goes through."""
    await upload_template(rt, Upload(name=name, subject=kw.pop("subject", f"About {name}"), source=body, **kw))


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
