"""Opt-in, confirmation and opt-out: the permission part of the loop."""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.status import may_become
from ..delivery import outbox
from ..errors import InvalidToken, ValidationError
from ..funnel.enrollments import enroll, record_entries
from ..funnel.events import STATUS_AFTER, record_event
from ..funnel.facts import set_status
from ..funnel.referrals import credit_referral, referrer_id
from ..models import ConsentRecord, Layer, Message, Subscriber
from ..runtime import Runtime
from ..validation import clean_email, clean_form_id, clean_name, clean_text
from . import limits
from .limits import mailbox_key
from .suppression import is_suppressed

DAY = dt.timedelta(days=1)
MAX_ATTRIBUTE_LEN = 200


@dataclass(frozen=True)
class SubscribeRequest:
    email: str
    name: str = ""
    form: str = "default"
    consent_text: str = ""
    ip: str | None = None
    user_agent: str | None = None
    consent_version: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    ref: str | None = None  # a referral token (see ``referrals``)
    page_url: str | None = None  # where the form was: the post's Referer, query and fragment cut

    @classmethod
    def from_input(
        cls,
        data: dict[str, object],
        ip: str | None,
        user_agent: str | None,
        *,
        referer: str | None = None,
        allowed_attributes: tuple[str, ...] = (),
        default_consent: str = "",
        default_version: str | None = None,
    ) -> SubscribeRequest:
        """Validate a subscribe body. The consent on record is the form's, as configured on the
        server: a page that sends another version (or other wording) showed the person something
        else, and is refused rather than recorded as agreed."""
        given_text = clean_text(data.get("consent"), "consent", max_len=2000)
        given_version = clean_text(data.get("consent_version"), "consent_version", max_len=64)
        if given_version and default_version is not None and given_version != default_version:
            raise ValidationError(
                f"this form's consent is version {default_version}, not {given_version}: reload the page",
                field="consent_version",
            )
        if given_text and default_consent and " ".join(given_text.split()) != " ".join(default_consent.split()):
            raise ValidationError("this is not the consent wording of this form: reload the page", field="consent")
        return cls(
            email=clean_email(data.get("email")),
            name=clean_name(data.get("name")),
            form=clean_form_id(data.get("form")),
            consent_text=default_consent or given_text,
            ip=ip,
            user_agent=(user_agent or "")[:512] or None,
            consent_version=default_version or given_version or None,
            attributes=clean_attributes(data, allowed_attributes),
            ref=data.get("ref") if isinstance(data.get("ref"), str) else None,  # type: ignore[arg-type]
            page_url=page_url(referer),
        )


def page_url(referer: str | None) -> str | None:
    """The page a form was posted from, for the consent record: an http(s) Referer without its
    query and fragment (they can carry someone's address or a token); None when there is none
    or it is not a plain web address."""
    if not referer or len(referer) > 2000 or not referer.isprintable() or " " in referer:
        return None
    try:
        parts = urllib.parse.urlsplit(referer)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{host}{parts.path or '/'}"[:500]


def clean_attributes(data: dict[str, object], allowed: tuple[str, ...]) -> dict[str, str]:
    """Custom fields: ``attr_<name>`` form fields or an ``attributes`` JSON object; only the
    form's allow-listed names, short single-line text."""
    given: dict[str, Any] = {}
    nested = data.get("attributes")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValidationError("attributes must be an object", field="attributes")
        given.update(nested)
    given.update({key[5:]: value for key, value in data.items() if key.startswith("attr_")})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValidationError(f"this form does not accept the attribute {unknown[0]!r}", field="attributes")
    return {name: clean_text(value, name, max_len=MAX_ATTRIBUTE_LEN) for name, value in given.items()}


async def subscribe(rt: Runtime, req: SubscribeRequest) -> None:
    """Record the opt-in and send a confirmation; the outcome is never revealed to the caller."""
    now = rt.clock.now()
    assert rt.settings.secret_key is not None
    async with rt.db.transaction() as session:
        await limits.per_ip(session, req.ip, now, limit=rt.settings.subscribe_per_ip_per_hour)
        if await is_suppressed(session, rt.settings.secret_key, req.email):
            return  # erased on request: never stored or mailed again
        subscriber = (
            await session.execute(select(Subscriber).where(Subscriber.email == req.email))
        ).scalar_one_or_none()
        if subscriber is None:
            subscriber = Subscriber(
                email=req.email,
                name=req.name,
                status="pending",
                attributes={},
                tags=[],
                created_at=now,
                referred_by_id=referrer_id(rt, req.ref),
            )
            session.add(subscriber)
            await session.flush()
        elif subscriber.status in ("active", "bounced", "complained"):
            return
        elif subscriber.status in ("unsubscribed", "sunset"):
            await set_status(session, [subscriber.id], "pending", now)
        if req.name:
            subscriber.name = req.name
        if req.attributes:
            subscriber.attributes = {**(subscriber.attributes or {}), **req.attributes}
        session.add(
            ConsentRecord(
                subscriber_id=subscriber.id,
                action="subscribe",
                form=req.form,
                wording_sha256=hashlib.sha256(req.consent_text.encode()).hexdigest() if req.consent_text else None,
                consent_version=req.consent_version,
                ip=req.ip,
                user_agent=req.user_agent,
                page_url=req.page_url,
                created_at=now,
            )
        )
        await send_confirmation(rt, session, subscriber.id, now)
    rt.wake_outbox()


async def send_confirmation(rt: Runtime, session: AsyncSession, subscriber_id: int, now: dt.datetime) -> bool:
    """Queue a confirmation mail unless the address had one within ``confirm_resend_s`` or
    ``confirm_per_day`` of them in the last day, or its mailbox (``limits.mailbox_key``: every
    ``+tag`` of it, every dotted spelling at Gmail) had ``confirm_per_day`` of them today: a
    subscription bomb gets little mail, however the address is spelt."""
    settings = rt.settings
    times = list(
        (
            await session.execute(
                select(Message.created_at).where(
                    Message.subscriber_id == subscriber_id, Message.kind == "confirm", Message.created_at > now - DAY
                )
            )
        ).scalars()
    )
    if len(times) >= settings.confirm_per_day or any(
        t > now - dt.timedelta(seconds=settings.confirm_resend_s) for t in times
    ):
        return False
    email = (await session.execute(select(Subscriber.email).where(Subscriber.id == subscriber_id))).scalar_one()
    bucket = f"confirm:{mailbox_key(email)}"
    if await limits.hit(session, bucket, now, limit=settings.confirm_per_day, window_s=86400):
        return False
    await outbox.enqueue(
        session,
        subscriber_id=subscriber_id,
        kind="confirm",
        template_name="confirm",
        now=now,
        domain=settings.sender_domain,
    )
    return True


async def renew_confirmation(rt: Runtime, token: str) -> None:
    """A fresh confirmation link for an expired one; throttled like any other."""
    subscriber_id = rt.tokens.read_confirm_expired(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None or subscriber.status != "pending":
            return
        await send_confirmation(rt, session, subscriber.id, now)
    rt.wake_outbox()


def confirmation_state(status: str) -> str:
    """What a confirmation link meets: 'pending' (can confirm), 'already' or 'unsubscribed'."""
    return {"pending": "pending", "active": "already"}.get(status, "unsubscribed")


async def confirmation_page_state(rt: Runtime, token: str) -> str:
    """The state the confirmation page shows, read only: a GET, a HEAD or a mail scanner
    following the link never confirms (``TokenRejected`` for a forged or expired token)."""
    subscriber_id = rt.tokens.read_confirm(token)
    async with rt.db.read() as session:
        subscriber = await get_subscriber(session, subscriber_id, "this confirmation link is not valid")
        return confirmation_state(subscriber.status)


async def confirm(rt: Runtime, token: str, ip: str | None, user_agent: str | None) -> str:
    """Double opt-in, from the button on the confirmation page: 'confirmed', 'already'
    (idempotent) or 'unsubscribed'. The consent record holds this request's address and agent."""
    subscriber_id = rt.tokens.read_confirm(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        # Locked: two presses at once (PostgreSQL) confirm, enroll and welcome once.
        subscriber = await get_subscriber(
            session, subscriber_id, "this confirmation link is not valid", for_update=True
        )
        state = confirmation_state(subscriber.status)
        if state != "pending":
            return state
        first = (
            await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position).limit(1))
        ).scalar_one()
        subscriber.layer_id = first.id
        subscriber.layer_entered_at = now
        session.add(
            ConsentRecord(
                subscriber_id=subscriber.id,
                action="confirm",
                form="confirm",
                wording_sha256=None,
                ip=ip,
                user_agent=(user_agent or "")[:512] or None,
                created_at=now,
            )
        )
        await record_entries(session, [(subscriber.id, first)], "confirmed the subscription", now)
        await record_event(session, subscriber, "confirm", now, ip=ip, user_agent=user_agent)  # → active
        await enroll(session, subscriber, first.id, now)
        await credit_referral(session, subscriber, now)
    rt.wake_scheduler()
    return "confirmed"


async def unsubscribe(rt: Runtime, token: str, ip: str | None, user_agent: str | None) -> Subscriber:
    """Opt out at once; calling it again changes nothing."""
    subscriber_id = rt.tokens.read_unsubscribe(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        await opt_out(session, subscriber, now, ip=ip, user_agent=user_agent)
    return subscriber


async def get_subscriber(
    session: AsyncSession, subscriber_id: int, message: str = "this link is not valid", *, for_update: bool = False
) -> Subscriber:
    """The subscriber a verified token names (its row locked ``for_update``); ``InvalidToken``
    if it is gone."""
    subscriber = await session.get(Subscriber, subscriber_id, with_for_update=for_update)
    if subscriber is None:
        raise InvalidToken(message)
    return subscriber


async def opt_out(
    session: AsyncSession,
    subscriber: Subscriber,
    now: dt.datetime,
    *,
    event: str = "unsubscribe",
    ip: str | None = None,
    user_agent: str | None = None,
    data: dict[str, Any] | None = None,
    message_id: int | None = None,
) -> bool:
    """Stop all mail to a subscriber (an unsubscribe, or a complaint); False, changing
    nothing, if they were already out. The event names the mail it came from when the caller
    knows it, else the newest drip or newsletter mail delivered to them (what they were reading
    when they left, as far as can be told): newsletter reports and step figures count it."""
    if not may_become(subscriber.status, STATUS_AFTER[event]):
        return False
    if message_id is None:
        message_id = (
            await session.execute(
                select(Message.id)
                .where(
                    Message.subscriber_id == subscriber.id,
                    Message.state == "sent",
                    Message.kind.in_(("step", "newsletter")),
                    Message.sent_at <= now,
                )
                .order_by(Message.sent_at.desc(), Message.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    recorded = await record_event(
        session, subscriber, event, now, message_id=message_id, ip=ip, user_agent=user_agent, data=data
    )
    return recorded.status_changed


async def subscriber_for_token(rt: Runtime, token: str) -> Subscriber:
    subscriber_id = rt.tokens.read_unsubscribe(token)
    async with rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise InvalidToken("this link is not valid")
    return subscriber


async def keep(rt: Runtime, token: str, ip: str | None, user_agent: str | None) -> str:
    """The "yes, keep me" button of the re-permission mail: a human ``keep`` event, which is
    activity (their silence starts again; a sunset subscriber is active again, their sequence
    going on where it stopped). ``kept``, ``revived``, or ``gone`` for someone who left."""
    subscriber_id = rt.tokens.read_keep(token)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id, for_update=True)
        if subscriber.status not in ("active", "sunset"):
            return "gone"
        was = subscriber.status
        await record_event(session, subscriber, "keep", now, ip=ip, user_agent=user_agent)
    rt.wake_scheduler()
    return "revived" if was == "sunset" else "kept"


def consent_json(record: ConsentRecord) -> dict[str, Any]:
    """One consent record as the admin sees it: what was agreed (the form, the wording's
    SHA-256 and version), when, and from which address and browser."""
    return {
        "action": record.action,
        "form": record.form,
        "wording_sha256": record.wording_sha256,
        "consent_version": record.consent_version,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "page_url": record.page_url,
        "at": record.created_at.isoformat(),
    }


async def consent_records(session: AsyncSession, subscriber_id: int) -> list[ConsentRecord]:
    return list(
        (
            await session.execute(
                select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber_id).order_by(ConsentRecord.id)
            )
        ).scalars()
    )
