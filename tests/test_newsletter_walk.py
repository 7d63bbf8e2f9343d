"""A newsletter's walk over its recipients: batches read from the recipients' own key (so an
audience spread thin over the subscriber ids, or ending a batch on people it skips, is walked
once and to its end), the same plans a subscriber-by-subscriber reading would make, and the
outbox's many-row insert counting only what it inserted."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from responder.core.pacing import Held, Sent
from responder.delivery.outbox import enqueue_many, outbox_row
from responder.funnel import layers as layers_service
from responder.funnel import newsletters
from responder.funnel.ledger import Book, Ledger
from responder.models import Layer, Message, Newsletter, Subscriber
from responder.runtime import Runtime

from .funnel_fixtures import rt  # noqa: F401

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


async def person(rt: Runtime, email: str, layer: int) -> Subscriber:
    """An active subscriber of the layer at ``layer``, in no sequence: only newsletters count."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        layer_id = (await session.execute(select(Layer.id).where(Layer.position == layer))).scalar_one()
        subscriber = Subscriber(
            email=email, status="active", layer_id=layer_id, layer_entered_at=now, created_at=now, confirmed_at=now
        )
        session.add(subscriber)
    return subscriber


async def create(rt: Runtime, name: str, layers: list[int]) -> int:
    async with rt.db.transaction() as session:
        news = await newsletters.create(
            session,
            {"name": name, "template": "layer2-how-to", "layers": layers, "send_now": True},
            rt.clock.now(),
            rt.settings,
        )
        return news.id


async def walk(rt: Runtime, batch: int) -> int:
    """Advance until nothing is left to walk; the number of ticks that walked."""
    ticks = 0
    while True:
        async with rt.db.transaction() as session:
            walked = await newsletters.advance(session, rt.clock.now(), domain="acme.example.com", batch=batch)
        if not walked:
            return ticks
        ticks += 1


async def copies(rt: Runtime, newsletter_id: int) -> dict[int, dt.datetime]:
    async with rt.db.read() as session:
        rows = await session.execute(
            select(Message.subscriber_id, Message.next_attempt_at).where(Message.newsletter_id == newsletter_id)
        )
        return {subscriber_id: at for subscriber_id, at in rows}


async def test_a_thin_audience_is_walked_once_to_its_end_with_each_plan(rt: Runtime) -> None:  # noqa: F811
    async with rt.db.transaction() as session:
        await layers_service.update_layer(
            session, 2, {"rule": {"promote": {"on_any": ["reply"]}, "caps": {"max_per_week": 1}}}
        )
    # Layer 2 (capped) and layer 3 interleaved with layer 1, whom the newsletters do not reach.
    two, three = [], []
    for i in range(6):
        two.append(await person(rt, f"two{i}@example.com", 2))
        await person(rt, f"one{i}@example.com", 1)
        three.append(await person(rt, f"three{i}@example.com", 3))
    fewer = three[1]
    async with rt.db.transaction() as session:
        (await session.get(Subscriber, three[-1].id)).paused_until = rt.clock.now() + dt.timedelta(days=30)  # type: ignore[union-attr]
        (await session.get(Subscriber, fewer.id)).frequency = "fewer"  # type: ignore[union-attr]

    first = await create(rt, "First", [2])
    await walk(rt, batch=4)
    assert set(await copies(rt, first)) == {s.id for s in two}

    second = await create(rt, "Second", [2, 3])
    async with rt.db.transaction() as session:
        news = await session.get(Newsletter, second)
        assert news is not None
        await newsletters.fix_audience(session, news, rt.clock.now())
        # Left after the audience was fixed: the last of the first batch of two.
        (await session.get(Subscriber, three[0].id)).status = "unsubscribed"  # type: ignore[union-attr]
    assert await walk(rt, batch=2) == 7  # 12 recipients, two a batch; the seventh finds the end
    queued = await copies(rt, second)
    reached = {s.id for s in two} | {s.id for s in three[1:-1]}
    assert set(queued) == reached  # each once; the unsubscribed and the paused skipped
    now = rt.clock.now()
    # Layer 2 had its one mail this week: held a week; layer 3 goes now, the "fewer" one too.
    assert {queued[s.id] for s in two} == {now + dt.timedelta(days=7)}
    assert {queued[s.id] for s in three[1:-1]} == {now}
    async with rt.db.read() as session:
        done = await session.get(Newsletter, second)
        assert done is not None and done.state == "sent" and done.cursor == three[-1].id

    # A cursor set back (a crash before it was saved) queues nobody twice.
    async with rt.db.transaction() as session:
        done = await session.get(Newsletter, second)
        assert done is not None
        done.state, done.cursor = "sending", 0
    await walk(rt, batch=5)
    assert await copies(rt, second) == queued


def book(layer_id: int | None, caps: dict[str, Any] | None, **fields: Any) -> Book:
    subscriber = SimpleNamespace(
        layer_id=layer_id,
        attributes={},
        frequency=fields.pop("frequency", "normal"),
        paused_until=fields.pop("paused_until", None),
        held_until=fields.pop("held_until", None),
    )
    made = Book(subscriber, caps)
    made.sent = fields.pop("sent", [])
    made.waiting = fields.pop("waiting", {})
    return made


CAPS = {"max_per_week": 2, "min_gap": "1d"}
NEWS = ("newsletter", 7)
WINDOW = {"days": "mon-tue", "start": "09:00", "end": "17:00"}


@pytest.mark.parametrize(
    "books",
    [
        [book(1, CAPS, waiting={NEWS: Held("newsletter", NOW)}) for _ in range(3)],
        [
            book(1, CAPS, waiting={NEWS: Held("newsletter", NOW)}),
            book(1, CAPS, sent=[Sent(NOW - dt.timedelta(hours=3), "step")], waiting={NEWS: Held("newsletter", NOW)}),
            book(
                1,
                CAPS,
                frequency="fewer",
                sent=[Sent(NOW - dt.timedelta(days=2), "newsletter")],
                waiting={NEWS: Held("newsletter", NOW)},
            ),
            book(2, None, waiting={NEWS: Held("newsletter", NOW)}),
            book(1, CAPS, paused_until=NOW + dt.timedelta(days=3), waiting={NEWS: Held("newsletter", NOW)}),
            book(1, CAPS, held_until=NOW + dt.timedelta(days=5), waiting={NEWS: Held("newsletter", NOW)}),
        ],
        [
            book(1, CAPS, waiting={("enrollment", 1): Held("step", NOW, WINDOW), NEWS: Held("newsletter", NOW)}),
            book(
                1, CAPS, waiting={("row", 4): Held("step", NOW - dt.timedelta(hours=1)), NEWS: Held("newsletter", NOW)}
            ),
            book(
                1, CAPS, waiting={("row", 5): Held("step", NOW - dt.timedelta(hours=1)), NEWS: Held("newsletter", NOW)}
            ),
        ],
    ],
    ids=["alike", "each-different", "steps-waiting"],
)
def test_a_ledger_plans_each_book_as_the_book_itself_would(books: list[Book]) -> None:
    ledger = Ledger({i: b for i, b in enumerate(books)}, {})
    for each in books:
        assert ledger.plan(each, NOW) == each.plan(NOW)
    assert [ledger.plan(b, NOW) for b in books] == [b.plan(NOW) for b in books]  # from its memory too


async def test_enqueue_many_counts_what_it_inserted(rt: Runtime) -> None:  # noqa: F811
    people = [await person(rt, f"p{i}@example.com", 2) for i in range(3)]
    news = await create(rt, "News", [1])
    now = rt.clock.now()

    def rows(subscribers: list[Subscriber], **extra: Any) -> list[dict[str, object]]:
        return [
            outbox_row(s.id, "newsletter", "layer2-how-to", now, "acme.example.com", newsletter_id=news, **extra)
            for s in subscribers
        ]

    async with rt.db.transaction() as session:
        assert await enqueue_many(session, rows(people[:2], send_at=now + dt.timedelta(hours=1))) == 2
    async with rt.db.transaction() as session:
        assert await enqueue_many(session, rows(people)) == 1  # two were queued already
        assert await enqueue_many(session, []) == 0
    async with rt.db.read() as session:
        found = await session.execute(
            select(Message.subscriber_id, Message.next_attempt_at).where(Message.newsletter_id == news)
        )
        times = {subscriber_id: at for subscriber_id, at in found}
    assert times == {
        people[0].id: now + dt.timedelta(hours=1),
        people[1].id: now + dt.timedelta(hours=1),
        people[2].id: now,
    }
