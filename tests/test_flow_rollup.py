"""The layer flow's day counts rolled up span by span: entries, moves up and down, departures
and a sunset over six weeks, rolled at moments in between. The stats (all time and since a
day), ``responder stats``' figures and the dashboard read the same whether a span was rolled or
is still folded from the history, and the rolled counts are what one fold of every history
gives."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from sqlalchemy import select, update

from responder.funnel import rollup
from responder.funnel.analytics import funnel_stats
from responder.funnel.dashboard import dashboard_stats
from responder.funnel.enrollments import move_layer, sunset
from responder.funnel.events import record_event
from responder.funnel.flow import count_flow
from responder.models import Layer, RolledFigure, RollupState, Subscriber
from responder.runtime import Runtime

from .funnel_fixtures import make_subscriber, rt  # noqa: F401


async def moved(rt: Runtime, subscriber_id: int, position: int) -> None:  # noqa: F811
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        layer = (await session.execute(select(Layer).where(Layer.position == position))).scalar_one()
        assert subscriber is not None
        await move_layer(session, subscriber, layer, reason="test", event_ids=[], now=rt.clock.now())


async def left(rt: Runtime, subscriber_id: int, how: str) -> None:  # noqa: F811
    async with rt.db.transaction() as session:
        await session.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values(status="unsubscribed"))
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        await record_event(session, subscriber, how, rt.clock.now())


async def reports(rt: Runtime) -> dict[str, Any]:  # noqa: F811
    now = rt.clock.now()
    async with rt.db.read() as session:
        everything = await funnel_stats(session, now)
        recent = await funnel_stats(session, now, now - dt.timedelta(days=8))
        board = (await dashboard_stats(session, now)).json()
    for stats in (everything, recent):
        stats.pop("until")
    return {"all": everything, "recent": recent, "dashboard": board}


async def rolled_flow(rt: Runtime) -> tuple[Counter[Any], dt.datetime | None]:  # noqa: F811
    async with rt.db.read() as session:
        rows = await session.execute(
            select(RolledFigure.day, RolledFigure.layer_id, RolledFigure.metric, RolledFigure.value).where(
                RolledFigure.scope == "flow"
            )
        )
        counts: Counter[Any] = Counter({(d, layer, m): v for d, layer, m, v in rows})
        until = (await session.execute(select(RollupState.flow_rolled_until))).scalar_one_or_none()
    return counts, until


async def test_the_layer_flow_reads_the_same_rolled_up_span_by_span(rt: Runtime) -> None:  # noqa: F811
    people = [(await make_subscriber(rt, f"p{i}@example.com")).id for i in range(6)]
    seen = []

    async def check() -> None:
        """Reports before and after a roll-up at this moment agree; the rolled counts are one
        fold of everything up to where the roll-up stands."""
        rt.clock.advance(600)  # past the roll-up's lag
        before = await reports(rt)
        await rollup.roll(rt.db, rt.clock.now(), budget_s=60)
        assert await reports(rt) == before
        counts, until = await rolled_flow(rt)
        assert until == rt.clock.now() - rollup.LAG
        async with rt.db.read() as session:
            assert counts == +(await count_flow(session, None, until))
        seen.append(before)

    rt.clock.advance(days=2)
    await moved(rt, people[0], 2)  # up after 2 days
    await moved(rt, people[1], 3)
    await check()
    rt.clock.advance(days=5)
    await moved(rt, people[0], 1)  # down after 5
    await left(rt, people[2], "unsubscribe")
    rt.clock.advance(hours=30)  # across midnight and a week's Monday
    await moved(rt, people[3], 2)
    await check()
    rt.clock.advance(days=20)
    await moved(rt, people[3], 4)
    await left(rt, people[4], "complaint")
    async with rt.db.transaction() as session:
        await sunset(session, {people[5]: "test: silent"}, rt.clock.now())
    rt.clock.advance(days=3)
    await moved(rt, people[0], 2)  # up again: a second stay in layer 2
    await check()

    everything = {layer["position"]: layer for layer in seen[-1]["all"]["layers"]}
    assert (everything[1]["entered"], everything[1]["moved_up"]) == (7, 4)  # 6 in, p0 back, 4 went up
    assert (everything[2]["entered"], everything[2]["moved_up"]) == (3, 1)
    assert everything[2]["median_days_in_layer"] == 12.5  # stays ended by a move: p0's 5 days, p3's 20
    churn = everything[1]["churn"]
    assert (churn["unsubscribed"], churn["complained"], churn["sunset"]) == (1, 1, 1)
    recent = {layer["position"]: layer for layer in seen[-1]["recent"]["layers"]}
    assert recent[2]["entered"] == 1 and recent[1]["entered"] == 0
    moves = seen[-1]["dashboard"]["moves"]
    assert sum(m["up"] for m in moves) == 5 and sum(m["down"] for m in moves) == 1
