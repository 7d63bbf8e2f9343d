"""Sequences started by what a subscriber does rather than by their layer.

A purchase starts the *back-end* sequences (cross-sell and up-sell for what was bought: a
sequence with a ``product`` runs only for that product, one without for every purchase), an
enquiry the follow-up sequences, a referral the thank-you sequences. They run beside the
layer's main sequence and survive layer moves; one subscriber is in one sequence at most once
at a time, so a second purchase while the back-end sequence runs does not restart it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from ..models import Enrollment, Sequence, Subscriber
from .enrollments import enroll_in

TRIGGERS = ("purchase", "enquiry", "referral")
SEQUENCE_TRIGGERS = ("layer", *TRIGGERS)


async def start_triggered(
    session: AsyncSession,
    subscriber: Subscriber,
    trigger: str,
    now: dt.datetime,
    *,
    product: str | None = None,
) -> list[Enrollment]:
    """Enroll the subscriber in every sequence ``trigger`` starts; the new enrollments."""
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}")
    if subscriber.status != "active":
        return []
    matches: list[ColumnElement[bool]] = [Sequence.product.is_(None)]
    if product:
        matches.append(Sequence.product == product)
    sequences = (
        (
            await session.execute(
                select(Sequence).where(Sequence.trigger == trigger, or_(*matches)).order_by(Sequence.id)
            )
        )
        .scalars()
        .all()
    )
    if not sequences:
        return []
    running = set(
        (
            await session.execute(
                select(Enrollment.sequence_id).where(
                    Enrollment.subscriber_id == subscriber.id, Enrollment.state == "active"
                )
            )
        ).scalars()
    )
    return [await enroll_in(session, subscriber, sequence, now) for sequence in sequences if sequence.id not in running]
