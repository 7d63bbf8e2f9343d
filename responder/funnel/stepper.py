"""Running due enrollments: one batch of due rows read with a handful of queries, each one
checked against its step's condition, send window and the layer's frequency caps, then either
queued, skipped, or postponed (never dropped).

No step is sent twice: the outbox keeps a (subscriber, step) pair once, so an enrollment that
reaches a step its subscriber already got (after a demotion and a promotion, or an edit) just
moves on.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.pacing import Sent, condition_holds, in_window, mail_at, zone
from ..core.schedule import StepPlan, advance, parse_duration
from ..delivery.mime import new_message_id
from ..models import (
    Enrollment,
    Event,
    Layer,
    Message,
    Newsletter,
    NewsletterRecipient,
    Step,
    Subscriber,
)

COUNTED_KINDS = ("step", "newsletter")  # transactional mail is exempt from caps
MAIL_TIME = func.coalesce(Message.sent_at, Message.next_attempt_at)


@dataclass(frozen=True)
class Done:
    processed: int
    queued: int


async def recent_mail(session: AsyncSession, subscriber_ids: set[int], since: dt.datetime) -> dict[int, list[Sent]]:
    rows = await session.execute(
        select(Message.subscriber_id, Message.kind, MAIL_TIME).where(
            Message.subscriber_id.in_(subscriber_ids), Message.kind.in_(COUNTED_KINDS), MAIL_TIME > since
        )
    )
    sent: dict[int, list[Sent]] = defaultdict(list)
    for subscriber_id, kind, at in rows:
        sent[subscriber_id].append(Sent(_aware(at), kind))
    return sent


async def newsletters_under_way(
    session: AsyncSession, subscriber_ids: set[int], now: dt.datetime
) -> dict[int, list[Sent]]:
    """Newsletters still walking their audience towards these subscribers count as sent now,
    so a drip step does not slip in just before one."""
    rows = await session.execute(
        select(NewsletterRecipient.subscriber_id)
        .join(Newsletter, Newsletter.id == NewsletterRecipient.newsletter_id)
        .where(
            Newsletter.state == "sending",
            NewsletterRecipient.subscriber_id.in_(subscriber_ids),
            NewsletterRecipient.subscriber_id > Newsletter.cursor,
        )
    )
    return {subscriber_id: [Sent(now, "newsletter")] for subscriber_id in rows.scalars()}


def outbox_row(
    subscriber_id: int,
    kind: str,
    template_name: str,
    now: dt.datetime,
    domain: str,
    *,
    step_id: int | None = None,
    newsletter_id: int | None = None,
    send_at: dt.datetime | None = None,
) -> dict[str, object]:
    """One outbox row as ``delivery.outbox.enqueue`` writes it, for queueing many at once."""
    return {
        "subscriber_id": subscriber_id,
        "kind": kind,
        "step_id": step_id,
        "newsletter_id": newsletter_id,
        "template_name": template_name,
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": send_at or now,
        "message_id": new_message_id(domain),
        "created_at": now,
    }


async def enqueue_many(session: AsyncSession, rows: list[dict[str, object]]) -> int:
    """Queue many messages in one statement; pairs already queued are skipped (the outbox's
    unique keys). The number of rows queued."""
    if not rows:
        return 0
    insert = sqlite.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert
    # One compiled statement, executed for many parameter sets (batched by SQLAlchemy's
    # "insertmanyvalues"): far cheaper than compiling one huge VALUES list per batch.
    table: Table = Message.__table__  # type: ignore[assignment]
    result = await session.execute(insert(table).on_conflict_do_nothing().returning(table.c.id), rows)
    return len(result.all())


def _aware(value: dt.datetime) -> dt.datetime:
    # coalesce() loses the column type, so SQLite hands back naive UTC datetimes (or text).
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def lookback(layers: dict[int, Layer]) -> dt.timedelta:
    gaps = [
        parse_duration(layer.rule["caps"]["min_gap"])
        for layer in layers.values()
        if (layer.rule or {}).get("caps", {}).get("min_gap")
    ]
    return max([dt.timedelta(days=7), *(dt.timedelta(seconds=g) for g in gaps)])


@dataclass
class Due:
    """One due enrollment and what becomes of it (written back in one executemany)."""

    id: int
    subscriber_id: int
    sequence_id: int
    next_position: int
    state: str = "active"
    due_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None

    def end(self, state: str, now: dt.datetime) -> None:
        self.state, self.ended_at, self.due_at = state, now, None


async def run_due_steps(session: AsyncSession, now: dt.datetime, *, limit: int, domain: str) -> Done:
    enrollments = [
        Due(*row)
        for row in (
            await session.execute(
                select(Enrollment.id, Enrollment.subscriber_id, Enrollment.sequence_id, Enrollment.next_position)
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
        row.id: row
        for row in (
            await session.execute(
                select(
                    Subscriber.id,
                    Subscriber.status,
                    Subscriber.layer_id,
                    Subscriber.attributes,
                    Subscriber.tags,
                    Subscriber.frequency,
                    Subscriber.paused_until,
                ).where(Subscriber.id.in_(subscriber_ids))
            )
        ).all()
    }
    steps: dict[int, list[Step]] = defaultdict(list)
    for step in (
        await session.execute(
            select(Step).where(Step.sequence_id.in_({e.sequence_id for e in enrollments})).order_by(Step.position)
        )
    ).scalars():
        steps[step.sequence_id].append(step)
    layers = {layer.id: layer for layer in (await session.execute(select(Layer))).scalars()}
    sent = await recent_mail(session, subscriber_ids, now - lookback(layers))
    for subscriber_id, coming in (await newsletters_under_way(session, subscriber_ids, now)).items():
        sent[subscriber_id].extend(coming)
    purchased: set[int] = set()
    if any((s.condition or {}).get("skip_if_purchased") for group in steps.values() for s in group):
        purchased = set(
            (
                await session.execute(
                    select(Event.subscriber_id)
                    .where(Event.subscriber_id.in_(subscriber_ids), Event.type == "purchase")
                    .distinct()
                )
            ).scalars()
        )
    rows: list[dict[str, object]] = []
    for enrollment in enrollments:
        subscriber = subscribers[enrollment.subscriber_id]
        if subscriber.status != "active":
            enrollment.end("stopped", now)
            continue
        sequence_steps = steps[enrollment.sequence_id]
        plan = advance([StepPlan(s.position, s.delay_s) for s in sequence_steps], enrollment.next_position, now)
        if plan is None:
            enrollment.end("completed", now)
            continue
        step = next(s for s in sequence_steps if s.position == plan.send_position)
        send = condition_holds(step.condition, purchased=subscriber.id in purchased, tags=subscriber.tags or [])
        if send:
            tz = zone((subscriber.attributes or {}).get("timezone"))
            layer = layers.get(subscriber.layer_id) if subscriber.layer_id else None
            caps = (layer.rule or {}).get("caps") if layer else None
            allowed = mail_at(
                sent[subscriber.id],
                now,
                caps,
                "step",
                frequency=subscriber.frequency,
                paused_until=subscriber.paused_until,
            )
            assert allowed is not None  # only newsletters are ever skipped
            at = max(in_window(step.send_window, now, tz), allowed)
            if at > now:
                # Postponed, not dropped; a window re-check at that time may move it again.
                enrollment.due_at = at
                continue
            rows.append(outbox_row(subscriber.id, "step", step.template_name, now, domain, step_id=step.id))
            sent[subscriber.id].append(Sent(now, "step"))
        enrollment.next_position = plan.next_position
        enrollment.due_at = plan.next_due_at
        if plan.next_due_at is None:
            enrollment.end("completed", now)
    queued = await enqueue_many(session, rows)
    table: Table = Enrollment.__table__  # type: ignore[assignment]
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("eid"))
        .values(
            state=bindparam("state"),
            next_position=bindparam("next_position"),
            due_at=bindparam("due_at"),
            ended_at=bindparam("ended_at"),
        ),
        [
            {
                "eid": e.id,
                "state": e.state,
                "next_position": e.next_position,
                "due_at": e.due_at,
                "ended_at": e.ended_at,
            }
            for e in enrollments
        ],
    )
    return Done(len(enrollments), queued)
