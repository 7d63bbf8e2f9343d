"""Recording what subscribers do, and letting each human event re-judge their layer at once."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Event, Layer, LayerHistory, Subscriber
from .sequences.funnel import move_layer, top_position
from .sequences.promotion import PROMOTING_TYPES, Decision, EventFact, evaluate

EVENT_TYPES = frozenset({
    "sent", "open", "click", "reply", "enquiry", "purchase", "referral", "unsubscribe", "bounce",
    "complaint", "confirm", "promoted",
})
# Types the admin API may record for an address (the rest come from tracking and delivery).
API_EVENT_TYPES = ("purchase", "referral", "reply", "enquiry")


@dataclass(frozen=True)
class Recorded:
    event: Event
    decision: Decision
    history: LayerHistory | None


async def record_event(
    session: AsyncSession,
    subscriber: Subscriber,
    type: str,
    now: dt.datetime,
    *,
    message_id: int | None = None,
    url: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    machine: bool = False,
    data: dict[str, Any] | None = None,
) -> Recorded:
    event = Event(subscriber_id=subscriber.id, message_id=message_id, type=type, url=url, ip=ip,
                  user_agent=user_agent, machine=machine, data=data or {}, created_at=now)
    session.add(event)
    await session.flush()
    decision, history = await judge(session, subscriber, now) if (
        not machine and type in PROMOTING_TYPES
    ) else (Decision(None), None)
    return Recorded(event, decision, history)


async def judge(
    session: AsyncSession, subscriber: Subscriber, now: dt.datetime
) -> tuple[Decision, LayerHistory | None]:
    """Evaluate the subscriber's layer rule on their events in the layer; move them if it says so."""
    if subscriber.status != "active" or subscriber.layer_id is None:
        return Decision(None), None
    layer = await session.get(Layer, subscriber.layer_id)
    assert layer is not None
    entered_at = subscriber.layer_entered_at or subscriber.created_at
    rows = (await session.execute(
        select(Event.id, Event.type, Event.created_at, Event.message_id, Event.machine)
        .where(Event.subscriber_id == subscriber.id, Event.created_at > entered_at,
               Event.type.in_(PROMOTING_TYPES))
    )).all()
    facts = [EventFact(r.id, r.type, r.created_at, r.message_id, r.machine) for r in rows]
    decision = evaluate(layer.rule or {}, position=layer.position,
                        top_position=await top_position(session), entered_at=entered_at,
                        events=facts)
    if not decision.moves:
        return decision, None
    target = (await session.execute(
        select(Layer).where(Layer.position == decision.target_position)
    )).scalar_one()
    history = await move_layer(session, subscriber, target, reason=decision.reason,
                               event_ids=decision.event_ids, now=now)
    return decision, history
