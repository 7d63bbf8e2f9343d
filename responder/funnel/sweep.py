"""The sweep: silence is not an event, so inactivity (demotion, sunset) and promotions held
back by a layer's minimum stay are judged on a schedule (at start, then every
``RESPONDER_SWEEP_EVERY_S``, an hour by default) and on demand (``responder funnel sweep``,
``POST /api/v1/funnel/sweep``), for the subscribers they may concern.

The sweep only picks candidates; the decision is the one judge's (``judge``), as for events.
Candidates, per layer: active subscribers silent for longer than the layer's demotion or
sunset duration, and, for layers with a minimum stay, those with a human event since entering
whose stay ended since the previous sweep (every such stay on a process's first sweep).

Before the sunset, a layer whose rule has ``sunset.ask_before`` asks: each subscriber that close
to it gets one "do you still want to hear from us?" mail (kind ``ask``, template ``sunset-ask``)
per silence (``core.promotion.should_ask``); its "yes, keep me" button (``/keep/{token}``) is a
human event, so it keeps them; silence lets the sunset happen.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, case, func, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import should_ask
from ..core.schedule import parse_duration
from ..delivery.outbox import enqueue
from ..models import Layer, Subscriber, UTCDateTime
from .judge import Judged, judge

CHUNK = 500
ASK_TEMPLATE = "sunset-ask"
# When a subscriber joined the list, as the judge counts it: confirming, or being imported
# (``created_at``, later than a consent given elsewhere).
JOINED = case((Subscriber.confirmed_at > Subscriber.created_at, Subscriber.confirmed_at), else_=Subscriber.created_at)


def _seconds(rule: dict[str, Any], *path: str) -> int | None:
    value: Any = rule
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return parse_duration(value) if isinstance(value, str) else None


async def sweep(
    session: AsyncSession, now: dt.datetime, *, since: dt.datetime | None = None, domain: str = "localhost"
) -> list[Judged]:
    """Judge every candidate at ``now`` (minimum stays ended after ``since``, or all when
    None), and ask those near a sunset whether to keep mailing them (the ask's Message-ID is on
    ``domain``); the moves and sunsets made."""
    made: list[Judged] = []
    layers = (await session.execute(select(Layer).where(Layer.removed_at.is_(None)))).scalars()
    for layer in list(layers):
        rule = layer.rule or {}
        await _ask(session, layer, now, domain)
        wanted = []
        demote_s = _seconds(rule, "demote", "inactive_for") if layer.position > 1 else None
        if demote_s:
            since_entry = func.coalesce(Subscriber.last_human_at, Subscriber.layer_entered_at)
            wanted.append(since_entry <= now - dt.timedelta(seconds=demote_s))
        sunset_s = _seconds(rule, "sunset", "inactive_for")
        if sunset_s:
            since_any = func.coalesce(Subscriber.last_human_at, JOINED)
            wanted.append(since_any <= now - dt.timedelta(seconds=sunset_s))
        stay_s = _seconds(rule, "min_stay")
        if stay_s:
            ended = now - dt.timedelta(seconds=stay_s)
            stays = [Subscriber.last_human_at > Subscriber.layer_entered_at, Subscriber.layer_entered_at <= ended]
            if since is not None:
                stays.append(Subscriber.layer_entered_at > since - dt.timedelta(seconds=stay_s))
            wanted.append(and_(*stays))
        if not wanted:
            continue
        last_id = 0
        while True:
            ids = list(
                (
                    await session.execute(
                        select(Subscriber.id)
                        .where(
                            Subscriber.layer_id == layer.id,
                            Subscriber.status == "active",
                            Subscriber.id > last_id,
                            or_(*wanted),
                        )
                        .order_by(Subscriber.id)
                        .limit(CHUNK)
                    )
                ).scalars()
            )
            made += await judge(session, ids, now)
            if len(ids) < CHUNK:
                break
            last_id = ids[-1]
    return made


async def _ask(session: AsyncSession, layer: Layer, now: dt.datetime, domain: str) -> int:
    """Queue the re-permission mail for this layer's subscribers whose sunset is within
    ``sunset.ask_before`` and who were not asked in this silence; how many were asked."""
    rule = layer.rule or {}
    sunset_s, ask_s = _seconds(rule, "sunset", "inactive_for"), _seconds(rule, "sunset", "ask_before")
    if not sunset_s or not ask_s:
        return 0
    silent_since = type_coerce(func.coalesce(Subscriber.last_human_at, JOINED), UTCDateTime)
    rows = (
        await session.execute(
            select(Subscriber.id, silent_since.label("silent_since"), Subscriber.asked_at).where(
                Subscriber.layer_id == layer.id,
                Subscriber.status == "active",
                silent_since <= now - dt.timedelta(seconds=sunset_s - ask_s),
                silent_since > now - dt.timedelta(seconds=sunset_s),
                or_(Subscriber.asked_at.is_(None), Subscriber.asked_at < silent_since),
            )
        )
    ).all()
    asked = [row.id for row in rows if should_ask(rule, row.silent_since, row.asked_at, now)]
    for subscriber_id in asked:
        await enqueue(
            session, subscriber_id=subscriber_id, kind="ask", template_name=ASK_TEMPLATE, now=now, domain=domain
        )
    if asked:
        await session.execute(update(Subscriber).where(Subscriber.id.in_(asked)).values(asked_at=now))
    return len(asked)
