"""Recording what subscribers do, and letting each human event re-judge their layer at once.

Recording an event also starts the sequence it triggers (a purchase its back-end sequence, an
enquiry its follow-up, a referral its thank-you), gives the ``preferred`` tag when the layer's
rule says so, and queues the outgoing webhooks that want it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import (
    PROMOTING_TYPES,
    Decision,
    EventFact,
    earns_preferred,
    evaluate,
    rule_watches,
)
from ..models import Event, Layer, LayerHistory, Message, Step, Subscriber
from . import webhooks
from .enrollments import layer_sequence, move_layer, revive, sunset, top_position
from .triggers import TRIGGERS, start_triggered

EVENT_TYPES = frozenset(
    {
        "sent",
        "open",
        "click",
        "reply",
        "enquiry",
        "purchase",
        "referral",
        "unsubscribe",
        "bounce",
        "complaint",
        "confirm",
        "promoted",
        "sunset",
    }
)
# Types the admin API may record for an address (the rest come from tracking and delivery).
API_EVENT_TYPES = ("purchase", "referral", "reply", "enquiry")
WEBHOOK_NAMES = {"purchase": "purchase", "referral": "referral", "enquiry": "enquiry", "unsubscribe": "unsubscribed"}
PREFERRED = "preferred"


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
    event = Event(
        subscriber_id=subscriber.id,
        message_id=message_id,
        type=type,
        url=url,
        ip=ip,
        user_agent=user_agent,
        machine=machine,
        data=data or {},
        created_at=now,
    )
    session.add(event)
    await session.flush()
    if type in WEBHOOK_NAMES:
        await webhooks.emit(
            session,
            WEBHOOK_NAMES[type],
            {
                "subscriber": {"id": subscriber.id, "email": subscriber.email},
                "event_id": event.id,
                "data": data or {},
            },
            now,
        )
    if machine or type not in PROMOTING_TYPES:
        return Recorded(event, Decision(None), None)
    if subscriber.status == "sunset":
        await revive(session, subscriber, type, now)
    subscriber.last_human_at = now
    if type in TRIGGERS:
        product = (data or {}).get("product")
        await start_triggered(session, subscriber, type, now, product=product if isinstance(product, str) else None)
    decision, history = (
        await judge(session, subscriber, now)
        if await may_promote(session, subscriber, type)
        else (Decision(None), None)
    )
    if history is None and type in ("purchase", "click"):
        await grant_preferred(session, subscriber)
    return Recorded(event, decision, history)


async def may_promote(session: AsyncSession, subscriber: Subscriber, type: str) -> bool:
    """Whether an event of this type can promote under the layer's rule (demotion and sunset
    come with time, in the daily sweep, never with an event)."""
    if subscriber.status != "active" or subscriber.layer_id is None:
        return False
    layer = await session.get(Layer, subscriber.layer_id)
    promote = ((layer.rule if layer else None) or {}).get("promote", {})
    if type in promote.get("on_any", []):
        return True
    return type == "click" and bool(promote.get("clicked_messages") or promote.get("clicks"))


async def step_sent_at(session: AsyncSession, subscriber: Subscriber, layer_id: int) -> dict[int, dt.datetime]:
    sequence = await layer_sequence(session, layer_id)
    if sequence is None:
        return {}
    rows = await session.execute(
        select(Step.position, Message.created_at)
        .join(Message, Message.step_id == Step.id)
        .where(Message.subscriber_id == subscriber.id, Step.sequence_id == sequence.id)
    )
    return {position: at for position, at in rows}


async def judge(
    session: AsyncSession, subscriber: Subscriber, now: dt.datetime, *, top: int | None = None
) -> tuple[Decision, LayerHistory | None]:
    """Evaluate the subscriber's layer rule at ``now``; move (or sunset) them if it says so."""
    if subscriber.status != "active" or subscriber.layer_id is None:
        return Decision(None), None
    layer = await session.get(Layer, subscriber.layer_id)
    assert layer is not None
    rule = layer.rule or {}
    entered_at = subscriber.layer_entered_at or subscriber.created_at
    rows = (
        await session.execute(
            select(Event.id, Event.type, Event.created_at, Event.message_id, Event.machine).where(
                Event.subscriber_id == subscriber.id,
                Event.created_at > entered_at,
                Event.type.in_(PROMOTING_TYPES),
                Event.machine.is_(False),
            )
        )
    ).all()
    facts = [EventFact(r.id, r.type, r.created_at, r.message_id, r.machine) for r in rows]
    sent_steps = (
        await step_sent_at(session, subscriber, layer.id)
        if rule.get("promote", {}).get("clicks", {}).get("after_step")
        else {}
    )
    decision = evaluate(
        rule,
        position=layer.position,
        top_position=top or await top_position(session),
        entered_at=entered_at,
        events=facts,
        now=now,
        step_sent_at=sent_steps,
        last_human_at=subscriber.last_human_at or subscriber.confirmed_at or subscriber.created_at,
    )
    if decision.sunset:
        await sunset(session, subscriber, decision.reason, now)
        return decision, None
    if not decision.moves:
        return decision, None
    target = (
        await session.execute(
            select(Layer).where(Layer.position == decision.target_position, Layer.removed_at.is_(None))
        )
    ).scalar_one()
    history = await move_layer(
        session, subscriber, target, reason=decision.reason, event_ids=decision.event_ids, now=now
    )
    return decision, history


async def judge_many(
    session: AsyncSession,
    subscriber_ids: set[int],
    now: dt.datetime,
    event_types: dict[int, set[str]] | None = None,
) -> list[LayerHistory]:
    """``judge`` for many subscribers at once (a flushed batch of tracking events): a handful of
    queries for the lot instead of a few per subscriber; the moves it made.

    With ``event_types`` (subscriber id → types of their new events), subscribers whose layer
    rule watches none of those types are not judged: their decision cannot have changed.
    """
    if not subscriber_ids:
        return []
    # Columns, not entities: this runs on every flush of the tracking queue.
    layers = {layer.id: layer for layer in (await session.execute(select(Layer.id, Layer.position, Layer.rule))).all()}
    if event_types is not None:
        arrived = set().union(*event_types.values()) & PROMOTING_TYPES
        watching = {
            layer_id for layer_id, layer in layers.items() if any(rule_watches(layer.rule or {}, t) for t in arrived)
        }
        if not watching:
            return []
    by_position = {layer.position: layer for layer in layers.values()}
    top = max(by_position, default=0)
    # Plain columns, not whole rows: the attributes and tags JSON are not needed to judge.
    subscribers = [
        s
        for s in (
            await session.execute(
                select(
                    Subscriber.id,
                    Subscriber.status,
                    Subscriber.layer_id,
                    Subscriber.layer_entered_at,
                    Subscriber.created_at,
                )
                .where(Subscriber.id.in_(subscriber_ids))
                .order_by(Subscriber.id)
            )
        ).all()
        if s.status == "active"
        and s.layer_id in layers
        and (
            event_types is None
            or any(rule_watches(layers[s.layer_id].rule or {}, t) for t in event_types.get(s.id, ()))
        )
    ]
    if not subscribers:
        return []
    since = min(s.layer_entered_at or s.created_at for s in subscribers)
    facts: dict[int, list[EventFact]] = {}
    for r in (
        await session.execute(
            select(Event.id, Event.subscriber_id, Event.type, Event.created_at, Event.message_id, Event.machine).where(
                Event.subscriber_id.in_([s.id for s in subscribers]),
                Event.created_at > since,
                Event.type.in_(PROMOTING_TYPES),
            )
        )
    ).all():
        facts.setdefault(r.subscriber_id, []).append(EventFact(r.id, r.type, r.created_at, r.message_id, r.machine))
    moves = []
    for row in subscribers:
        layer = layers[row.layer_id]
        decision = evaluate(
            layer.rule or {},
            position=layer.position,
            top_position=top,
            entered_at=row.layer_entered_at or row.created_at,
            events=facts.get(row.id, []),
        )
        if decision.moves:
            subscriber = await session.get(Subscriber, row.id)
            assert subscriber is not None
            target = await session.get(Layer, by_position[decision.target_position].id)  # type: ignore[index]
            assert target is not None
            moves.append(
                await move_layer(
                    session, subscriber, target, reason=decision.reason, event_ids=decision.event_ids, now=now
                )
            )
    return moves


async def grant_preferred(session: AsyncSession, subscriber: Subscriber) -> bool:
    """Tag the subscriber ``preferred`` when their layer's rule says they earned it."""
    tags = list(subscriber.tags or [])
    if PREFERRED in tags or subscriber.layer_id is None:
        return False
    layer = await session.get(Layer, subscriber.layer_id)
    if layer is None or not (layer.rule or {}).get("preferred"):
        return False
    entered_at = subscriber.layer_entered_at or subscriber.created_at
    rows = (
        await session.execute(
            select(Event.type, Event.data, Event.created_at).where(
                Event.subscriber_id == subscriber.id, Event.type.in_(("purchase", "click")), Event.machine.is_(False)
            )
        )
    ).all()
    total = sum(_value(data) for type_, data, _ in rows if type_ == "purchase")
    clicks = sum(1 for type_, _, at in rows if type_ == "click" and at > entered_at)
    if not earns_preferred(layer.rule, purchase_total=total, human_clicks=clicks):
        return False
    subscriber.tags = [*tags, PREFERRED]
    return True


def _value(data: Any) -> float:
    value = (data or {}).get("value") if isinstance(data, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
