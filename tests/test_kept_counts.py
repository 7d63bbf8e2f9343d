"""Counts kept by triggers: subscribers per layer and status (``subscriber_counts``), and the
outbox's rows per step, and per newsletter and recipient layer, by state (``mail_counts``).
Whatever changes the tables (the ORM, a bulk statement, raw SQL, a delete, a rolled-back
transaction), the kept counts equal a count of the table, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import delete, func, select, text, update

from responder.db import Database
from responder.delivery.outbox import enqueue_many, kept_counts, outbox_row
from responder.funnel.flow import open_stays
from responder.models import Layer, Message, Newsletter, NewsletterRecipient, Step, Subscriber, SubscriberCount
from responder.runtime import Runtime

from .db_template import upgrade_to
from .funnel_fixtures import make_subscriber, rt  # noqa: F401

STATUSES = ("active", "unsubscribed", "bounced", "sunset", "pending")


async def kept(db: Database) -> dict[tuple[int, str], int]:  # noqa: F811
    async with db.read() as session:
        rows = await session.execute(select(SubscriberCount.layer_id, SubscriberCount.status, SubscriberCount.n))
        return {(layer, status): n for layer, status, n in rows if n}


async def counted(db: Database) -> dict[tuple[int, str], int]:  # noqa: F811
    async with db.read() as session:
        layer = func.coalesce(Subscriber.layer_id, 0)
        rows = await session.execute(select(layer, Subscriber.status, func.count()).group_by(layer, Subscriber.status))
        return {(layer_id, status): n for layer_id, status, n in rows}


async def test_the_kept_counts_follow_every_change_to_the_table(rt: Runtime) -> None:  # noqa: F811
    async with rt.db.read() as session:
        layers = list((await session.execute(select(Layer.id))).scalars())
    people = [(await make_subscriber(rt, f"p{i}@example.com")).id for i in range(12)]
    assert await kept(rt.db) == await counted(rt.db) == {(layers[0], "active"): 12}
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
        assert await kept(rt.db) == await counted(rt.db), round_
    # A rolled-back change leaves the counts as they were.
    before = await kept(rt.db)
    with pytest.raises(RuntimeError):
        async with rt.db.transaction() as session:
            await session.execute(update(Subscriber).values(status="unsubscribed"))
            raise RuntimeError("changed my mind")
    assert await kept(rt.db) == before == await counted(rt.db)
    async with rt.db.read() as session:
        assert await open_stays(session) == {
            layer: n for (layer, status), n in before.items() if status == "active" and layer
        }


async def mail_kept(db: Database) -> dict[tuple[str, int, int, str], int]:  # noqa: F811
    async with db.read() as session:
        return {
            (scope, *key): n
            for scope in ("step", "newsletter")
            for key, n in (await kept_counts(session, scope)).items()
        }


async def mail_counted(db: Database) -> dict[tuple[str, int, int, str], int]:  # noqa: F811
    async with db.read() as session:
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
    assert await mail_kept(rt.db) == await mail_counted(rt.db)
    assert sum(n for (scope, *_), n in (await mail_kept(rt.db)).items() if scope == "newsletter") == 10
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
        assert await mail_kept(rt.db) == await mail_counted(rt.db), round_


async def test_the_upgrade_starts_the_counts_from_the_rows_there_are(database_url: str) -> None:
    """A database from before i24_counts: its subscribers and outbox are counted as the
    triggers would have counted them, and the triggers go on from there."""
    db = Database(database_url)
    try:
        async with db.writer.begin() as conn:
            await conn.run_sync(upgrade_to("i23_rollups"))
            for statement in BEFORE:
                await conn.execute(text(statement))
        await db.migrate()
        assert await kept(db) == await counted(db) == {(0, "pending"): 1, (1, "active"): 2, (2, "unsubscribed"): 1}
        assert await mail_kept(db) == await mail_counted(db)
        assert await mail_kept(db) == {
            ("newsletter", 1, 1, "sent"): 1,
            ("newsletter", 1, 2, "queued"): 1,
            ("newsletter", 1, 0, "queued"): 1,
            ("step", 1, 0, "sent"): 2,
        }
        async with db.transaction() as session:
            await session.execute(update(Message).where(Message.state == "queued").values(state="sent"))
            await session.execute(update(Subscriber).where(Subscriber.id == 1).values(layer_id=2))
        assert await kept(db) == await counted(db)
        assert await mail_kept(db) == await mail_counted(db)
    finally:
        await db.dispose()


BEFORE = [
    "INSERT INTO layers (id, position, name, label, description, rule, created_at) VALUES"
    " (1, 1, 'New', 'New', '', '{}', '2026-01-01 00:00:00'), (2, 2, 'Mid', 'Mid', '', '{}', '2026-01-01 00:00:00')",
    "INSERT INTO subscribers (id, email, name, status, layer_id, attributes, tags, created_at, frequency) VALUES"
    " (1, 'a@example.com', '', 'active', 1, '{}', '[]', '2026-01-01 00:00:00', 'normal'),"
    " (2, 'b@example.com', '', 'active', 1, '{}', '[]', '2026-01-01 00:00:00', 'normal'),"
    " (3, 'c@example.com', '', 'unsubscribed', 2, '{}', '[]', '2026-01-01 00:00:00', 'normal'),"
    " (4, 'd@example.com', '', 'pending', NULL, '{}', '[]', '2026-01-01 00:00:00', 'normal')",
    "INSERT INTO sequences (id, name, layer_id, trigger, created_at) VALUES (1, 's', 1, 'layer', '2026-01-01 00:00:00')",
    "INSERT INTO steps (id, sequence_id, position, delay_s, template_name, purpose)"
    " VALUES (1, 1, 1, 0, 'welcome', 'welcome')",
    "INSERT INTO newsletters (id, name, template_name, layer_ids, layer_snapshot, tags, state, created_at, total,"
    " cursor) VALUES (1, 'n', 'news', '[]', '[]', '[]', 'sending', '2026-01-01 00:00:00', 3, 0)",
    "INSERT INTO newsletter_recipients (newsletter_id, subscriber_id, layer_id) VALUES (1, 1, 1), (1, 3, 2)",
    "INSERT INTO messages (id, subscriber_id, kind, step_id, newsletter_id, template_name, state, attempts,"
    " next_attempt_at, message_id, created_at) VALUES"
    " (1, 1, 'step', 1, NULL, 'welcome', 'sent', 1, '2026-01-01 00:00:00', 'a@x', '2026-01-01 00:00:00'),"
    " (2, 2, 'step', 1, NULL, 'welcome', 'sent', 1, '2026-01-01 00:00:00', 'b@x', '2026-01-01 00:00:00'),"
    " (3, 1, 'newsletter', NULL, 1, 'news', 'sent', 1, '2026-01-01 00:00:00', 'c@x', '2026-01-01 00:00:00'),"
    " (4, 3, 'newsletter', NULL, 1, 'news', 'queued', 0, '2026-01-01 00:00:00', 'd@x', '2026-01-01 00:00:00'),"
    " (5, 2, 'newsletter', NULL, 1, 'news', 'queued', 0, '2026-01-01 00:00:00', 'e@x', '2026-01-01 00:00:00'),"
    " (6, 4, 'confirm', NULL, NULL, 'confirm', 'sent', 1, '2026-01-01 00:00:00', 'f@x', '2026-01-01 00:00:00')",
]
