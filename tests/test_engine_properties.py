"""Properties of the engine over arbitrary histories (hypothesis): whatever a subscriber does and
whenever — clicks, opens, purchases, machine hits, newsletters to their layer, time passing —
the real scheduler, recording service and judge (on a real SQLite file) never send a step
twice, never exceed the layer's caps (``max_per_week`` in any 7 days, ``min_gap``, a day
between a step and a newsletter), and never move anyone during ``min_stay``."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from responder.app import start_runtime
from responder.clock import FakeClock
from responder.funnel import newsletters
from responder.funnel.events import record_event
from responder.funnel.layers import update_layer
from responder.funnel.scheduler import Scheduler
from responder.models import Layer, LayerHistory, Message, Subscriber
from responder.runtime import Runtime

from .conftest import make_settings
from .db_template import seeded
from .funnel_fixtures import make_subscriber

DAY = dt.timedelta(days=1)
MIN_STAY = 3 * DAY
RULE = {
    "promote": {"on_any": ["purchase"], "clicked_messages": 2},
    "demote": {"inactive_for": "10d"},
    "sunset": {"inactive_for": "40d"},
    "min_stay": "3d",
    "caps": {"max_per_week": 2, "min_gap": "1d"},
}
ACTIONS = st.one_of(
    st.tuples(st.just("wait"), st.integers(min_value=1, max_value=120)),  # hours
    st.tuples(st.sampled_from(["click", "open", "purchase", "machine_click", "newsletter"]), st.just(0)),
)


async def deliver(rt: Runtime, scheduler: Scheduler) -> None:
    """The scheduler's due work, then every queued mail due by now delivered when it was due
    (a worker sends at once what falls due; tested on its own elsewhere)."""
    while await scheduler.run_once():
        pass
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        await session.execute(
            update(Message)
            .where(Message.state == "queued", Message.next_attempt_at <= now)
            .values(state="sent", sent_at=Message.next_attempt_at)
        )


async def play(actions: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'p.db'}"
        settings, clock = make_settings(url, "file:///tmp/unused-outbox"), FakeClock()
        await seeded(settings, clock.now())
        rt = (await start_runtime(settings, clock)).runtime
        try:
            await check(rt, actions)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; actions {actions}") from None
        finally:
            await rt.close()


async def check(rt: Runtime, actions: list[tuple[str, int]]) -> None:
    async with rt.db.transaction() as session:
        for position in range(1, 6):
            await update_layer(session, position, {"rule": RULE})
    ann = await make_subscriber(rt, "ann@example.com")
    scheduler = Scheduler(rt)
    await deliver(rt, scheduler)
    for number, (kind, hours) in enumerate(actions):
        if kind == "wait":  # the scheduler runs every 6 hours meanwhile, as a server's would (and more)
            for _ in range(hours // 6):
                rt.clock.advance(hours=6)
                await deliver(rt, scheduler)
            rt.clock.advance(hours=hours % 6)
        else:
            rt.clock.advance(seconds=30)
            async with rt.db.transaction() as session:
                subscriber = await session.get(Subscriber, ann.id)
                assert subscriber is not None
                newest = (
                    await session.execute(
                        select(Message.id)
                        .where(Message.subscriber_id == ann.id, Message.state == "sent")
                        .order_by(Message.id.desc())
                        .limit(1)
                    )
                ).scalar_one_or_none()
                now = rt.clock.now()
                if kind == "newsletter":
                    layer = await session.get(Layer, subscriber.layer_id)
                    assert layer is not None
                    await newsletters.create(
                        session,
                        {"name": f"n{number}", "template": "newsletter", "layers": [layer.position], "send_now": True},
                        now,
                        rt.settings,
                    )
                elif subscriber.status in ("active", "sunset"):
                    machine = kind == "machine_click"
                    await record_event(
                        session,
                        subscriber,
                        "click" if machine else kind,
                        now,
                        message_id=newest if kind != "purchase" else None,
                        machine=machine,
                        data={"value": 10} if kind == "purchase" else None,
                    )
        await deliver(rt, scheduler)

    async with rt.db.read() as session:
        mails = (
            await session.execute(
                select(Message.kind, Message.step_id, Message.sent_at)
                .where(Message.subscriber_id == ann.id, Message.state == "sent")
                .order_by(Message.sent_at)
            )
        ).all()
        history = (
            (
                await session.execute(
                    select(LayerHistory).where(LayerHistory.subscriber_id == ann.id).order_by(LayerHistory.id)
                )
            )
            .scalars()
            .all()
        )
    steps = [m.step_id for m in mails if m.kind == "step"]
    assert len(steps) == len(set(steps)), "a step was sent twice"
    counted = [(m.sent_at, m.kind) for m in mails if m.kind in ("step", "newsletter")]
    for i, (at, _kind) in enumerate(counted):
        earlier = [(t, k) for t, k in counted[:i]]
        assert sum(1 for t, _ in earlier if at - t < 7 * DAY) < RULE["caps"]["max_per_week"], counted  # type: ignore[index]
        # min_gap is a day, so this also keeps a step and a newsletter a day apart.
        assert all(at - t >= DAY for t, _ in earlier), ("closer than min_gap", counted)
    entered = history[0].created_at if history else None
    for row in history[1:]:
        if row.kind in ("move", "sunset"):
            assert entered is not None and row.created_at - entered >= MIN_STAY, (
                "moved during min_stay",
                [(h.kind, h.created_at, h.to_position) for h in history],
            )
        if row.kind in ("move", "enter", "revive"):
            entered = row.created_at


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(ACTIONS, min_size=1, max_size=20))
def test_no_history_sends_a_step_twice_breaks_the_caps_or_moves_during_min_stay(actions: list[tuple[str, int]]) -> None:
    asyncio.run(play(actions))
