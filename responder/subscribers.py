"""Opt-in, confirmation and opt-out: the permission part of the loop."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select

from .delivery import outbox
from .errors import InvalidToken
from .events import record_event
from .models import ConsentRecord, Layer, Message, Subscriber
from .runtime import Runtime
from .sequences.funnel import end_enrollments, enroll
from .validation import clean_email, clean_form_id, clean_name, clean_text

CONFIRM_RESEND_S = 600


@dataclass(frozen=True)
class SubscribeRequest:
    email: str
    name: str = ""
    form: str = "default"
    consent_text: str = ""
    ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def from_input(cls, data: dict[str, object], ip: str | None, user_agent: str | None) -> SubscribeRequest:
        return cls(
            email=clean_email(data.get("email")),
            name=clean_name(data.get("name")),
            form=clean_form_id(data.get("form")),
            consent_text=clean_text(data.get("consent"), "consent", max_len=2000),
            ip=ip,
            user_agent=(user_agent or "")[:512] or None,
        )


async def subscribe(rt: Runtime, req: SubscribeRequest) -> None:
    """Record the opt-in and send a confirmation; the outcome is never revealed to the caller."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = (await session.execute(
            select(Subscriber).where(Subscriber.email == req.email)
        )).scalar_one_or_none()
        if subscriber is None:
            subscriber = Subscriber(email=req.email, name=req.name, status="pending",
                                    attributes={}, tags=[], created_at=now)
            session.add(subscriber)
            await session.flush()
        elif subscriber.status in ("active", "bounced", "complained"):
            return
        elif subscriber.status == "unsubscribed":
            subscriber.status = "pending"
        if req.name:
            subscriber.name = req.name
        session.add(ConsentRecord(
            subscriber_id=subscriber.id, action="subscribe", form=req.form,
            wording_sha256=hashlib.sha256(req.consent_text.encode()).hexdigest()
            if req.consent_text else None,
            ip=req.ip, user_agent=req.user_agent, created_at=now,
        ))
        recent = (await session.execute(
            select(func.count()).select_from(Message).where(
                Message.subscriber_id == subscriber.id, Message.kind == "confirm",
                Message.created_at > now - dt.timedelta(seconds=CONFIRM_RESEND_S),
            )
        )).scalar_one()
        if not recent:
            await outbox.enqueue(session, subscriber_id=subscriber.id, kind="confirm",
                                 template_name="confirm", now=now,
                                 domain=rt.settings.sender_domain)
    rt.wake_outbox()


async def confirm(rt: Runtime, token: str, ip: str | None, user_agent: str | None) -> str:
    """Double opt-in: 'confirmed', 'already' (idempotent) or 'unsubscribed'."""
    subscriber_id = rt.tokens.read_confirm(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None:
            raise InvalidToken("this confirmation link is not valid")
        if subscriber.status != "pending":
            return "already" if subscriber.status == "active" else "unsubscribed"
        first = (await session.execute(select(Layer).order_by(Layer.position).limit(1))).scalar_one()
        subscriber.status = "active"
        subscriber.confirmed_at = now
        subscriber.layer_id = first.id
        subscriber.layer_entered_at = now
        session.add(ConsentRecord(subscriber_id=subscriber.id, action="confirm", form="confirm",
                                  wording_sha256=None, ip=ip,
                                  user_agent=(user_agent or "")[:512] or None, created_at=now))
        await record_event(session, subscriber, "confirm", now, ip=ip, user_agent=user_agent)
        await enroll(session, subscriber, first.id, now)
    rt.wake_scheduler()
    return "confirmed"


async def unsubscribe(rt: Runtime, token: str, ip: str | None, user_agent: str | None) -> Subscriber:
    """Opt out at once; calling it again changes nothing."""
    subscriber_id = rt.tokens.read_unsubscribe(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None:
            raise InvalidToken("this link is not valid")
        if subscriber.status in ("active", "pending"):
            subscriber.status = "unsubscribed"
            subscriber.unsubscribed_at = now
            await end_enrollments(session, subscriber.id, "stopped", now)
            await record_event(session, subscriber, "unsubscribe", now, ip=ip,
                               user_agent=user_agent)
    return subscriber


async def subscriber_for_token(rt: Runtime, token: str) -> Subscriber:
    subscriber_id = rt.tokens.read_unsubscribe(token)
    async with rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise InvalidToken("this link is not valid")
    return subscriber
