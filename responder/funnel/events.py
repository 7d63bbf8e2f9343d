"""The recording service: every event about a subscriber comes through here, and here it is
decided what follows from it, the same way whichever path it came by (API, inbound mail, forms,
delivery, imports, and the tracking writer's batches of opens and clicks).

An event is written (``facts``), changes the subscriber's status when its type says so
(unsubscribe, complaint, hard bounce, confirm), queues the webhooks that want it, and, when it
is human activity, counts as a sign of life: it sets ``last_human_at``, brings a sunset
subscriber back, starts the sequences it triggers (a purchase its back-end sequence, an enquiry
its follow-up, a referral its thank-you), has the layer rule judged (``judge``) when the rule
watches that type, and gives the ``preferred`` tag when the rule says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import ACTIVITY_TYPES, earns_preferred, rule_watches
from ..models import Event, Layer, LayerHistory, Subscriber
from . import webhooks
from .enrollments import end_enrollments, resume
from .facts import add_event, set_status, touch_activity
from .judge import Judged, judge
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
# The status an event of a type leads to (a bounce only when hard: ``status_after``).
STATUS_AFTER = {"unsubscribe": "unsubscribed", "complaint": "complained", "confirm": "active"}
PREFERRED = "preferred"
# Which of a revived subscriber's event types the history names (the most telling first).
REVIVAL_ORDER = ("reply", "purchase", "enquiry", "referral", "keep", "click", "open", "confirm")


@dataclass(frozen=True)
class Recorded:
    event: Event
    status_changed: bool  # the event changed the subscriber's status
    judged: Judged | None  # the move (or sunset) judging the event made, if any

    @property
    def history(self) -> LayerHistory | None:
        return self.judged.history if self.judged else None

    @property
    def promoted_to(self) -> int | None:
        return self.judged.decision.target_position if self.judged else None


def status_after(type: str, data: Mapping[str, Any] | None) -> str | None:
    if type == "bounce":
        return "bounced" if (data or {}).get("hard") else None
    return STATUS_AFTER.get(type)


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
    """Write one event and everything that follows from it, in the caller's transaction."""
    event = await add_event(
        session,
        subscriber.id,
        type,
        now,
        message_id=message_id,
        url=url,
        ip=ip,
        user_agent=user_agent,
        machine=machine,
        data=data,
    )
    changed = False
    status = status_after(type, data)
    if status is not None:
        changed = bool(await set_status(session, [subscriber.id], status, now))
        if changed and status != "active":
            await end_enrollments(session, subscriber.id, "stopped", now)
    if type in WEBHOOK_NAMES:
        await webhooks.emit(
            session,
            WEBHOOK_NAMES[type],
            {"subscriber": {"id": subscriber.id, "email": subscriber.email}, "event_id": event.id, "data": data or {}},
            now,
        )
    if machine or type not in ACTIVITY_TYPES:
        return Recorded(event, changed, None)
    await touch_activity(session, {subscriber.id: now})
    judged = await follow_activity(session, {subscriber.id: {type}}, now, data={subscriber.id: data or {}})
    return Recorded(event, changed, judged.get(subscriber.id))


async def follow_activity(
    session: AsyncSession,
    activity: Mapping[int, Iterable[str]],
    now: dt.datetime,
    *,
    data: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[int, Judged]:
    """What human events (subscriber id → their types, already written with
    ``last_human_at`` set) lead to: a sunset subscriber is active again and their sequence
    resumes; triggered sequences start; the layer rule is judged for whoever's rule watches one
    of the types; ``preferred`` is given when earned. The moves made, by subscriber."""
    types = {subscriber_id: set(kinds) for subscriber_id, kinds in activity.items()}
    if not types:
        return {}
    subscribers = list(
        (await session.execute(select(Subscriber).where(Subscriber.id.in_(types)).order_by(Subscriber.id))).scalars()
    )
    for subscriber in subscribers:
        if subscriber.status == "sunset" and await set_status(session, [subscriber.id], "active", now):
            await resume(session, subscriber, min(types[subscriber.id], key=REVIVAL_ORDER.index), now)
    rules = {layer.id: layer.rule or {} for layer in (await session.execute(select(Layer))).scalars()}
    for subscriber in subscribers:
        for trigger in types[subscriber.id] & set(TRIGGERS):
            product = (data or {}).get(subscriber.id, {}).get("product")
            await start_triggered(
                session, subscriber, trigger, now, product=product if isinstance(product, str) else None
            )
    watching = [
        s.id
        for s in subscribers
        if s.status == "active" and any(rule_watches(rules.get(s.layer_id or 0, {}), t) for t in types[s.id])
    ]
    judged = {j.subscriber_id: j for j in await judge(session, watching, now)}
    for subscriber in subscribers:
        if subscriber.id not in judged and types[subscriber.id] & {"purchase", "click"}:
            await grant_preferred(session, subscriber)
    return judged


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
