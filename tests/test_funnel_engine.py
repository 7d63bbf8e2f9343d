"""The funnel engine on a real database: triggered sequences, hand-off without repeats, safe
edits, caps, windows, conditions, the daily sweep and the preferred tag."""

from __future__ import annotations

from sqlalchemy import select

from responder.audience.directory import move_subscriber
from responder.funnel import layers as layers_service
from responder.funnel import sequences as sequences_service
from responder.funnel.events import record_event
from responder.funnel.sweep import sweep
from responder.funnel.triggers import start_triggered
from responder.models import Enrollment, Event, Layer, LayerHistory, Message, Sequence, Subscriber
from responder.runtime import Runtime

from .funnel_fixtures import (  # noqa: F401
    active_enrollments,
    add_template,
    layer_of,
    make_subscriber,
    mark_sent,
    rt,
    templates_sent,
    tick,
)


async def add_sequence(rt: Runtime, trigger: str, template: str, **extra: object) -> int:
    for name in (template, template + "-2"):
        await add_template(rt, name)
    async with rt.db.transaction() as session:
        sequence = await sequences_service.create_sequence(
            session,
            {
                "name": f"{trigger} {template}",
                "trigger": trigger,
                **extra,
                "steps": [
                    {"delay": "0s", "template": template, "purpose": "offer"},
                    {"delay": "2d", "template": template + "-2", "purpose": "referral"},
                ],
            },
            rt.clock.now(),
            rt.settings,
        )
        return sequence.id


async def record(rt: Runtime, subscriber_id: int, type: str, **kw: object):  # type: ignore[no-untyped-def]
    rt.clock.advance(60)
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        return await record_event(session, subscriber, type, rt.clock.now(), **kw)  # type: ignore[arg-type]


async def test_events_start_their_sequences(rt: Runtime) -> None:
    await add_sequence(rt, "purchase", "backend-any")
    await add_sequence(rt, "purchase", "backend-course", product="course")
    await add_sequence(rt, "enquiry", "follow-up")
    await add_sequence(rt, "referral", "thank-you")
    ada = await make_subscriber(rt, "ada@example.com")
    await tick(rt)
    assert await templates_sent(rt, ada.id) == ["layer1-welcome"]

    recorded = await record(rt, ada.id, "purchase", data={"product": "book", "value": 20})
    assert recorded.promoted_to == 2  # the default rule: a purchase promotes
    await record(rt, ada.id, "enquiry")
    await record(rt, ada.id, "referral", data={"referred_id": 99})
    await tick(rt)
    sent = await templates_sent(rt, ada.id)
    assert sent[1:] == ["layer2-how-to", "backend-any", "follow-up", "thank-you"] or sorted(sent[1:]) == sorted(
        ["layer2-how-to", "backend-any", "follow-up", "thank-you"]
    )
    assert "backend-course" not in sent  # that back-end sequence is for another product

    # A second purchase while the back-end sequence runs does not restart it.
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, ada.id)
        assert (
            await start_triggered(
                session,
                subscriber,
                "purchase",
                rt.clock.now(),  # type: ignore[arg-type]
                product="course",
            )
            != []
        )
        again = await start_triggered(session, subscriber, "purchase", rt.clock.now())  # type: ignore[arg-type]
    assert again == []
    rt.clock.advance(days=2)
    await tick(rt)
    sent = await templates_sent(rt, ada.id)
    assert "backend-any-2" in sent and "thank-you-2" in sent
    assert len(sent) == len(set(sent))


async def test_hand_off_never_sends_a_step_twice(rt: Runtime) -> None:
    await add_sequence(rt, "purchase", "backend")
    bob = await make_subscriber(rt, "bob@example.com")
    await tick(rt)
    await record(rt, bob.id, "purchase")  # → layer 2; back-end sequence starts
    assert await layer_of(rt, bob.id) == 2
    async with rt.db.read() as session:
        states = {
            (await session.get(Sequence, e.sequence_id)).trigger + str(e.state)  # type: ignore[union-attr]
            for e in (await session.execute(select(Enrollment).where(Enrollment.subscriber_id == bob.id))).scalars()
        }
    assert states == {"layerhanded_off", "layeractive", "purchaseactive"}

    # Moved back by hand and promoted again: layer 1 and 2 restart, but no step is repeated.
    await move_subscriber(rt, bob.id, 1, "test")
    for _ in range(6):
        rt.clock.advance(days=3)
        await tick(rt)
    await move_subscriber(rt, bob.id, 2, "again")
    for _ in range(6):
        rt.clock.advance(days=3)
        await tick(rt)
    sent = await templates_sent(rt, bob.id)
    assert len(sent) == len(set(sent)), sent
    assert {"layer1-welcome", "layer1-first-step", "layer1-road-ahead", "layer2-how-to", "backend", "backend-2"} <= set(
        sent
    )
    async with rt.db.read() as session:
        moves = (
            (
                await session.execute(
                    select(LayerHistory)
                    .where(LayerHistory.subscriber_id == bob.id, LayerHistory.kind == "move")
                    .order_by(LayerHistory.id)
                )
            )
            .scalars()
            .all()
        )
    assert [m.reason.split(":")[0] for m in moves] == ["purchase in layer 1", "admin", "admin"]
    assert moves[0].event_ids


async def test_editing_a_sequence_never_resends(rt: Runtime) -> None:
    eve = await make_subscriber(rt, "eve@example.com")
    await tick(rt)
    await add_template(rt, "extra")
    async with rt.db.transaction() as session:
        main = (await session.execute(select(Sequence).where(Sequence.name.like("New customer%")))).scalar_one()
        seq = await sequences_service.sequence_json(session, main)
        first = seq["steps"][0]
        await sequences_service.update_step(
            session, main.id, first["id"], {"template": "layer1-first-step", "delay": "1h"}, rt.settings
        )
        await sequences_service.add_step(
            session, main.id, {"delay": "1d", "template": "extra", "purpose": "offer"}, rt.settings
        )
    for _ in range(5):
        rt.clock.advance(days=2)
        await tick(rt)
    sent = await templates_sent(rt, eve.id)
    assert sent == ["layer1-welcome", "layer1-first-step", "layer1-road-ahead", "extra"]
    async with rt.db.transaction() as session:
        try:
            await sequences_service.delete_step(session, main.id, first["id"])
        except Exception as exc:  # noqa: BLE001
            assert getattr(exc, "status", None) == 409
        else:
            raise AssertionError("a sent step was deleted")


async def test_caps_postpone_and_windows_and_conditions(rt: Runtime) -> None:
    async with rt.db.transaction() as session:
        await layers_service.update_layer(
            session, 1, {"rule": {"promote": {"on_any": ["reply"]}, "caps": {"max_per_week": 1}}}
        )
        main = (await session.execute(select(Sequence).where(Sequence.name.like("New customer%")))).scalar_one()
        steps = (await sequences_service.sequence_json(session, main))["steps"]
        await sequences_service.update_step(
            session,
            main.id,
            steps[2]["id"],
            {
                "send_window": {"days": "mon-fri", "start": "09:00", "end": "17:00"},
                "condition": {"skip_if_purchased": True},
            },
            rt.settings,
        )
    ann = await make_subscriber(rt, "ann@example.com")
    cat = await make_subscriber(rt, "cat@example.com")
    await tick(rt)  # Monday 09:00: the welcome for both
    rt.clock.advance(days=2)
    await tick(rt)  # step 2 due after 2 days, but the cap allows one mail a week
    assert await templates_sent(rt, ann.id) == ["layer1-welcome"]
    async with rt.db.read() as session:
        due = (
            await session.execute(
                select(Enrollment.due_at).where(Enrollment.subscriber_id == ann.id, Enrollment.state == "active")
            )
        ).scalar_one()
    assert due == rt.clock.now() + __import__("datetime").timedelta(days=5)
    await record(rt, cat.id, "purchase")  # cat buys: step 3 (skip if purchased) is skipped
    rt.clock.advance(days=5)
    await tick(rt)
    assert await templates_sent(rt, ann.id) == ["layer1-welcome", "layer1-first-step"]
    rt.clock.advance(days=8, hours=9)  # step 3: cap allows it, but it is Tuesday 18:00
    await tick(rt)
    assert len(await templates_sent(rt, ann.id)) == 2
    rt.clock.advance(hours=15, minutes=1)  # Wednesday 09:01, inside the window
    await tick(rt)
    assert await templates_sent(rt, ann.id) == ["layer1-welcome", "layer1-first-step", "layer1-road-ahead"]


async def test_sweep_demotes_then_sunsets_and_machine_events_do_not_help(rt: Runtime) -> None:
    dan = await make_subscriber(rt, "dan@example.com", layer=3)
    await tick(rt)
    await mark_sent(rt)
    async with rt.db.read() as session:
        message_id = (
            (await session.execute(select(Message.id).where(Message.subscriber_id == dan.id))).scalars().first()
        )
    rt.clock.advance(days=60)
    await record(rt, dan.id, "click", message_id=message_id, machine=True)  # a link scanner
    rt.clock.advance(days=30)
    async with rt.db.transaction() as session:
        assert len(await sweep(session, rt.clock.now())) == 1
    assert await layer_of(rt, dan.id) == 2
    rt.clock.advance(days=89)
    async with rt.db.transaction() as session:
        assert len(await sweep(session, rt.clock.now())) == 0  # 89 days in layer 2: nothing yet
    rt.clock.advance(days=1)
    async with rt.db.transaction() as session:
        assert len(await sweep(session, rt.clock.now())) == 1  # 180 silent days: sunset
        subscriber = await session.get(Subscriber, dan.id)
        assert subscriber.status == "sunset"  # type: ignore[union-attr]
        assert (
            await session.execute(select(Event.type).where(Event.subscriber_id == dan.id, Event.type == "sunset"))
        ).scalar_one()
    assert await active_enrollments(rt, dan.id) == 0
    before = len(await templates_sent(rt, dan.id))
    rt.clock.advance(days=30)
    await tick(rt)
    assert len(await templates_sent(rt, dan.id)) == before
    # Coming back (a human reply) makes them active again, and the reply is judged like any
    # other event: the default rule promotes on a reply, so layer 2 → 3, whose next step goes.
    recorded = await record(rt, dan.id, "reply")
    assert recorded.promoted_to == 3
    async with rt.db.read() as session:
        assert (await session.get(Subscriber, dan.id)).status == "active"  # type: ignore[union-attr]
    assert await layer_of(rt, dan.id) == 3
    assert await active_enrollments(rt, dan.id) == 1
    await tick(rt)  # layer 3's first step was sent before: passed over, the next one scheduled
    rt.clock.advance(days=30)
    await tick(rt)
    sent = await templates_sent(rt, dan.id)
    assert len(sent) > before and sent.count("layer3-mastery") == 1  # never a step twice


async def test_hysteresis_then_the_sweep_promotes(rt: Runtime) -> None:
    async with rt.db.transaction() as session:
        await layers_service.update_layer(session, 2, {"rule": {"promote": {"on_any": ["purchase"]}, "min_stay": "7d"}})
    fay = await make_subscriber(rt, "fay@example.com", layer=2)
    rt.clock.advance(days=1)
    recorded = await record(rt, fay.id, "purchase", data={"value": 10})
    assert recorded.judged is None
    rt.clock.advance(days=6)
    async with rt.db.transaction() as session:
        assert len(await sweep(session, rt.clock.now())) == 1
    assert await layer_of(rt, fay.id) == 3


async def test_preferred_by_rule_and_by_hand(rt: Runtime) -> None:
    async with rt.db.transaction() as session:
        await layers_service.update_layer(
            session, 3, {"rule": {"promote": {"on_any": ["reply"]}, "preferred": {"purchase_value": 500}}}
        )
    gil = await make_subscriber(rt, "gil@example.com", layer=3)
    await record(rt, gil.id, "purchase", data={"value": 300, "product": "a"})
    async with rt.db.read() as session:
        assert "preferred" not in (await session.get(Subscriber, gil.id)).tags  # type: ignore[union-attr]
    await record(rt, gil.id, "purchase", data={"value": 250, "product": "b"})
    async with rt.db.read() as session:
        assert "preferred" in (await session.get(Subscriber, gil.id)).tags  # type: ignore[union-attr]
    async with rt.db.transaction() as session:
        subscriber = await layers_service.set_preferred(session, gil.id, False)
        assert "preferred" not in subscriber.tags
        subscriber = await layers_service.set_preferred(session, gil.id, True)
        assert subscriber.tags == ["preferred"]
        assert (await session.execute(select(Layer.position).where(Layer.id == subscriber.layer_id))).scalar_one() == 3
