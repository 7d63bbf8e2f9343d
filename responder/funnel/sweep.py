"""The daily sweep: silence is not an event, so inactivity (demotion, sunset) and promotions
held back by a layer's minimum stay are judged once a day for the subscribers they may concern.

Only candidates are read: per layer, active subscribers silent for longer than the layer's
demotion or sunset threshold, plus, for layers with a minimum stay, those with a human event
since entering whose stay ended since the previous sweep.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import silence_reason
from ..core.schedule import parse_duration
from ..models import Layer, Subscriber
from .enrollments import sunset_many, top_position
from .events import judge

SWEEP_EVERY = dt.timedelta(days=1)
CHUNK = 500


def _seconds(rule: dict[str, Any], *path: str) -> int | None:
    value: Any = rule
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return parse_duration(value) if isinstance(value, str) else None


async def sweep(session: AsyncSession, now: dt.datetime) -> int:
    """Judge every candidate at ``now``; the number of subscribers moved or sunset."""

    moved = 0
    top = await top_position(session)
    layers = (await session.execute(select(Layer).where(Layer.removed_at.is_(None)))).scalars()
    for layer in list(layers):
        rule = layer.rule or {}
        demote_s = _seconds(rule, "demote", "inactive_for") if layer.position > 1 else None
        sunset_s = _seconds(rule, "sunset", "inactive_for")
        stay_s = _seconds(rule, "min_stay")
        wanted = []
        if demote_s:
            since_entry = func.coalesce(Subscriber.last_human_at, Subscriber.layer_entered_at)
            wanted.append(since_entry <= now - dt.timedelta(seconds=demote_s))
        if sunset_s:
            moved += await _sunset_silent(session, layer, sunset_s, stay_s, now)
        if stay_s:
            # Only stays that ended since the last sweep: later events are judged as they come.
            ended = now - dt.timedelta(seconds=stay_s)
            wanted.append(
                and_(
                    Subscriber.last_human_at > Subscriber.layer_entered_at,
                    Subscriber.layer_entered_at <= ended,
                    Subscriber.layer_entered_at > ended - SWEEP_EVERY,
                )
            )
        if not wanted:
            continue
        last_id = 0
        while True:
            batch = list(
                (
                    await session.execute(
                        select(Subscriber)
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
            for subscriber in batch:
                decision, _history = await judge(session, subscriber, now, top=top)
                moved += decision.moves
            if len(batch) < CHUNK:
                break
            last_id = batch[-1].id
    return moved


async def _sunset_silent(
    session: AsyncSession, layer: Layer, sunset_s: int, stay_s: int | None, now: dt.datetime
) -> int:
    """Sunset the layer's long-silent subscribers in bulk (the rule's first test after the
    minimum stay, so no per-subscriber judging is needed); how many."""
    since_any = func.coalesce(Subscriber.last_human_at, Subscriber.confirmed_at, Subscriber.created_at)
    conditions = [
        Subscriber.layer_id == layer.id,
        Subscriber.status == "active",
        since_any <= now - dt.timedelta(seconds=sunset_s),
    ]
    if stay_s:
        conditions.append(Subscriber.layer_entered_at <= now - dt.timedelta(seconds=stay_s))
    total = 0
    while True:
        ids = list(
            (
                await session.execute(select(Subscriber.id).where(*conditions).order_by(Subscriber.id).limit(CHUNK))
            ).scalars()
        )
        if ids:
            await sunset_many(session, ids, silence_reason("sunset", sunset_s, sunset_s), now)
        total += len(ids)
        if len(ids) < CHUNK:
            return total
