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


KNOWN_RULE_KEYS = {"on_any", "clicked_messages"}


def rule_watches(rule: dict[str, Any], event_type: str) -> bool:
    """Can an event of this type change what ``rule`` decides? True for any rule this code does
    not fully understand, so a richer rule format is never judged too rarely."""
    promote = rule.get("promote", {}) if isinstance(rule, dict) else None
    if not isinstance(promote, dict) or set(promote) - KNOWN_RULE_KEYS or set(rule) - {"promote"}:
        return True
    return event_type in promote.get("on_any", ()) or (
        event_type == "click" and bool(promote.get("clicked_messages")))


async def judge_many(
    session: AsyncSession, subscriber_ids: set[int], now: dt.datetime,
    event_types: dict[int, set[str]] | None = None,
) -> list[LayerHistory]:
    """``judge`` for many subscribers at once (a flushed batch of tracking events): a handful of
    queries for the lot instead of a few per subscriber; the moves it made.

    With ``event_types`` (subscriber id → types of their new events), subscribers whose layer
    rule watches none of those types are not judged: their decision cannot have changed.
    """
    if not subscriber_ids:
        return []
    layers = {layer.id: layer for layer in (await session.execute(select(Layer))).scalars()}
    if event_types is not None:
        watching = {layer_id for layer_id, layer in layers.items()
                    if any(rule_watches(layer.rule or {}, t) for t in PROMOTING_TYPES
                           if any(t in types for types in event_types.values()))}
        if not watching:
            return []
    by_position = {layer.position: layer for layer in layers.values()}
    top = max(by_position, default=0)
    # Plain columns, not whole rows: the attributes and tags JSON are not needed to judge.
    subscribers = [s for s in (await session.execute(
        select(Subscriber.id, Subscriber.status, Subscriber.layer_id, Subscriber.layer_entered_at,
               Subscriber.created_at)
        .where(Subscriber.id.in_(subscriber_ids)).order_by(Subscriber.id)
    )).all() if s.status == "active" and s.layer_id in layers and (
        event_types is None or any(rule_watches(layers[s.layer_id].rule or {}, t)
                                   for t in event_types.get(s.id, ())))]
    if not subscribers:
        return []
    since = min(s.layer_entered_at or s.created_at for s in subscribers)
    facts: dict[int, list[EventFact]] = {}
    for r in (await session.execute(
        select(Event.id, Event.subscriber_id, Event.type, Event.created_at, Event.message_id,
               Event.machine)
        .where(Event.subscriber_id.in_([s.id for s in subscribers]), Event.created_at > since,
               Event.type.in_(PROMOTING_TYPES))
    )).all():
        facts.setdefault(r.subscriber_id, []).append(
            EventFact(r.id, r.type, r.created_at, r.message_id, r.machine))
    moves = []
    for row in subscribers:
        layer = layers[row.layer_id]
        decision = evaluate(layer.rule or {}, position=layer.position, top_position=top,
                            entered_at=row.layer_entered_at or row.created_at,
                            events=facts.get(row.id, []))
        if decision.moves:
            subscriber = await session.get(Subscriber, row.id)
            assert subscriber is not None
            moves.append(await move_layer(
                session, subscriber, by_position[decision.target_position],  # type: ignore[index]
                reason=decision.reason, event_ids=decision.event_ids, now=now))
    return moves
