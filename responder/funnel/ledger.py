"""The caps' ledger of one batch of subscribers: what each was sent and what waits for them,
read in six queries however large the batch, planned by ``core.pacing.plan``, and the outbox
rows whose time the plan changed written back.

Mail waiting for a subscriber lives in three places, and every path that queues a counted mail
(the stepper's due steps, a newsletter's batch, a pause) plans all of it together for each
subscriber it touches, so both kinds of mail and both collision modes get the one answer:

* a drip step, in its enrollment: due at ``due_at``; once the caps held it, its turn is
  ``waiting_since`` (when it first fell due) and ``due_at`` is when it goes;
* a newsletter that has not reached the subscriber yet: sending, with its cursor before them,
  or scheduled to start within a day and meant for their layer and tags;
* a mail held in the outbox: queued with a later ``next_attempt_at`` (and, while the
  subscriber pauses, everything queued or deferred). Its turn is when it was queued; when a
  mail that takes its turn first arrives, it moves.

Everything else counted (sent, being sent, queued for now, a retry's next attempt) is fixed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Table, Text, and_, bindparam, case, cast, func, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.pacing import COLLISION_GAP, WEEK, Held, Sent, plan, skips_newsletter, zone
from ..core.schedule import parse_duration
from ..dbutil import in_ids
from ..models import Enrollment, Layer, Message, Newsletter, NewsletterRecipient, Step, Subscriber, UTCDateTime

COUNTED_KINDS = ("step", "newsletter")  # transactional mail is never counted nor held
NOT_RECEIVED = ("failed", "bounced")  # never reached the subscriber: not counted
# One typed time a row (most rows are sent mail: their time is all the caps need), and for mail
# not yet sent when it was queued (its turn, when the caps held it).
MAIL_AT = type_coerce(func.coalesce(Message.sent_at, Message.next_attempt_at), UTCDateTime).label("at")
QUEUED_AT = type_coerce(case((Message.sent_at.is_(None), Message.created_at)), UTCDateTime).label("queued_at")
# What the ledger needs of each subscriber; callers read their batch with these columns.
PACED = (
    Subscriber.id,
    Subscriber.status,
    Subscriber.layer_id,
    Subscriber.attributes,
    Subscriber.tags,
    Subscriber.frequency,
    Subscriber.paused_until,
    Subscriber.held_until,
)

# ``PACED`` with the two JSON columns read as their text, decoded when needed (``Book.tz``, a
# scheduled newsletter's tags): a newsletter's batch seldom needs either, and decoding both for
# every subscriber was a tenth of its time.
PACED_TEXT = tuple(
    cast(column, Text).label(column.key) if column.key in ("attributes", "tags") else column for column in PACED
)

Key = tuple[str, int]  # ("row", message id) | ("enrollment", id) | ("newsletter", id)


@dataclass
class Book:
    """One subscriber's counted mail: what is fixed, and what waits (by where it waits)."""

    subscriber: Any  # a row of ``PACED``
    caps: Mapping[str, Any] | None
    sent: list[Sent] = field(default_factory=list)
    waiting: dict[Key, Held] = field(default_factory=dict)
    rows_at: dict[int, dt.datetime] = field(default_factory=dict)  # held outbox rows' times now

    @property
    def not_before(self) -> dt.datetime | None:
        """Until when nothing counted goes: their own pause, or the hold a reply of theirs put
        on their mail (core.hold), whichever ends later."""
        ends = [t for t in (self.subscriber.paused_until, self.subscriber.held_until) if t is not None]
        return max(ends, default=None)

    @property
    def tz(self) -> dt.tzinfo:
        """The subscriber's time zone, for their steps' send windows."""
        return zone((_decoded(self.subscriber.attributes) or {}).get("timezone"))

    def plan(self, now: dt.datetime) -> dict[Key, dt.datetime]:
        """When each waiting mail goes (``now``: at once)."""
        keys = list(self.waiting)
        times = plan(
            self.sent,
            [self.waiting[k] for k in keys],
            now,
            self.caps,
            frequency=self.subscriber.frequency,
            paused_until=self.not_before,
        )
        return dict(zip(keys, times, strict=True))

    def moved(self, times: Mapping[Key, dt.datetime]) -> list[tuple[int, dt.datetime]]:
        """The held outbox rows whose time the plan changed, with their new time."""
        return [(i, times[("row", i)]) for i, at in self.rows_at.items() if times[("row", i)] != at]


@dataclass
class Ledger:
    books: dict[int, Book]
    steps: dict[int, list[Step]]  # each sequence's steps, by position
    # Plans already made in this ledger, by everything ``Book.plan`` reads (``plan`` is pure).
    _plans: dict[tuple[Any, ...], list[dt.datetime]] = field(default_factory=dict)

    def plan(self, book: Book, now: dt.datetime) -> dict[Key, dt.datetime]:
        """``book.plan(now)``, made once for books that count and wait alike: most of a
        newsletter's batch has the same layer, choice and pause, nothing sent within the
        lookback and only the newsletter waiting, so a batch plans a handful of times, not once
        per subscriber. (A layer's caps are the same dict for every book of one ledger; a mail
        in a send window is not hashable, and is planned on its own.)"""
        held = tuple(book.waiting.values())
        for mail in held:
            if mail.window is not None:
                return book.plan(now)
        s = book.subscriber
        key = (now, s.layer_id, s.frequency, s.paused_until, s.held_until, tuple(book.sent), held)
        times = self._plans.get(key)
        if times is None:
            times = self._plans[key] = list(book.plan(now).values())
        return dict(zip(book.waiting, times, strict=True))

    def next_step(self, sequence_id: int, position: int) -> Step | None:
        """The step an enrollment sends next: the first at or after ``position``."""
        return next((s for s in self.steps.get(sequence_id, []) if s.position >= position), None)

    def expect_step(self, book: Book, enrollment_id: int, sequence_id: int, position: int, due_at: dt.datetime) -> None:
        """Record the step an enrollment will send next (or nothing, when none is left)."""
        step = self.next_step(sequence_id, position)
        key = ("enrollment", enrollment_id)
        if step is None:
            book.waiting.pop(key, None)
            return
        book.waiting[key] = Held("step", due_at, step.send_window, book.tz if step.send_window else dt.UTC)


def _decoded(value: Any) -> Any:
    """A JSON column of a ``PACED`` row, decoded; of a ``PACED_TEXT`` row, its text decoded."""
    return json.loads(value) if isinstance(value, str) else value


def lookback(layers: Iterable[Layer]) -> dt.timedelta:
    """How far back sent mail can still hold a new one: a week, or the longest ``min_gap``."""
    gaps = [
        dt.timedelta(seconds=parse_duration(layer.rule["caps"]["min_gap"]))
        for layer in layers
        if ((layer.rule or {}).get("caps") or {}).get("min_gap")
    ]
    return max([WEEK, COLLISION_GAP, *gaps])


def among(column: Any, ids: Collection[int]) -> ColumnElement[bool]:
    """``column IN ids``, bounded by the ids' range as well: with statistics that lag behind a
    table growing fast (the outbox while a big newsletter is queued) PostgreSQL took the IN
    list for most of a table it thought small and scanned all of it, each batch; the range
    keeps it on the index (1.7 ms instead of 120 ms for 2,000 ids among 600,000 rows). The ids
    go as one parameter (``dbutil.in_ids``), not as an IN list of one parameter each."""
    if not ids:
        return column.in_(ids)  # type: ignore[no-any-return]
    return and_(column.between(min(ids), max(ids)), in_ids(column, ids))


async def read_ledger(
    session: AsyncSession, subscribers: Mapping[int, Any], now: dt.datetime, *, walking: int | None = None
) -> Ledger:
    """The books of these subscribers (rows of ``PACED``), in six queries."""
    layers = list((await session.execute(select(Layer))).scalars())
    caps = {layer.id: (layer.rule or {}).get("caps") for layer in layers}
    books = {i: Book(s, caps.get(s.layer_id) if s.layer_id else None) for i, s in subscribers.items()}
    ids = set(books)
    since = now - lookback(layers)
    for row in await session.execute(
        select(Message.id, Message.subscriber_id, Message.kind, Message.state, MAIL_AT, QUEUED_AT).where(
            among(Message.subscriber_id, ids),
            Message.kind.in_(COUNTED_KINDS),
            Message.state.not_in(NOT_RECEIVED),
            or_(Message.sent_at.is_(None), Message.sent_at > since),
        )
    ):
        book = books[row.subscriber_id]
        if row.queued_at is not None and _movable(row.state, row.at, book.not_before, now):
            book.waiting[("row", row.id)] = Held(row.kind, row.queued_at if row.state == "queued" else row.at)
            book.rows_at[row.id] = row.at
        else:  # sent; or queued for now, being sent, a retry's next attempt: bound to go then
            book.sent.append(Sent(row.at, row.kind))
    enrollments = (
        await session.execute(
            select(
                Enrollment.id,
                Enrollment.subscriber_id,
                Enrollment.sequence_id,
                Enrollment.next_position,
                Enrollment.due_at,
                Enrollment.waiting_since,
            ).where(among(Enrollment.subscriber_id, ids), Enrollment.state == "active")
        )
    ).all()
    steps: dict[int, list[Step]] = defaultdict(list)
    if enrollments:
        for step in (
            await session.execute(
                select(Step).where(Step.sequence_id.in_({e.sequence_id for e in enrollments})).order_by(Step.position)
            )
        ).scalars():
            steps[step.sequence_id].append(step)
    ledger = Ledger(books, steps)
    for e in enrollments:
        if e.due_at is not None:
            ledger.expect_step(
                books[e.subscriber_id], e.id, e.sequence_id, e.next_position, e.waiting_since or e.due_at
            )
    await _coming_newsletters(session, books, now, walking)
    return ledger


def _movable(state: str, next_attempt_at: dt.datetime, paused_until: dt.datetime | None, now: dt.datetime) -> bool:
    if paused_until is not None and now < paused_until:
        return state in ("queued", "deferred")
    return state == "queued" and next_attempt_at > now


async def _coming_newsletters(
    session: AsyncSession, books: dict[int, Book], now: dt.datetime, walking: int | None
) -> None:
    """Newsletters on their way to these subscribers: being walked towards them (due now), or
    scheduled to start within a day and meant for them (due at their start). ``walking``, the
    newsletter whose batch this is, is left to its caller."""
    for newsletter_id, subscriber_id in await session.execute(
        select(NewsletterRecipient.newsletter_id, NewsletterRecipient.subscriber_id)
        .join(Newsletter, Newsletter.id == NewsletterRecipient.newsletter_id)
        .where(
            Newsletter.state == "sending",
            Newsletter.id != (walking or 0),
            among(NewsletterRecipient.subscriber_id, set(books)),
            NewsletterRecipient.subscriber_id > Newsletter.cursor,
        )
    ):
        book = books[subscriber_id]
        if not skips_newsletter(book.subscriber.paused_until, now):
            book.waiting[("newsletter", newsletter_id)] = Held("newsletter", now)
    scheduled = (
        await session.execute(
            select(Newsletter.id, Newsletter.scheduled_at, Newsletter.layer_ids, Newsletter.tags).where(
                Newsletter.state == "scheduled", Newsletter.scheduled_at <= now + COLLISION_GAP
            )
        )
    ).all()
    for newsletter in scheduled:
        starts = max(newsletter.scheduled_at, now)
        for book in books.values():
            s = book.subscriber
            if (
                s.status == "active"
                and s.layer_id in (newsletter.layer_ids or [])
                and set(newsletter.tags or []) <= set(_decoded(s.tags) or [])
                and not skips_newsletter(s.paused_until, starts)
            ):
                book.waiting[("newsletter", newsletter.id)] = Held("newsletter", starts)


async def move_held_rows(session: AsyncSession, moves: Iterable[tuple[int, dt.datetime]]) -> int:
    """Give held outbox rows their new time, in one executemany; rows a worker claimed since
    are left alone. The number of rows moved."""
    params = [{"mid": message_id, "at": at} for message_id, at in moves]
    if not params:
        return 0
    table: Table = Message.__table__  # type: ignore[assignment]
    await session.execute(
        update(table)
        # (an IN list cannot be expanded in an executemany)
        .where(table.c.id == bindparam("mid"), or_(table.c.state == "queued", table.c.state == "deferred"))
        .values(next_attempt_at=bindparam("at")),
        params,
    )
    return len(params)


async def replan(session: AsyncSession, subscriber_ids: set[int], now: dt.datetime) -> int:
    """Plan these subscribers' held outbox rows again (after a pause, say) and move them."""
    subscribers = {
        row.id: row for row in (await session.execute(select(*PACED).where(Subscriber.id.in_(subscriber_ids)))).all()
    }
    ledger = await read_ledger(session, subscribers, now)
    moves = [move for book in ledger.books.values() for move in book.moved(book.plan(now))]
    return await move_held_rows(session, moves)
