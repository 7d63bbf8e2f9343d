"""Factories for delivery tests: a runtime without background loops, queued newsletter mail,
and a worker driven one batch at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select

from responder.app import start_runtime
from responder.clock import Clock, FakeClock
from responder.delivery import outbox
from responder.delivery.transport import make_transport
from responder.delivery.worker import DeliveryWorker
from responder.models import Layer, Message, Newsletter, Subscriber
from responder.runtime import Runtime

from .conftest import make_settings
from .db_template import migrated, seeded


@asynccontextmanager
async def runtime_for(database_url: str, smtp_url: str, clock: Clock, **env: str) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url, smtp_url, **env)
    if isinstance(clock, FakeClock):
        await seeded(settings, clock.now())
    else:  # what it would seed at depends on when it starts
        await migrated(database_url)
    started = await start_runtime(settings, clock)
    try:
        yield started.runtime
    finally:
        await started.runtime.close()


@asynccontextmanager
async def worker_for(rt: Runtime) -> AsyncIterator[DeliveryWorker]:
    transport = make_transport(rt.settings)
    worker = DeliveryWorker(rt, transport)
    try:
        yield worker
    finally:
        await transport.close()


async def queue_newsletter(rt: Runtime, addresses: list[str], template: str = "layer1-welcome") -> list[int]:
    """Active layer-1 subscribers for ``addresses`` and one queued newsletter mail each."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).order_by(Layer.position).limit(1))).scalar_one()
        newsletter = Newsletter(
            name="news",
            template_name=template,
            layer_ids=[layer.id],
            tags=[],
            state="sending",
            scheduled_at=None,
            created_at=now,
        )
        session.add(newsletter)
        subscribers = [
            Subscriber(
                email=a,
                name=f"Reader {i}",
                status="active",
                layer_id=layer.id,
                layer_entered_at=now,
                attributes={},
                tags=[],
                created_at=now,
            )
            for i, a in enumerate(addresses)
        ]
        session.add_all(subscribers)
        await session.flush()
        ids = []
        for subscriber in subscribers:
            pk = await outbox.enqueue(
                session,
                subscriber_id=subscriber.id,
                kind="newsletter",
                template_name=template,
                now=now,
                domain=rt.settings.sender_domain,
                newsletter_id=newsletter.id,
            )
            assert pk is not None
            ids.append(pk)
    rt.wake_outbox()
    return ids


async def message(rt: Runtime, pk: int) -> Message:
    async with rt.db.read() as session:
        found = await session.get(Message, pk)
    assert found is not None
    return found


async def subscriber(rt: Runtime, email: str) -> Subscriber:
    async with rt.db.read() as session:
        return (await session.execute(select(Subscriber).where(Subscriber.email == email))).scalar_one()
