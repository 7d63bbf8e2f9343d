"""The one judge: any number of subscribers' layer rules evaluated at ``now`` and the moves
carried out. A click flushed by the tracker, an event posted through the API, a reply, and
the sweep all come here, so they cannot disagree.

The facts (each subscriber's layer, entry time, last human event, human events since entering,
and when the layer's steps were sent to them; with no human event yet, silence counts from
joining the list: confirming, or being imported, whose consent may be years older) are read in
a few queries for the whole lot; the decision is ``core.promotion.evaluate`` with the same
``now``; the outcome is written by the functions that own it (``enrollments.move_layer``, ``enrollments.sunset``).
``what_if`` reads the same facts for a layer and asks the same decision of a candidate rule,
writing nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import PROMOTING_TYPES, Decision, EventFact, evaluate, needs_step_times
from ..models import Event, Layer, LayerHistory, Message, Step, Subscriber
from ..models import Sequence as DripSequence
from .enrollments import move_layer, sunset

CHUNK = 500  # subscribers judged per round of queries
FACT_COLUMNS = (
    Subscriber.id,
    Subscriber.layer_id,
    Subscriber.layer_entered_at,
    Subscriber.created_at,
    Subscriber.confirmed_at,
    Subscriber.last_human_at,
)


@dataclass(frozen=True)
class Judged:
    subscriber_id: int
    decision: Decision
    history: LayerHistory | None  # the move's record; None when they stayed or were sunset


async def judge(session: AsyncSession, subscriber_ids: Iterable[int], now: dt.datetime) -> list[Judged]:
    """Judge the active subscribers among ``subscriber_ids`` at ``now``; the moves made."""
    ids = sorted(set(subscriber_ids))
    if not ids:
        return []
    layers = {
        layer.id: layer for layer in (await session.execute(select(Layer).where(Layer.removed_at.is_(None)))).scalars()
    }
    by_position = {layer.position: layer for layer in layers.values()}
    top = max(by_position, default=0)
    moved: list[Judged] = []
    for start in range(0, len(ids), CHUNK):
        rows = (
            await session.execute(
                select(*FACT_COLUMNS).where(
                    Subscriber.id.in_(ids[start : start + CHUNK]),
                    Subscriber.status == "active",
                    Subscriber.layer_id.in_(layers),
                )
            )
        ).all()
        if not rows:
            continue
        events = await _human_events(session, rows)
        sunsets: dict[int, str] = {}
        step_times = await _step_times(session, [r for r in rows if needs_step_times(layers[r.layer_id].rule or {})])
        for row in rows:
            layer = layers[row.layer_id]
            decision = _decide(row, layer.rule or {}, layer.position, top, events, step_times, now)
            if not decision.moves:
                continue
            if decision.sunset:
                sunsets[row.id] = decision.reason
                moved.append(Judged(row.id, decision, None))
                continue
            subscriber = await session.get(Subscriber, row.id)
            assert subscriber is not None
            target = by_position[decision.target_position]  # type: ignore[index]
            history = await move_layer(
                session, subscriber, target, reason=decision.reason, event_ids=decision.event_ids, now=now
            )
            moved.append(Judged(row.id, decision, history))
        await sunset(session, sunsets, now)
    return moved


@dataclass(frozen=True)
class WhatIf:
    """What a candidate rule would decide now for a layer's active subscribers."""

    judged: int
    up: int
    down: int
    sunset: int

    @property
    def stay(self) -> int:
        return self.judged - self.up - self.down - self.sunset


async def what_if(session: AsyncSession, layer: Layer, rule: dict[str, Any], now: dt.datetime) -> WhatIf:
    """Judge every active subscriber of ``layer`` at ``now`` as if ``rule`` (validated) were its
    rule, on the facts and with the decision ``judge`` uses, writing nothing: the admin's check
    before saving a rule."""
    top = (await session.execute(select(func.max(Layer.position)).where(Layer.removed_at.is_(None)))).scalar() or 0
    judged = up = down = sunsets = 0
    last_id = 0
    while True:
        rows = (
            await session.execute(
                select(*FACT_COLUMNS)
                .where(Subscriber.layer_id == layer.id, Subscriber.status == "active", Subscriber.id > last_id)
                .order_by(Subscriber.id)
                .limit(CHUNK)
            )
        ).all()
        if not rows:
            break
        events = await _human_events(session, rows)
        step_times = await _step_times(session, rows) if needs_step_times(rule) else {}
        for row in rows:
            decision = _decide(row, rule, layer.position, top, events, step_times, now)
            judged += 1
            sunsets += decision.sunset
            if decision.target_position is not None:
                up += decision.target_position > layer.position
                down += decision.target_position < layer.position
        last_id = rows[-1].id
    return WhatIf(judged, up, down, sunsets)


def _decide(
    row: Any,
    rule: dict[str, Any],
    position: int,
    top: int,
    events: dict[int, list[EventFact]],
    step_times: dict[int, dict[int, dt.datetime]],
    now: dt.datetime,
) -> Decision:
    """``core.promotion.evaluate`` over one subscriber's facts (a row of ``FACT_COLUMNS``)."""
    return evaluate(
        rule,
        position=position,
        top_position=top,
        entered_at=row.layer_entered_at or row.created_at,
        events=events.get(row.id, []),
        now=now,
        step_sent_at=step_times.get(row.id, {}),
        last_human_at=row.last_human_at or max(row.confirmed_at or row.created_at, row.created_at),
    )


async def _human_events(session: AsyncSession, rows: Sequence[Any]) -> dict[int, list[EventFact]]:
    """Each subscriber's human events of promoting types since entering their layer."""
    entered = {r.id: r.layer_entered_at or r.created_at for r in rows}
    facts: dict[int, list[EventFact]] = {}
    for e in (
        await session.execute(
            select(Event.id, Event.subscriber_id, Event.type, Event.created_at, Event.message_id).where(
                Event.subscriber_id.in_(entered),
                Event.created_at > min(entered.values()),
                Event.type.in_(PROMOTING_TYPES),
                Event.machine.is_(False),
            )
        )
    ).all():
        if e.created_at > entered[e.subscriber_id]:
            facts.setdefault(e.subscriber_id, []).append(EventFact(e.id, e.type, e.created_at, e.message_id))
    return facts


async def _step_times(session: AsyncSession, rows: Sequence[Any]) -> dict[int, dict[int, dt.datetime]]:
    """When each step of their layer's main sequence was queued for them (``after_step`` rules)."""
    if not rows:
        return {}
    layer_of = {r.id: r.layer_id for r in rows}
    times: dict[int, dict[int, dt.datetime]] = {}
    for subscriber_id, layer_id, position, at in await session.execute(
        select(Message.subscriber_id, DripSequence.layer_id, Step.position, Message.created_at)
        .join(Step, Message.step_id == Step.id)
        .join(DripSequence, DripSequence.id == Step.sequence_id)
        .where(Message.subscriber_id.in_(layer_of), DripSequence.trigger == "layer")
    ):
        if layer_of[subscriber_id] == layer_id:
            times.setdefault(subscriber_id, {})[position] = at
    return times
