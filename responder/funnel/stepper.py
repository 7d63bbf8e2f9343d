"""Running due enrollments: one batch of due rows read with a handful of queries, each one
checked against its step's condition, then planned with everything else counted for its
subscriber (``ledger``: the caps, collisions and send windows) and either queued, skipped, or
held until the moment it fits (never dropped).

No step is sent twice: the outbox keeps a (subscriber, step) pair once, so an enrollment that
reaches a step its subscriber already got (after a demotion and a promotion, or an edit) just
moves on. A step with an A/B test (``abtests``) is queued as the subscriber's variant of it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.pacing import Sent, condition_holds
from ..core.schedule import Advance, StepPlan, advance
from ..delivery.outbox import enqueue_many, outbox_row
from ..models import Enrollment, Event, Subscriber
from .abtests import step_splits
from .ledger import PACED, Ledger, move_held_rows, read_ledger


@dataclass(frozen=True)
class Done:
    processed: int
    queued: int


@dataclass
class Due:
    """One due enrollment and what becomes of it (written back in one executemany)."""

    id: int
    subscriber_id: int
    sequence_id: int
    next_position: int
    due_at: dt.datetime | None
    waiting_since: dt.datetime | None
    state: str = "active"
    ended_at: dt.datetime | None = None

    @property
    def turn(self) -> dt.datetime:
        """When its step first fell due: its place among the mail waiting for the subscriber."""
        assert self.due_at is not None
        return self.waiting_since or self.due_at

    def end(self, state: str, now: dt.datetime) -> None:
        self.state, self.ended_at, self.due_at, self.waiting_since = state, now, None, None

    def move_on(self, plan: Advance, now: dt.datetime) -> None:
        """Its step was sent (or skipped): wait for the next one."""
        self.next_position, self.due_at, self.waiting_since = plan.next_position, plan.next_due_at, None
        if plan.next_due_at is None:
            self.end("completed", now)

    def hold(self, until: dt.datetime) -> None:
        """Its step waits until ``until`` (keeping its turn)."""
        self.waiting_since, self.due_at = self.turn, until


async def run_due_steps(session: AsyncSession, now: dt.datetime, *, limit: int, domain: str) -> Done:
    enrollments = [
        Due(*row)
        for row in (
            await session.execute(
                select(
                    Enrollment.id,
                    Enrollment.subscriber_id,
                    Enrollment.sequence_id,
                    Enrollment.next_position,
                    Enrollment.due_at,
                    Enrollment.waiting_since,
                )
                .where(Enrollment.state == "active", Enrollment.due_at <= now)
                .order_by(Enrollment.due_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
    ]
    if not enrollments:
        return Done(0, 0)
    subscriber_ids = {e.subscriber_id for e in enrollments}
    subscribers = {
        row.id: row for row in (await session.execute(select(*PACED).where(Subscriber.id.in_(subscriber_ids)))).all()
    }
    ledger = await read_ledger(session, subscribers, now)
    purchased: set[int] = set()
    if any((s.condition or {}).get("skip_if_purchased") for group in ledger.steps.values() for s in group):
        purchased = set(
            (
                await session.execute(
                    select(Event.subscriber_id)
                    .where(Event.subscriber_id.in_(subscriber_ids), Event.type == "purchase")
                    .distinct()
                )
            ).scalars()
        )
    # What each due enrollment does: end, skip its step, or send it now or later (planned).
    sending: dict[int, list[tuple[Due, Advance, str, int]]] = defaultdict(list)
    for enrollment in enrollments:
        subscriber = subscribers[enrollment.subscriber_id]
        book = ledger.books[subscriber.id]
        if subscriber.status != "active":
            enrollment.end("stopped", now)
            book.waiting.pop(("enrollment", enrollment.id), None)
            continue
        sequence_steps = ledger.steps[enrollment.sequence_id]
        plan = advance([StepPlan(s.position, s.delay_s) for s in sequence_steps], enrollment.next_position, now)
        if plan is None:
            enrollment.end("completed", now)
            book.waiting.pop(("enrollment", enrollment.id), None)
            continue
        step = next(s for s in sequence_steps if s.position == plan.send_position)
        if condition_holds(step.condition, purchased=subscriber.id in purchased, tags=subscriber.tags or []):
            sending[subscriber.id].append((enrollment, plan, step.template_name, step.id))
        else:
            _move_on(ledger, enrollment, plan, now)
    splits = await step_splits(session, {step_id: name for due in sending.values() for _, _, name, step_id in due}, now)
    rows: list[dict[str, object]] = []
    moves: list[tuple[int, dt.datetime]] = []
    for subscriber_id, book in ledger.books.items():
        due = sending.get(subscriber_id, [])
        times = book.plan(now)
        held = []
        for enrollment, plan, template_name, step_id in due:
            if times[("enrollment", enrollment.id)] <= now:
                split = splits.get(step_id)
                name, variant = split.row(subscriber_id) if split else (template_name, {})
                rows.append(outbox_row(subscriber_id, "step", name, now, domain, step_id=step_id, **variant))
                book.sent.append(Sent(now, "step"))
                _move_on(ledger, enrollment, plan, now)
            else:
                held.append(enrollment)
        # Again, with the steps just queued fixed and their enrollments' next steps expected:
        # when the held steps and the subscriber's held outbox rows go.
        if len(held) < len(due) and (held or book.rows_at):
            times = book.plan(now)
        for enrollment in held:
            enrollment.hold(times[("enrollment", enrollment.id)])
        moves += book.moved(times)
    queued = await enqueue_many(session, rows)
    await move_held_rows(session, moves)
    table: Table = Enrollment.__table__  # type: ignore[assignment]
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("eid"))
        .values(
            state=bindparam("state"),
            next_position=bindparam("next_position"),
            due_at=bindparam("due_at"),
            waiting_since=bindparam("waiting_since"),
            ended_at=bindparam("ended_at"),
        ),
        [
            {
                "eid": e.id,
                "state": e.state,
                "next_position": e.next_position,
                "due_at": e.due_at,
                "waiting_since": e.waiting_since,
                "ended_at": e.ended_at,
            }
            for e in enrollments
        ],
    )
    return Done(len(enrollments), queued)


def _move_on(ledger: Ledger, enrollment: Due, plan: Advance, now: dt.datetime) -> None:
    """The enrollment's step went (or was skipped): the next one is what it waits for now."""
    enrollment.move_on(plan, now)
    book = ledger.books[enrollment.subscriber_id]
    if enrollment.due_at is None:
        book.waiting.pop(("enrollment", enrollment.id), None)
    else:
        ledger.expect_step(book, enrollment.id, enrollment.sequence_id, enrollment.next_position, enrollment.due_at)
