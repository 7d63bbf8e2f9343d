"""Enrollments and layer moves: enrolling subscribers in sequences, ending enrollments, moving
subscribers between layers, sunsetting and reviving them, and the layer history row each of
these (and a first placement: a confirmation, an import) leaves for analytics.

The decisions are made by the pure functions in ``schedule`` and ``promotion``; this module
reads their inputs from the database and writes their outcomes back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import ACTIVITY_TYPES, revival_reason
from ..core.schedule import StepPlan, first_due
from ..models import Enrollment, Event, Layer, LayerHistory, Step, Subscriber
from ..models import Sequence as DripSequence
from . import webhooks
from .facts import add_event, add_events, set_status


async def layer_sequence(session: AsyncSession, layer_id: int) -> DripSequence | None:
    return (
        await session.execute(
            select(DripSequence)
            .where(DripSequence.layer_id == layer_id, DripSequence.trigger == "layer")
            .order_by(DripSequence.id)
            .limit(1)
        )
    ).scalar_one_or_none()


async def step_plans(session: AsyncSession, sequence_id: int) -> list[Step]:
    return list(
        (await session.execute(select(Step).where(Step.sequence_id == sequence_id).order_by(Step.position))).scalars()
    )


async def enroll(session: AsyncSession, subscriber: Subscriber, layer_id: int, now: dt.datetime) -> Enrollment | None:
    """Start the layer's main sequence for this subscriber; its first step is due after its delay."""
    sequence = await layer_sequence(session, layer_id)
    if sequence is None:
        return None
    return await enroll_in(session, subscriber, sequence, now)


def enrollment_values(
    subscriber_id: int, sequence_id: int, steps: Sequence[StepPlan], now: dt.datetime
) -> dict[str, Any]:
    """The enrollment row starting ``steps`` at ``now``: its first step due after its delay (a
    sequence without steps is completed at once). Enrolling one subscriber and importing many
    both build it here."""
    due = first_due(steps, now)
    return {
        "subscriber_id": subscriber_id,
        "sequence_id": sequence_id,
        "state": "active" if due else "completed",
        "next_position": steps[0].position if steps else 1,
        "due_at": due,
        "started_at": now,
        "ended_at": None if due else now,
    }


async def enroll_in(
    session: AsyncSession, subscriber: Subscriber, sequence: DripSequence, now: dt.datetime
) -> Enrollment:
    steps = await step_plans(session, sequence.id)
    plans = [StepPlan(s.position, s.delay_s) for s in steps]
    enrollment = Enrollment(**enrollment_values(subscriber.id, sequence.id, plans, now))
    session.add(enrollment)
    await session.flush()
    return enrollment


async def end_enrollments(
    session: AsyncSession, subscriber_id: int, state: str, now: dt.datetime, *, layer_only: bool = False
) -> None:
    """End the subscriber's active enrollments (only the layer's main one with ``layer_only``)."""
    condition = [Enrollment.subscriber_id == subscriber_id, Enrollment.state == "active"]
    if layer_only:
        condition.append(Enrollment.sequence_id.in_(select(DripSequence.id).where(DripSequence.trigger == "layer")))
    await session.execute(
        update(Enrollment)
        .where(*condition)
        .values(state=state, ended_at=now, due_at=None)
        .execution_options(synchronize_session=False)
    )


async def top_position(session: AsyncSession) -> int:
    return int(
        (await session.execute(select(func.max(Layer.position)).where(Layer.removed_at.is_(None)))).scalar_one() or 0
    )


def history_row(
    subscriber_id: int,
    kind: str,
    from_layer: Layer | None,
    to_layer: Layer,
    reason: str,
    now: dt.datetime,
    event_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """A ``LayerHistory`` row's values: the layers by id, with their position and name now."""
    return {
        "subscriber_id": subscriber_id,
        "kind": kind,
        "from_layer_id": from_layer.id if from_layer else None,
        "from_position": from_layer.position if from_layer else None,
        "from_name": from_layer.name if from_layer else None,
        "to_layer_id": to_layer.id,
        "to_position": to_layer.position,
        "to_name": to_layer.name,
        "reason": reason[:255],
        "event_ids": list(event_ids),
        "created_at": now,
    }


async def record_entries(
    session: AsyncSession, entries: Sequence[tuple[int, Layer]], reason: str, now: dt.datetime
) -> None:
    """The history rows of subscribers placed in a layer without a move (subscriber id, layer):
    confirming puts one in the first layer, an import many in theirs."""
    if entries:
        await session.execute(
            insert(LayerHistory), [history_row(i, "enter", None, layer, reason, now) for i, layer in entries]
        )


async def move_layer(
    session: AsyncSession,
    subscriber: Subscriber,
    to_layer: Layer,
    *,
    reason: str,
    event_ids: tuple[int, ...] | list[int],
    now: dt.datetime,
) -> LayerHistory:
    """Hand the subscriber off to ``to_layer``: history row, old sequence ended, new one started.

    Triggered sequences (back-end, follow-up, thank-you) keep running across the move.
    """
    from_layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    # Someone not active (unsubscribed, sunset) only follows a removed layer's subscribers.
    kind = "move" if subscriber.status == "active" else "relocate"
    history = LayerHistory(**history_row(subscriber.id, kind, from_layer, to_layer, reason, now, event_ids))
    session.add(history)
    await end_enrollments(session, subscriber.id, "handed_off", now, layer_only=True)
    subscriber.layer_id = to_layer.id
    subscriber.layer_entered_at = now
    await add_event(session, subscriber.id, "promoted", now, data={"to_layer": to_layer.position, "reason": reason})
    if subscriber.status == "active":
        await enroll(session, subscriber, to_layer.id, now)
    await webhooks.emit(
        session,
        "layer_changed",
        {
            "subscriber": {"id": subscriber.id, "email": subscriber.email},
            "from_layer": from_layer.position if from_layer else None,
            "to_layer": to_layer.position,
            "reason": reason,
            "event_ids": list(event_ids),
        },
        now,
    )
    await session.flush()
    return history


async def sunset(session: AsyncSession, reasons: Mapping[int, str], now: dt.datetime) -> list[int]:
    """Stop mailing long-silent subscribers (subscriber id → the reason) in a few statements:
    their status, their running sequences stopped, a ``sunset`` event and a history row each.
    The record and layer stay. The ids sunset (those still active)."""
    changed = await set_status(session, reasons, "sunset", now)
    if changed:
        await session.execute(
            update(Enrollment)
            .where(Enrollment.subscriber_id.in_(changed), Enrollment.state == "active")
            .values(state="stopped", ended_at=now, due_at=None)
            .execution_options(synchronize_session=False)
        )
        await add_events(
            session,
            [
                {"subscriber_id": i, "type": "sunset", "created_at": now, "data": {"reason": reasons[i]}}
                for i in changed
            ],
        )
        placed = (
            await session.execute(
                select(Subscriber.id, Layer)
                .join(Layer, Layer.id == Subscriber.layer_id)
                .where(Subscriber.id.in_(changed))
            )
        ).all()
        if placed:
            await session.execute(
                insert(LayerHistory),
                [history_row(i, "sunset", layer, layer, reasons[i], now) for i, layer in placed],
            )
    return changed


async def resume(session: AsyncSession, subscriber: Subscriber, event_type: str, now: dt.datetime) -> None:
    """Mail a subscriber back from sunset (already ``active`` again): a history row saying how
    long the silence was, and their layer's sequence goes on from the step it had reached (the
    outbox never holds a step twice), or starts if they had none running."""
    if subscriber.layer_id is None:
        return
    layer = await session.get(Layer, subscriber.layer_id)
    assert layer is not None
    # The silence this event ends: since the last human event before the sunset (the event
    # itself has already set ``last_human_at``), or since confirming.
    sunset_at = (
        await session.execute(
            select(func.max(Event.created_at)).where(Event.subscriber_id == subscriber.id, Event.type == "sunset")
        )
    ).scalar_one()
    before = (
        await session.execute(
            select(func.max(Event.created_at)).where(
                Event.subscriber_id == subscriber.id,
                Event.type.in_(ACTIVITY_TYPES),
                Event.machine.is_(False),
                Event.created_at < (sunset_at or now),
            )
        )
    ).scalar_one()
    silent_since = before or subscriber.confirmed_at or subscriber.created_at
    reason = revival_reason(event_type, (now - silent_since).total_seconds())
    session.add(LayerHistory(**history_row(subscriber.id, "revive", layer, layer, reason, now)))
    sequence = await layer_sequence(session, subscriber.layer_id)
    if sequence is None:
        await session.flush()
        return
    stopped = (
        await session.execute(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber.id, Enrollment.sequence_id == sequence.id)
            .order_by(Enrollment.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if stopped is None:
        await enroll_in(session, subscriber, sequence, now)
    elif stopped.state == "stopped":
        stopped.state, stopped.due_at, stopped.ended_at = "active", now, None
    await session.flush()


async def look_again(session: AsyncSession, subscriber_id: int, now: dt.datetime) -> int:
    """Steps of theirs that wait (held by the caps, a pause or a hold, ``waiting_since`` set)
    are due again now, so the next run plans them anew: after a hold ends early they go at the
    first moment that fits instead of when the hold would have ended. They keep their turn."""
    result = await session.execute(
        update(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.state == "active",
            Enrollment.waiting_since.is_not(None),
            Enrollment.due_at > now,
        )
        .values(due_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
