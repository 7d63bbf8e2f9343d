"""Counts kept by triggers: subscribers per layer and status (``subscriber_counts``), and the
outbox's rows per step, and per newsletter and recipient layer, by state (``mail_counts``).
Whatever changes the tables (the ORM, a bulk statement, raw SQL, a delete, a rolled-back
transaction), the kept counts equal a count of the table, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import delete, func, select, text, update

from responder.delivery.outbox import enqueue_many, kept_counts, outbox_row
from responder.funnel.flow import open_stays
from responder.models import Layer, Message, Newsletter, NewsletterRecipient, Step, Subscriber, SubscriberCount
from responder.runtime import Runtime

from .funnel_fixtures import make_subscriber, rt  # noqa: F401

STATUSES = ("active", "unsubscribed", "bounced", "sunset", "pending")


async def kept(rt: Runtime) -> dict[tuple[int, str], int]:  # noqa: F811
    async with rt.db.read() as session:
        rows = await session.execute(select(SubscriberCount.layer_id, SubscriberCount.status, SubscriberCount.n))
        return {(layer, status): n for layer, status, n in rows if n}


async def counted(rt: Runtime) -> dict[tuple[int, str], int]:  # noqa: F811
    async with rt.db.read() as session:
        layer = func.coalesce(Subscriber.layer_id, 0)
        rows = await session.execute(select(layer, Subscriber.status, func.count()).group_by(layer, Subscriber.status))
        return {(layer_id, status): n for layer_id, status, n in rows}


async def test_the_kept_counts_follow_every_change_to_the_table(rt: Runtime) -> None:  # noqa: F811
    async with rt.db.read() as session:
        layers = list((await session.execute(select(Layer.id))).scalars())
    people = [(await make_subscriber(rt, f"p{i}@example.com")).id for i in range(12)]
    assert await kept(rt) == await counted(rt) == {(layers[0], "active"): 12}
    pick = random.Random(7)
    for round_ in range(30):
        async with rt.db.transaction() as session:
            chosen = pick.sample(people, 3)
            what = round_ % 5
            if what == 0:  # one row through the ORM
                subscriber = await session.get(Subscriber, chosen[0])
                assert subscriber is not None
                subscriber.status = pick.choice(STATUSES)
                subscriber.layer_id = pick.choice([*layers, None])
            elif what == 1:  # a bulk update of several rows, some of them unchanged
                await session.execute(
                    update(Subscriber).where(Subscriber.id.in_(chosen)).values(layer_id=pick.choice(layers))
                )
            elif what == 2:  # an update that moves no count
                await session.execute(update(Subscriber).where(Subscriber.id.in_(chosen)).values(name="renamed"))
            elif what == 3:  # raw SQL inserting several rows in one statement, as a restore would
                await session.execute(
                    text(
                        "INSERT INTO subscribers (email, name, status, layer_id, attributes, tags, created_at,"
                        " frequency) SELECT 'bulk' || :round || '-' || id || '@example.com', '', status, layer_id,"
                        " '{}', '[]', created_at, 'normal' FROM subscribers WHERE id IN (:a, :b)"
                    ),
                    {"round": str(round_), "a": chosen[0], "b": chosen[1]},
                )
            else:  # a delete
                found = (await session.execute(select(Subscriber.id).where(Subscriber.email.like("bulk%")))).scalars()
                gone = list(found)[:1]
                await session.execute(delete(Subscriber).where(Subscriber.id.in_(gone)))
        assert await kept(rt) == await counted(rt), round_
    # A rolled-back change leaves the counts as they were.
    before = await kept(rt)
    with pytest.raises(RuntimeError):
        async with rt.db.transaction() as session:
            await session.execute(update(Subscriber).values(status="unsubscribed"))
            raise RuntimeError("changed my mind")
    assert await kept(rt) == before == await counted(rt)
    async with rt.db.read() as session:
        assert await open_stays(session) == {
            layer: n for (layer, status), n in before.items() if status == "active" and layer
        }


async def mail_kept(rt: Runtime) -> dict[tuple[str, int, int, str], int]:  # noqa: F811
    async with rt.db.read() as session:
        return {
            (scope, *key): n
            for scope in ("step", "newsletter")
            for key, n in (await kept_counts(session, scope)).items()
        }


async def mail_counted(rt: Runtime) -> dict[tuple[str, int, int, str], int]:  # noqa: F811
    async with rt.db.read() as session:
        steps = await session.execute(
            select(Message.step_id, Message.state, func.count())
            .where(Message.step_id.is_not(None))
            .group_by(Message.step_id, Message.state)
        )
        layer = func.coalesce(NewsletterRecipient.layer_id, 0)
        letters = await session.execute(
            select(Message.newsletter_id, layer, Message.state, func.count())
            .outerjoin(
                NewsletterRecipient,
                (NewsletterRecipient.newsletter_id == Message.newsletter_id)
                & (NewsletterRecipient.subscriber_id == Message.subscriber_id),
            )
            .where(Message.newsletter_id.is_not(None))
            .group_by(Message.newsletter_id, layer, Message.state)
        )
        return {("step", step, 0, state): n for step, state, n in steps} | {
            ("newsletter", letter, layer_id, state): n for letter, layer_id, state, n in letters
        }


async def test_the_kept_mail_counts_follow_every_change_to_the_outbox(rt: Runtime) -> None:  # noqa: F811
    now = rt.clock.now()
    async with rt.db.read() as session:
        layers = list((await session.execute(select(Layer.id).order_by(Layer.position))).scalars())
        step_id = (await session.execute(select(Step.id).limit(1))).scalar_one()
    people = [(await make_subscriber(rt, f"m{i}@example.com")).id for i in range(10)]
    async with rt.db.transaction() as session:
        letter = Newsletter(name="n", template_name="layer2-how-to", state="sending", layer_ids=[], created_at=now)
        session.add(letter)
        await session.flush()
        newsletter_id = letter.id
        session.add_all(
            NewsletterRecipient(newsletter_id=newsletter_id, subscriber_id=p, layer_id=layers[i % 3])
            for i, p in enumerate(people[:8])  # two of them are not on the recipient list: layer 0
        )
        await session.flush()
        rows = [
            outbox_row(p, "newsletter", "layer2-how-to", now, "example.com", newsletter_id=newsletter_id)
            for p in people
        ]
        rows += [outbox_row(p, "step", "layer1-welcome", now, "example.com", step_id=step_id) for p in people[:5]]
        assert await enqueue_many(session, rows) == 15
    assert await mail_kept(rt) == await mail_counted(rt)
    assert sum(n for (scope, *_), n in (await mail_kept(rt)).items() if scope == "newsletter") == 10
    pick = random.Random(11)
    for round_ in range(20):
        async with rt.db.transaction() as session:
            ids = list((await session.execute(select(Message.id))).scalars())
            chosen = pick.sample(ids, min(4, len(ids)))
            what = round_ % 4
            if what == 0:  # the claim's and the outcome's kind of statement: many rows, one state
                await session.execute(
                    update(Message).where(Message.id.in_(chosen)).values(state=pick.choice(["sending", "sent"]))
                )
            elif what == 1:  # through the ORM, one row
                message = await session.get(Message, chosen[0])
                assert message is not None
                message.state = pick.choice(["failed", "bounced", "deferred", "cancelled"])
            elif what == 2:  # an update that changes no state
                await session.execute(
                    update(Message).where(Message.id.in_(chosen)).values(attempts=Message.attempts + 1)
                )
            else:  # a delete, as the retention period's prune
                await session.execute(delete(Message).where(Message.id == chosen[0]))
        assert await mail_kept(rt) == await mail_counted(rt), round_
