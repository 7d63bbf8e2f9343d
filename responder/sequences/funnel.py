"""The funnel's shell: enrolling subscribers, moving them between layers, running due steps.

The decisions are made by the pure functions in ``schedule`` and ``promotion``; this module
reads their inputs from the database and writes their outcomes back.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..delivery import outbox
from ..loop import PollingLoop
from ..models import Enrollment, Event, Layer, LayerHistory, Sequence, Step, Subscriber
from ..runtime import Runtime
from .schedule import StepPlan, advance, first_due


async def layer_sequence(session: AsyncSession, layer_id: int) -> Sequence | None:
    return (
        await session.execute(
            select(Sequence).where(Sequence.layer_id == layer_id, Sequence.trigger == "layer")
            .order_by(Sequence.id).limit(1)
        )
    ).scalar_one_or_none()


async def step_plans(session: AsyncSession, sequence_id: int) -> list[Step]:
    return list(
        (await session.execute(
            select(Step).where(Step.sequence_id == sequence_id).order_by(Step.position)
        )).scalars()
    )


async def enroll(session: AsyncSession, subscriber: Subscriber, layer_id: int, now: dt.datetime) -> Enrollment | None:
    """Start the layer's main sequence for this subscriber; its first step is due after its delay."""
    sequence = await layer_sequence(session, layer_id)
    if sequence is None:
        return None
    steps = await step_plans(session, sequence.id)
    due = first_due([StepPlan(s.position, s.delay_s) for s in steps], now)
    enrollment = Enrollment(
        subscriber_id=subscriber.id, sequence_id=sequence.id,
        state="active" if due else "completed", next_position=steps[0].position if steps else 1,
        due_at=due, started_at=now, ended_at=None if due else now,
    )
    session.add(enrollment)
    await session.flush()
    return enrollment


async def end_enrollments(session: AsyncSession, subscriber_id: int, state: str, now: dt.datetime) -> None:
    await session.execute(
        update(Enrollment)
        .where(Enrollment.subscriber_id == subscriber_id, Enrollment.state == "active")
        .values(state=state, ended_at=now, due_at=None)
    )


async def top_position(session: AsyncSession) -> int:
    return int((await session.execute(select(func.max(Layer.position)))).scalar_one() or 0)


async def move_layer(
    session: AsyncSession,
    subscriber: Subscriber,
    to_layer: Layer,
    *,
    reason: str,
    event_ids: tuple[int, ...] | list[int],
    now: dt.datetime,
) -> LayerHistory:
    """Hand the subscriber off to ``to_layer``: history row, old sequence ended, new one started."""
    history = LayerHistory(
        subscriber_id=subscriber.id, from_layer_id=subscriber.layer_id, to_layer_id=to_layer.id,
        reason=reason, event_ids=list(event_ids), created_at=now,
    )
    session.add(history)
    await end_enrollments(session, subscriber.id, "handed_off", now)
    subscriber.layer_id = to_layer.id
    subscriber.layer_entered_at = now
    session.add(Event(subscriber_id=subscriber.id, type="promoted", created_at=now,
                      data={"to_layer": to_layer.position, "reason": reason}))
    await enroll(session, subscriber, to_layer.id, now)
    await session.flush()
    return history


class Scheduler(PollingLoop):
    """Moves due sequence steps into the outbox."""

    name = "scheduler"

    def __init__(self, rt: Runtime, *, batch_size: int = 200) -> None:
        super().__init__(rt.scheduler_wake, rt.settings.scheduler_poll_s)
        self.rt = rt
        self.batch_size = batch_size

    async def run_once(self) -> int:
        rt = self.rt
        now = rt.clock.now()
        queued = 0
        async with rt.db.transaction() as session:
            enrollments = list((await session.execute(
                select(Enrollment)
                .where(Enrollment.state == "active", Enrollment.due_at <= now)
                .order_by(Enrollment.due_at).limit(self.batch_size)
                .with_for_update(skip_locked=True)
            )).scalars())
            for enrollment in enrollments:
                queued += await self._run_enrollment(session, enrollment, now)
        if queued:
            rt.wake_outbox()
        return len(enrollments)

    async def _run_enrollment(self, session: AsyncSession, enrollment: Enrollment, now: dt.datetime) -> int:
        subscriber = await session.get(Subscriber, enrollment.subscriber_id)
        assert subscriber is not None
        if subscriber.status != "active":
            enrollment.state, enrollment.ended_at, enrollment.due_at = "stopped", now, None
            return 0
        steps = await step_plans(session, enrollment.sequence_id)
        plan = advance([StepPlan(s.position, s.delay_s) for s in steps], enrollment.next_position, now)
        if plan is None:
            enrollment.state, enrollment.ended_at, enrollment.due_at = "completed", now, None
            return 0
        step = next(s for s in steps if s.position == plan.send_position)
        created = await outbox.enqueue(
            session, subscriber_id=subscriber.id, kind="step", template_name=step.template_name,
            step_id=step.id, now=now, domain=self.rt.settings.sender_domain,
        )
        enrollment.next_position = plan.next_position
        enrollment.due_at = plan.next_due_at
        if plan.next_due_at is None:
            enrollment.state, enrollment.ended_at = "completed", now
        return 1 if created else 0
