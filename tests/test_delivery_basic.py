"""The delivery worker against a real SMTP server: sent, deferred, bounced, reclaimed leases."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from responder.clock import FakeClock
from responder.delivery import outbox
from responder.delivery.transport import make_transport
from responder.delivery.worker import DeliveryWorker
from responder.models import Event, Message, Step, Subscriber
from responder.runtime import Runtime

from .conftest import SmtpSink
from .delivery_fixtures import message, runtime_for


@pytest.fixture
async def rt(database_url: str, smtp: SmtpSink, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime_for(database_url, smtp.url, clock) as runtime:
        yield runtime


async def queue_confirmation(rt: Runtime, email: str) -> int:
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = Subscriber(email=email, name="Ada", status="pending", attributes={}, tags=[], created_at=now)
        session.add(subscriber)
        await session.flush()
        message_pk = await outbox.enqueue(
            session,
            subscriber_id=subscriber.id,
            kind="confirm",
            template_name="confirm",
            now=now,
            domain="acme.example.com",
        )
    assert message_pk
    return message_pk


async def test_sent_once_with_a_stable_message_id(rt: Runtime, smtp: SmtpSink) -> None:
    pk = await queue_confirmation(rt, "ada@example.com")
    worker = DeliveryWorker(rt, make_transport(rt.settings))
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0
    sent = await message(rt, pk)
    assert sent.state == "sent" and sent.attempts == 1 and sent.template_id is not None
    [received] = smtp.received
    assert received.message["Message-ID"] == sent.message_id
    await worker.transport.close()


async def test_temporary_failure_defers_then_retries_with_the_same_message_id(
    rt: Runtime, smtp: SmtpSink, clock: FakeClock
) -> None:
    smtp.handler.replies["ada@example.com"] = "451 4.7.1 try again later"
    pk = await queue_confirmation(rt, "ada@example.com")
    worker = DeliveryWorker(rt, make_transport(rt.settings))
    await worker.run_once()
    deferred = await message(rt, pk)
    assert deferred.state == "deferred" and "451" in (deferred.last_error or "")
    assert deferred.next_attempt_at > clock.now() + dt.timedelta(minutes=3)
    assert await worker.run_once() == 0  # not yet due
    del smtp.handler.replies["ada@example.com"]
    clock.advance(minutes=10)
    assert await worker.run_once() == 1
    sent = await message(rt, pk)
    assert sent.state == "sent" and sent.attempts == 2
    assert [r.message["Message-ID"] for r in smtp.received] == [sent.message_id]
    await worker.transport.close()


async def test_permanent_failure_bounces_and_suppresses(rt: Runtime, smtp: SmtpSink) -> None:
    smtp.handler.replies["gone@example.com"] = "550 5.1.1 no such user"
    pk = await queue_confirmation(rt, "gone@example.com")
    worker = DeliveryWorker(rt, make_transport(rt.settings))
    await worker.run_once()
    bounced = await message(rt, pk)
    assert bounced.state == "bounced" and "550" in (bounced.last_error or "")
    async with rt.db.read() as session:
        subscriber = (await session.execute(select(Subscriber))).scalar_one()
        events = (await session.execute(select(Event.type))).scalars().all()
    assert subscriber.status == "bounced" and events == ["bounce"]
    assert smtp.received == []
    await worker.transport.close()


async def test_smtp_server_down_defers(rt: Runtime) -> None:
    from .conftest import free_port

    settings = rt.settings.replace(smtp=rt.settings.smtp.__class__("smtp", "127.0.0.1", free_port()))
    pk = await queue_confirmation(rt, "ada@example.com")
    worker = DeliveryWorker(rt, make_transport(settings))
    await worker.run_once()
    assert (await message(rt, pk)).state == "deferred"


async def test_expired_lease_is_reclaimed_and_the_old_holder_cannot_record(
    rt: Runtime, smtp: SmtpSink, clock: FakeClock
) -> None:
    pk = await queue_confirmation(rt, "ada@example.com")
    assert await outbox.claim(rt.db, owner="crashed", now=clock.now(), limit=10, lease_s=60) == [pk]
    worker = DeliveryWorker(rt, make_transport(rt.settings))
    assert await worker.run_once() == 0  # still leased
    clock.advance(61)
    assert await worker.run_once() == 1
    assert (await message(rt, pk)).state == "sent"
    async with rt.db.transaction() as session:
        assert not await outbox.finish(session, pk, "crashed", state="failed")
    assert (await message(rt, pk)).state == "sent"
    assert len(smtp.received) == 1
    await worker.transport.close()


async def test_unsubscribed_before_sending_is_never_mailed(rt: Runtime, smtp: SmtpSink) -> None:
    pk = await queue_confirmation(rt, "ada@example.com")
    async with rt.db.transaction() as session:
        await session.execute(update(Subscriber).values(status="unsubscribed"))
    worker = DeliveryWorker(rt, make_transport(rt.settings))
    await worker.run_once()
    failed = await message(rt, pk)
    assert failed.state == "failed" and "unsubscribed" in (failed.last_error or "")
    assert smtp.received == []


async def test_one_step_is_queued_once(rt: Runtime) -> None:
    pk = await queue_confirmation(rt, "ada@example.com")
    async with rt.db.transaction() as session:
        msg = await session.get(Message, pk)
        assert msg is not None
        step_id = (await session.execute(select(Step.id).limit(1))).scalar_one()
        kwargs = dict(
            subscriber_id=msg.subscriber_id,
            kind="step",
            template_name="layer1-welcome",
            step_id=step_id,
            now=rt.clock.now(),
            domain="acme.example.com",
        )
        first = await outbox.enqueue(session, **kwargs)  # type: ignore[arg-type]
        second = await outbox.enqueue(session, **kwargs)  # type: ignore[arg-type]
    assert first is not None and second is None
