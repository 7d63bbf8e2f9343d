"""What a subscriber may choose from a link in any mail: leave, pause, fewer mails, a lower
layer, a new name or frequency, a copy of their data, or erasure.

Every function takes the subscriber id from a verified unsubscribe token; none reveals anything
about other subscribers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, or_, select, update

from ..delivery.outbox import enqueue
from ..errors import ValidationError
from ..funnel.enrollments import end_enrollments, move_layer
from ..funnel.facts import set_status
from ..funnel.ledger import replan
from ..models import (
    ConsentRecord,
    Enquiry,
    Enrollment,
    Event,
    Layer,
    LayerHistory,
    Message,
    Subscriber,
)
from ..runtime import Runtime
from ..validation import clean_name
from .subscribers import get_subscriber, unsubscribe
from .suppression import suppress

PAUSE = dt.timedelta(days=30)
CHOICES = ("all", "pause", "fewer", "down")
FREQUENCIES = ("normal", "fewer")


async def choose(rt: Runtime, token: str, choice: str, ip: str | None, user_agent: str | None) -> Subscriber:
    """Act on one choice of the unsubscribe page; repeating a choice changes nothing more."""
    if choice not in CHOICES:
        raise ValidationError(f"choose one of {', '.join(CHOICES)}", field="choice")
    if choice == "all":
        return await unsubscribe(rt, token, ip, user_agent)
    subscriber_id = rt.tokens.read_unsubscribe(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        if subscriber.status != "active":
            return subscriber
        if choice == "pause":
            until = now + PAUSE
            subscriber.paused_until = until
            # Sequences wait out the pause: nothing of theirs falls due before it ends.
            await session.execute(
                update(Enrollment)
                .where(
                    Enrollment.subscriber_id == subscriber.id,
                    Enrollment.state == "active",
                    or_(Enrollment.due_at.is_(None), Enrollment.due_at < until),
                )
                .values(due_at=until)
            )
            # Drip and newsletter mail already queued for them (held by caps, or not yet sent)
            # waits too, paced by the caps after it; transactional mail does not.
            await replan(session, {subscriber.id}, now)
        elif choice == "fewer":
            subscriber.frequency = "fewer"
        elif choice == "down":
            layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
            if layer is not None and layer.position > 1:
                lower = (await session.execute(select(Layer).where(Layer.position == layer.position - 1))).scalar_one()
                await move_layer(
                    session, subscriber, lower, reason="subscriber chose a lower layer", event_ids=(), now=now
                )
    return subscriber


async def update_preferences(rt: Runtime, token: str, *, name: Any, frequency: Any) -> Subscriber:
    subscriber_id = rt.tokens.read_unsubscribe(token)
    if frequency not in FREQUENCIES:
        raise ValidationError(f"frequency must be one of {', '.join(FREQUENCIES)}", field="frequency")
    clean = clean_name(name)
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        subscriber.name = clean
        subscriber.frequency = frequency
    return subscriber


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


PRIVACY_MAIL_EVERY = dt.timedelta(minutes=10)  # one such mail per subscriber at most this often


async def request_privacy_link(rt: Runtime, token: str) -> str:
    """Mail the subscriber of a preference ``token`` the short-lived link that opens their data
    for download or erasure (``Tokens.privacy``): the preference link alone, which does not
    expire and may be forwarded, never does either. The address it went to, for the page."""
    subscriber_id = rt.tokens.read_unsubscribe(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        if subscriber.email.endswith("@erased.invalid"):
            raise ValidationError("this address has been erased already")
        recent = (
            await session.execute(
                select(Message.id)
                .where(
                    Message.subscriber_id == subscriber.id,
                    Message.kind == "privacy",
                    Message.created_at > now - PRIVACY_MAIL_EVERY,
                )
                .limit(1)
            )
        ).first()
        if recent is None:
            await enqueue(
                session,
                subscriber_id=subscriber.id,
                kind="privacy",
                template_name="privacy",
                now=now,
                domain=rt.settings.sender_domain,
            )
        email = subscriber.email
    rt.wake_outbox()
    return email


async def export(rt: Runtime, subscriber_id: int) -> dict[str, Any]:
    """Everything kept about the subscriber, as plain JSON data."""
    async with rt.db.read() as session:
        s = await get_subscriber(session, subscriber_id)
        layer = await session.get(Layer, s.layer_id) if s.layer_id else None
        consents = (
            await session.execute(
                select(ConsentRecord).where(ConsentRecord.subscriber_id == s.id).order_by(ConsentRecord.id)
            )
        ).scalars()
        events = (
            await session.execute(select(Event).where(Event.subscriber_id == s.id).order_by(Event.created_at, Event.id))
        ).scalars()
        enquiries = (
            await session.execute(select(Enquiry).where(Enquiry.subscriber_id == s.id).order_by(Enquiry.id))
        ).scalars()
        messages = (
            await session.execute(select(Message).where(Message.subscriber_id == s.id).order_by(Message.id))
        ).scalars()
        moves = (
            await session.execute(
                select(LayerHistory).where(LayerHistory.subscriber_id == s.id).order_by(LayerHistory.id)
            )
        ).scalars()
        return {
            "subscriber": {
                "email": s.email,
                "name": s.name,
                "status": s.status,
                "layer": layer.label if layer else None,
                "frequency": s.frequency,
                "paused_until": _iso(s.paused_until),
                "attributes": s.attributes,
                "tags": s.tags,
                "created_at": _iso(s.created_at),
                "confirmed_at": _iso(s.confirmed_at),
                "unsubscribed_at": _iso(s.unsubscribed_at),
            },
            "consent": [
                {
                    "action": c.action,
                    "form": c.form,
                    "wording_sha256": c.wording_sha256,
                    "consent_version": c.consent_version,
                    "ip": c.ip,
                    "user_agent": c.user_agent,
                    "page_url": c.page_url,
                    "at": _iso(c.created_at),
                }
                for c in consents
            ],
            "events": [
                {
                    "type": e.type,
                    "url": e.url,
                    "ip": e.ip,
                    "user_agent": e.user_agent,
                    "machine": e.machine,
                    "at": _iso(e.created_at),
                }
                for e in events
            ],
            "enquiries": [
                {"subject": q.subject, "body": q.body, "state": q.state, "at": _iso(q.created_at)} for q in enquiries
            ],
            # The mail we queued for them and how each ended, and every change of layer with its reason.
            "messages": [
                {
                    "kind": m.kind,
                    "template": m.template_name,
                    "message_id": m.message_id,
                    "state": m.state,
                    "queued_at": _iso(m.created_at),
                    "sent_at": _iso(m.sent_at),
                }
                for m in messages
            ],
            "layer_history": [
                {
                    "kind": h.kind,
                    "from": h.from_name,
                    "to": h.to_name,
                    "from_position": h.from_position,
                    "to_position": h.to_position,
                    "reason": h.reason,
                    "at": _iso(h.created_at),
                }
                for h in moves
            ],
        }


async def erase(rt: Runtime, subscriber_id: int) -> None:
    """Remove personal data, keep a suppression hash so the address is never mailed again.

    The row stays (anonymised) so counts and layer history keep adding up.
    """
    assert rt.settings.secret_key is not None
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        s = await get_subscriber(session, subscriber_id)
        if s.email.endswith("@erased.invalid"):
            return
        await suppress(session, rt.settings.secret_key, s.email, "erased", now)
        await end_enrollments(session, s.id, "stopped", now)
        await session.execute(
            update(Message)
            .where(Message.subscriber_id == s.id, Message.state.in_(("queued", "deferred")))
            .values(state="failed", last_error="subscriber erased")
        )
        await session.execute(delete(ConsentRecord).where(ConsentRecord.subscriber_id == s.id))
        await session.execute(delete(Enquiry).where(or_(Enquiry.subscriber_id == s.id, Enquiry.email == s.email)))
        await session.execute(
            update(Event).where(Event.subscriber_id == s.id).values(ip=None, user_agent=None, url=None, data={})
        )
        await session.execute(update(LayerHistory).where(LayerHistory.subscriber_id == s.id).values(reason="erased"))
        s.email = f"erased-{s.id}@erased.invalid"
        s.name = ""
        s.attributes = {}
        s.tags = []
        await set_status(session, [s.id], "unsubscribed", now)  # a bounce or complaint stays on record
        s.unsubscribed_at = s.unsubscribed_at or now
