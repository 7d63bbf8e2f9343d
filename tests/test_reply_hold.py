"""A reply pauses the drip, through real parts: a person answers a mail through the inbound SMTP
server; their next drip step waits (their enquiry's acknowledgement does not) until the admin
answers, or three days at most; a newsletter meanwhile is held, then delivered, never dropped."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from responder.core.hold import hold_after_reply, hold_after_settling
from responder.models import Enquiry, Enrollment, Message, Subscriber

from .admin_fixtures import make_subscriber as plain_subscriber
from .conftest import App
from .funnel_fixtures import make_subscriber, settle
from .test_inbound import deliver, inbound_app, plain  # noqa: F401

DAY = dt.timedelta(days=1)
HOLD = dt.timedelta(seconds=259200)


async def _reply(app: App, address: str, body: str = "Thanks! One question first.") -> None:
    [got] = [r for r in app.smtp.to(address) if r.message["Reply-To"]][-1:]
    reply_to = got.message["Reply-To"].addresses[0].addr_spec
    await deliver(app, address, reply_to, plain(reply_to, "Re: " + str(got.message["Subject"]), body))


def _drip(app: App, address: str) -> list[str]:
    """The subjects of the drip and newsletter mail that reached ``address`` (not the
    acknowledgements of their enquiries, which are never held)."""
    return [
        str(r.message["Subject"])
        for r in app.smtp.to(address)
        if r.message["Auto-Submitted"] is None and not str(r.message["Subject"]).startswith("Re:")
    ]


async def _held_until(app: App, address: str) -> dt.datetime | None:
    async with app.rt.db.read() as session:
        return (await session.execute(select(Subscriber.held_until).where(Subscriber.email == address))).scalar_one()


async def test_a_reply_holds_the_next_step_until_it_is_answered(inbound_app: App) -> None:
    app = inbound_app
    await make_subscriber(app.rt, "ann@example.org", name="Ann")
    await settle(app)
    await app.smtp.wait_for(1, "ann@example.org")
    assert len(_drip(app, "ann@example.org")) == 1  # the welcome
    replied_at = app.clock.now()
    await _reply(app, "ann@example.org")
    assert await _held_until(app, "ann@example.org") == replied_at + HOLD
    await app.smtp.wait_for(2, "ann@example.org")  # the acknowledgement goes at once

    app.clock.advance(days=2)  # the second step falls due during the hold
    await settle(app)
    assert len(_drip(app, "ann@example.org")) == 1
    async with app.rt.db.read() as session:
        [enrollment] = (await session.execute(select(Enrollment))).scalars().all()
        [enquiry] = (await session.execute(select(Enquiry))).scalars().all()
    # The step waits in its enrollment, due when the hold ends at the latest.
    assert (enrollment.next_position, enrollment.due_at) == (2, replied_at + HOLD)

    resp = await app.client.post(
        f"/api/v1/enquiries/{enquiry.id}/answer", json={"answer": "Yes: start here."}, headers=app.auth
    )
    assert resp.status == 200, await resp.text()
    assert await _held_until(app, "ann@example.org") is None
    await settle(app)
    assert len(_drip(app, "ann@example.org")) == 2  # the step goes once the answer is given
    assert any(
        "Yes: start here." in r.message.get_body(("plain",)).get_content() for r in app.smtp.to("ann@example.org")
    )  # type: ignore[union-attr]


async def test_an_unanswered_reply_holds_three_days_at_most_and_newsletters_wait(inbound_app: App) -> None:
    app = inbound_app
    await make_subscriber(app.rt, "bo@example.org")
    await settle(app)
    await app.smtp.wait_for(1, "bo@example.org")
    await _reply(app, "bo@example.org")
    replied_at = app.clock.now()
    await plain_subscriber(app.rt, "cy@example.org", layer=1)  # not holding: the newsletter reaches them now
    resp = await app.client.post(
        "/api/v1/newsletters",
        json={"name": "News", "template": "newsletter", "layers": [1], "send_now": True},
        headers=app.auth,
    )
    assert resp.status == 201, await resp.text()
    await settle(app)
    assert len(_drip(app, "cy@example.org")) == 1
    assert len(_drip(app, "bo@example.org")) == 1  # the newsletter waits for Bo, queued, not dropped
    app.clock.advance(days=2, hours=23)
    await settle(app)
    assert len(_drip(app, "bo@example.org")) == 1
    app.clock.advance(hours=1, seconds=1)  # three days after the reply: the hold ends
    await settle(app)
    assert app.clock.now() >= replied_at + HOLD
    drip = _drip(app, "bo@example.org")
    assert len(drip) == 2
    async with app.rt.db.read() as session:
        states = (
            await session.execute(
                select(Message.kind, Message.state, Message.next_attempt_at)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .where(Subscriber.email == "bo@example.org", Message.kind.in_(("step", "newsletter")))
            )
        ).all()
        [enrollment] = (await session.execute(select(Enrollment))).scalars().all()
    # The newsletter went when the hold ended (besides the welcome before the reply); the second
    # step, due during the hold too, follows a day later (a step and a newsletter never go within
    # a day of each other): it waits in its enrollment, nothing dropped.
    assert sorted((kind, state) for kind, state, _ in states) == [("newsletter", "sent"), ("step", "sent")]
    newsletter_at = next(at for kind, _, at in states if kind == "newsletter")
    assert enrollment.next_position == 2 and enrollment.due_at == newsletter_at + DAY


def test_hold_decisions() -> None:
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    assert hold_after_reply(None, now, 3600) == now + dt.timedelta(hours=1)
    later = now + dt.timedelta(hours=5)
    assert hold_after_reply(later, now, 3600) == later  # a reply never shortens a hold
    assert hold_after_reply(None, now, 0) is None  # holds off
    assert hold_after_settling([], 3600, now) is None
    assert hold_after_settling([now - dt.timedelta(minutes=30)], 3600, now) == now + dt.timedelta(minutes=30)
    assert hold_after_settling([now - dt.timedelta(hours=2)], 3600, now) is None
