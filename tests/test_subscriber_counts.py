"""Subscribers per layer and status are kept by triggers (``subscriber_counts``): whatever
changes the table (the ORM, a bulk statement, a delete, a rolled-back transaction), the kept
counts equal a count of the table, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import delete, func, select, text, update

from responder.funnel.flow import open_stays
from responder.models import Layer, Subscriber, SubscriberCount
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
