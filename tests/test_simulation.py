"""120 simulated days of 1,000 subscribers with random human and machine events, newsletters,
unsubscribes and bounces; the clock moves, nothing sleeps. Afterwards the invariants hold: no
step twice, caps respected, machine events never promote, every move audited, unsubscribed and
bounced addresses never mailed after they left."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict

import pytest
from sqlalchemy import func, insert, select, update

from responder.funnel import newsletters
from responder.funnel.events import record_event
from responder.funnel.layers import update_layer
from responder.funnel.scheduler import Scheduler
from responder.models import (
    Enrollment,
    Event,
    Layer,
    LayerHistory,
    Message,
    Sequence,
    Step,
    Subscriber,
)
from responder.runtime import Runtime

from .funnel_fixtures import rt  # noqa: F401

SUBSCRIBERS = 1000
DAYS = int(__import__("os").environ.get("SIM_DAYS", "120"))
CAPS = {"max_per_week": 2, "min_gap": "1d"}


async def populate(rt: Runtime, rng: random.Random) -> None:
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        for position in range(1, 6):
            await update_layer(
                session,
                position,
                {
                    "rule": {
                        "promote": {"on_any": ["purchase", "reply"], "clicked_messages": 2},
                        "demote": {"inactive_for": "45d"},
                        "sunset": {"inactive_for": "100d"},
                        "min_stay": "2d",
                        "caps": CAPS,
                    }
                },
            )
        layer1 = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        sequence = (await session.execute(select(Sequence).where(Sequence.layer_id == layer1.id))).scalar_one()
        await session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"sim{i}@example.com",
                    "name": "",
                    "status": "active",
                    "layer_id": layer1.id,
                    "layer_entered_at": now,
                    "attributes": {},
                    "tags": [],
                    "created_at": now,
                    "confirmed_at": now,
                }
                for i in range(SUBSCRIBERS)
            ],
        )
        ids = (await session.execute(select(Subscriber.id))).scalars().all()
        await session.execute(
            insert(Enrollment),
            [
                {
                    "subscriber_id": i,
                    "sequence_id": sequence.id,
                    "state": "active",
                    "next_position": 1,
                    "due_at": now + dt.timedelta(hours=rng.randrange(48)),
                    "started_at": now,
                }
                for i in ids
            ],
        )


@pytest.mark.slow
async def test_simulation_invariants(rt: Runtime) -> None:
    rng = random.Random(6)
    await populate(rt, rng)
    scheduler = Scheduler(rt, batch_size=500)
    left_at: dict[int, dt.datetime] = {}
    machine_only = set(range(1, SUBSCRIBERS + 1, 10))  # every tenth: only machine events
    counted_events = 0
    for day in range(DAYS):
        for _half_day in range(2):
            while await scheduler.run_once():
                pass
            rt.clock.advance(hours=12)
        now = rt.clock.now()
        async with rt.db.transaction() as session:
            await session.execute(
                update(Message)
                .where(Message.state == "queued", Message.next_attempt_at <= now)
                .values(state="sent", sent_at=now)
            )
            if day in (30, 75):
                await newsletters.create(
                    session,
                    {"name": f"day {day}", "template": "layer2-how-to", "layers": [1, 2, 3], "send_now": True},
                    now,
                    rt.settings,
                )
            recent = (
                await session.execute(
                    select(Message.subscriber_id, Message.id).where(Message.sent_at > now - dt.timedelta(days=3))
                )
            ).all()
            rng.shuffle(recent)
            for subscriber_id, message_id in recent[:25]:
                subscriber = await session.get(Subscriber, subscriber_id)
                assert subscriber is not None
                if subscriber.status != "active":
                    continue
                machine = subscriber_id in machine_only or rng.random() < 0.3
                type_ = rng.choice(
                    ["open", "open", "click", "click", "click", "reply", "purchase"]
                    if not machine
                    else ["open", "click"]
                )
                rt.clock.advance(seconds=1)
                await record_event(session, subscriber, type_, rt.clock.now(), message_id=message_id, machine=machine)
                counted_events += 1
            for subscriber_id, _ in recent[25:27]:
                subscriber = await session.get(Subscriber, subscriber_id)
                if subscriber is None or subscriber.status != "active":
                    continue
                subscriber.status = rng.choice(["unsubscribed", "bounced"])
                left_at[subscriber_id] = rt.clock.now()
                if subscriber.status == "unsubscribed":
                    await record_event(session, subscriber, "unsubscribe", rt.clock.now())

    async with rt.db.read() as session:
        messages = (
            await session.execute(
                select(
                    Message.subscriber_id, Message.kind, Message.step_id, Message.created_at, Message.next_attempt_at
                )
            )
        ).all()
        moves = (
            (await session.execute(select(LayerHistory).where(LayerHistory.kind == "move").order_by(LayerHistory.id)))
            .scalars()
            .all()
        )
        machine_ids = set((await session.execute(select(Event.id).where(Event.machine.is_(True)))).scalars())
        promoted_events = (
            await session.execute(select(func.count()).select_from(Event).where(Event.type == "promoted"))
        ).scalar_one()
        layers = dict((await session.execute(select(Layer.id, Layer.position))).all())
        subscribers = (await session.execute(select(Subscriber))).scalars().all()
        steps = (await session.execute(select(func.count()).select_from(Step))).scalar_one()
        statuses = defaultdict(int)
        for s in subscribers:
            statuses[s.status] += 1

    step_pairs = [(m.subscriber_id, m.step_id) for m in messages if m.kind == "step"]
    # No step twice.
    assert len(step_pairs) == len(set(step_pairs))
    # Caps: when a drip step or a newsletter was to go, fewer than max_per_week mails in the 7
    # days before, and none within min_gap.
    by_subscriber: dict[int, list[tuple[dt.datetime, str]]] = defaultdict(list)
    for m in messages:
        by_subscriber[m.subscriber_id].append((m.next_attempt_at, m.kind))
    for mails in by_subscriber.values():
        mails.sort()
        for i, (at, _kind) in enumerate(mails):
            before = [t for t, _ in mails[:i] if at - dt.timedelta(days=7) < t <= at]
            assert len(before) < CAPS["max_per_week"]
            assert all(at - t >= dt.timedelta(days=1) for t in before)
    # Machine events never promote: no move cites one; the machine-only group never rose.
    for move in moves:
        assert not set(move.event_ids) & machine_ids
    risen = {m.subscriber_id for m in moves if layers[m.to_layer_id] > layers.get(m.from_layer_id, 0)}
    assert not risen & machine_only
    # Every move audited: one history row per move, and each subscriber's layer is the last
    # move's target (or layer 1 when never moved).
    assert len(moves) == promoted_events
    last_target = {m.subscriber_id: m.to_layer_id for m in moves}
    for s in subscribers:
        assert layers[s.layer_id] == layers[last_target[s.id]] if s.id in last_target else layers[s.layer_id] == 1
    # Left means never mailed again (steps and newsletters alike).
    for m in messages:
        if m.subscriber_id in left_at:
            assert m.created_at <= left_at[m.subscriber_id]
    # The run really exercised the engine.
    ups = sum(1 for m in moves if layers[m.to_layer_id] > layers.get(m.from_layer_id, 0))
    downs = len(moves) - ups
    print(
        f"\nsimulation: {len(messages)} mails, {counted_events} events, {ups} promotions, "
        f"{downs} demotions, statuses {dict(statuses)}, {steps} steps"
    )
    assert ups > 50 and downs > 40 and statuses["sunset"] > 0 and len(left_at) > 40
    assert sum(1 for m in messages if m.kind == "newsletter") > 500
