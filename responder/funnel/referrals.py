"""Referrals: every subscriber has a link ``/r/{token}`` that leads to the subscribe form; the
referrer is credited (a ``referral`` event, which can promote them and starts their thank-you
sequence) when the person they referred confirms.

The token travels from the link to the opt-in in a cookie (and a landing page posting JSON may
send it as ``ref``); it is signed, so nobody can credit an address they do not hold a link for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, URLSafeSerializer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from ..errors import InvalidToken
from ..models import Subscriber
from ..runtime import Runtime
from ..tracking.tokens import url_serializer
from .events import record_event

REF_COOKIE = "responder_ref"
REF_COOKIE_MAX_AGE_S = 30 * 86400


def _serializer(rt: Runtime) -> URLSafeSerializer:
    assert rt.settings.secret_key is not None
    # Signs with the last key, reads with any: earlier keys are a rotation's grace period.
    keys = [*reversed(rt.settings.previous_secret_keys), rt.settings.secret_key]
    return URLSafeSerializer(keys, salt="referral")


def referral_token(rt: Runtime, subscriber_id: int) -> str:
    # Every mail's context carries one: the same token, without a signer built per call.
    assert rt.settings.secret_key is not None
    return url_serializer(rt.settings.secret_key, "referral").dumps(subscriber_id)


def referral_url(rt: Runtime, subscriber_id: int) -> str:
    return rt.url(f"/r/{referral_token(rt, subscriber_id)}")


def read_referral(rt: Runtime, token: str) -> int:
    try:
        value = _serializer(rt).loads(token)
    except BadData as exc:
        raise InvalidToken("this referral link is not valid") from exc
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken("this referral link is not valid")
    return value


def referrer_id(rt: Runtime, token: object) -> int | None:
    """The referrer named by a ``ref`` value from a form, JSON body or cookie; None if absent
    or not genuine (a bad referral never blocks a subscription)."""
    if not isinstance(token, str) or not token or len(token) > 200:
        return None
    try:
        return read_referral(rt, token)
    except InvalidToken:
        return None


async def credit_referral(session: AsyncSession, subscriber: Subscriber, now: dt.datetime) -> None:
    """On confirmation: record a ``referral`` event for whoever referred this subscriber."""
    if subscriber.referred_by_id is None or subscriber.referred_by_id == subscriber.id:
        return
    referrer = await session.get(Subscriber, subscriber.referred_by_id)
    if referrer is None:
        return
    await record_event(
        session, referrer, "referral", now, data={"referred_id": subscriber.id, "referred_email": subscriber.email}
    )


@dataclass(frozen=True)
class Referrer:
    id: int
    email: str
    name: str
    confirmed: int  # people they brought who confirmed
    pending: int  # who signed up through their link and have not confirmed yet


async def referral_overview(session: AsyncSession, limit: int = 200) -> tuple[list[Referrer], list[Any]]:
    """Who referred whom: each referrer with the people they brought (confirmed and not yet),
    most first, and the newest referred subscribers with their referrer."""
    referred = aliased(Subscriber)
    counts = await session.execute(
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.name,
            func.count().filter(referred.status != "pending"),
            func.count().filter(referred.status == "pending"),
        )
        .join(referred, referred.referred_by_id == Subscriber.id)
        .where(referred.id != Subscriber.id)
        .group_by(Subscriber.id, Subscriber.email, Subscriber.name)
        .order_by(func.count().desc(), Subscriber.id)
        .limit(limit)
    )
    referrers = [Referrer(*row) for row in counts]
    pairs = list(
        (
            await session.execute(
                select(
                    referred.id, referred.email, referred.status, referred.created_at, Subscriber.id, Subscriber.email
                )
                .join(Subscriber, Subscriber.id == referred.referred_by_id)
                .where(referred.id != Subscriber.id)
                .order_by(referred.id.desc())
                .limit(limit)
            )
        ).all()
    )
    return referrers, pairs
