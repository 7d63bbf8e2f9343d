"""Enrollments and layer moves: enrolling subscribers in sequences, ending enrollments, moving
subscribers between layers, sunsetting and reviving them, and the layer history row each of
these (and a first placement: a confirmation, an import) leaves for analytics.

The decisions are made by the pure functions in ``schedule`` and ``promotion``; this module
reads their inputs from the database and writes their outcomes back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence as Seq
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import revival_reason
from ..core.schedule import StepPlan, first_due
from ..models import Enrollment, Event, Layer, LayerHistory, Sequence, Step, Subscriber
from . import webhooks


async def layer_sequence(session: AsyncSession, layer_id: int) -> Sequence | None:
    return (
        await session.execute(
            select(Sequence)
            .where(Sequence.layer_id == layer_id, Sequence.trigger == "layer")
            .order_by(Sequence.id)
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


async def enroll_in(session: AsyncSession, subscriber: Subscriber, sequence: Sequence, now: dt.datetime) -> Enrollment:
    steps = await step_plans(session, sequence.id)
    due = first_due([StepPlan(s.position, s.delay_s) for s in steps], now)
    enrollment = Enrollment(
        subscriber_id=subscriber.id,
        sequence_id=sequence.id,
        state="active" if due else "completed",
        next_position=steps[0].position if steps else 1,
        due_at=due,
        started_at=now,
        ended_at=None if due else now,
    )
    session.add(enrollment)
    await session.flush()
    return enrollment


async def end_enrollments(
    session: AsyncSession, subscriber_id: int, state: str, now: dt.datetime, *, layer_only: bool = False
) -> None:
    """End the subscriber's active enrollments (only the layer's main one with ``layer_only``)."""
    condition = [Enrollment.subscriber_id == subscriber_id, Enrollment.state == "active"]
    if layer_only:
        condition.append(Enrollment.sequence_id.in_(select(Sequence.id).where(Sequence.trigger == "layer")))
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
    event_ids: Seq[int] = (),
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


async def record_entries(session: AsyncSession, entries: Seq[tuple[int, Layer]], reason: str, now: dt.datetime) -> None:
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
    session.add(
        Event(
            subscriber_id=subscriber.id,
            type="promoted",
            created_at=now,
            data={"to_layer": to_layer.position, "reason": reason},
        )
    )
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


async def sunset(session: AsyncSession, subscriber: Subscriber, reason: str, now: dt.datetime) -> None:
    """Stop mailing a long-silent subscriber; the record, layer and history stay."""
    subscriber.status = "sunset"
    await end_enrollments(session, subscriber.id, "stopped", now)
    session.add(Event(subscriber_id=subscriber.id, type="sunset", created_at=now, data={"reason": reason}))
    layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    if layer is not None:
        session.add(LayerHistory(**history_row(subscriber.id, "sunset", layer, layer, reason, now)))
    await session.flush()


async def revive(session: AsyncSession, subscriber: Subscriber, event_type: str, now: dt.datetime) -> None:
    """A sunset subscriber did something human: mailed again from their layer's first step.
    Call before ``last_human_at`` is set to now: the silence it ends is part of the reason."""
    layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    if layer is None:
        return
    silent_since = subscriber.last_human_at or subscriber.confirmed_at or subscriber.created_at
    reason = revival_reason(event_type, (now - silent_since).total_seconds())
    session.add(LayerHistory(**history_row(subscriber.id, "revive", layer, layer, reason, now)))
    subscriber.status = "active"
    subscriber.layer_entered_at = now
    await enroll(session, subscriber, layer.id, now)


async def sunset_many(session: AsyncSession, subscriber_ids: list[int], reason: str, now: dt.datetime) -> None:
    """``sunset`` for many subscribers in five statements (the daily sweep)."""
    placed = (
        await session.execute(
            select(Subscriber.id, Layer)
            .join(Layer, Layer.id == Subscriber.layer_id)
            .where(Subscriber.id.in_(subscriber_ids))
        )
    ).all()
    if placed:
        await session.execute(
            insert(LayerHistory), [history_row(i, "sunset", layer, layer, reason, now) for i, layer in placed]
        )
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id.in_(subscriber_ids))
        .values(status="sunset")
        .execution_options(synchronize_session="fetch")
    )
    await session.execute(
        update(Enrollment)
        .where(Enrollment.subscriber_id.in_(subscriber_ids), Enrollment.state == "active")
        .values(state="stopped", ended_at=now, due_at=None)
        .execution_options(synchronize_session=False)
    )
    session.add_all(
        [Event(subscriber_id=i, type="sunset", created_at=now, data={"reason": reason}) for i in subscriber_ids]
    )
    await session.flush()
