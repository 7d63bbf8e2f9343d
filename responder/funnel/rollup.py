"""Roll-ups and retention: the figures that grow with the list, counted once, and the rows the
retention period no longer needs, deleted.

Every ``rollup_every_s`` the scheduler counts the events created since the last roll-up (up to
``LAG`` ago, so a transaction still committing is not passed over) into ``rolled_figures``: one
row per day, scope (``all``, a ``step``, a ``newsletter`` and its recipients' layer) and
metric, added to. A report is then what was rolled plus the same count over the few events
since (``figures``): the same function counts both, so a report reads the same before and after
a roll-up, and it never scans more than the last minutes of events.

Once a day's events are rolled, rows older than ``retention_days`` can go (``prune``): sent,
failed and bounced outbox rows with their sends, opens and clicks, in batches of ``PRUNE_BATCH``. How each of
them ended is added to the figures first (``state:*`` metrics), and a drip step's pair
(subscriber, step) is kept in ``sent_steps``, so the step is never sent to them twice. Events
that are not about a mail (purchases, referrals, confirmations, enquiries, moves) and those
that changed a subscriber's standing (unsubscribes, complaints, bounces) are their record and
stay, as consent records do.

The metrics (``Key`` is scope, scope id, layer id, metric):
- ``all``: ``ev:{type}:{machine 0/1}:{verdict}`` for every type of event but bounces (the
  dashboard's opens, clicks, mail and complaints; ``/metrics``' events by type);
  ``bounce:hard`` and ``bounce:soft``.
- ``step``: ``mails:{open|click|unsubscribe}``, mails with a human one (each mail once).
- ``newsletter``, per layer: ``hits:{type}:{m}`` and ``mails:{type}:{m}`` for opens, clicks,
  unsubscribes and complaints; ``verdict:{verdict}`` for machine opens and clicks;
  ``hour:{h}:{open|click}`` for mails first opened (clicked) by a person ``h`` hours after
  sending started (``HOURS``: later).
- ``step`` and ``newsletter``: ``state:{state}`` for the outbox rows pruned.
- ``flow``, per layer: the layer flow's day counts (``core.flow.fold``: stays begun, ended and
  how, converted, their lengths, moves up and down), rolled up to ``flow_rolled_until`` from
  the layer history and the departures, which are never pruned.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, and_, case, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased

from ..db import Database
from ..dbutil import hours_since
from ..models import (
    Enquiry,
    Event,
    LayerHistory,
    Message,
    Newsletter,
    NewsletterRecipient,
    RolledFigure,
    RollupState,
    SentStep,
)
from ..settings import Settings
from .flow import count_flow

log = logging.getLogger(__name__)

LAG = dt.timedelta(seconds=120)  # events younger than this may belong to a transaction still open
HOURS = 72  # a newsletter report's chart: mails first opened in each hour since it started
ACTIVITY = ("open", "click", "unsubscribe", "complaint")
FINAL_STATES = ("sent", "failed", "bounced")
MAIL_EVENTS = ("sent", "open", "click")  # what pruning a mail deletes of its events
PRUNE_BATCH = 1000
PRUNE_EVERY = dt.timedelta(hours=1)

Key = tuple[str, int, int, str]  # scope, scope id, layer id (0: none), metric
FIGURES = cast(Table, RolledFigure.__table__)


def _first() -> Any:
    """1 for an event that is its mail's first of its type from a person (or from a machine),
    0 for a later one: counting the 1s counts mails, each once."""
    earlier = aliased(Event)
    return case(
        (
            exists().where(
                earlier.message_id == Event.message_id,
                earlier.type == Event.type,
                earlier.machine == Event.machine,
                earlier.id < Event.id,
            ),
            0,
        ),
        else_=1,
    )


def fold_all(rows: Iterable[tuple[str, Any, str | None, Any, int]]) -> Counter[Key]:
    """(type, machine, verdict, hard, count) → the ``all`` scope's metrics."""
    counts: Counter[Key] = Counter()
    for type_, machine, verdict, hard, count in rows:
        if type_ == "bounce":
            metric = "bounce:hard" if hard else "bounce:soft"
        else:
            metric = f"ev:{type_}:{int(bool(machine))}:{verdict or ''}"
        counts["all", 0, 0, metric] += count
    return counts


def fold_mail(rows: Iterable[tuple[Any, ...]]) -> Counter[Key]:
    """(step, newsletter, layer, type, machine, verdict, first, hour, count) → the ``step``
    and ``newsletter`` scopes' metrics."""
    counts: Counter[Key] = Counter()
    for step_id, newsletter_id, layer_id, type_, machine, verdict, first, hour, count in rows:
        human, m = not machine, int(bool(machine))
        if step_id is not None and human and first and type_ in ("open", "click", "unsubscribe"):
            counts["step", step_id, 0, f"mails:{type_}"] += count
        if newsletter_id is None:
            continue
        key = ("newsletter", newsletter_id, layer_id or 0)
        counts[(*key, f"hits:{type_}:{m}")] += count
        if first:
            counts[(*key, f"mails:{type_}:{m}")] += count
        if type_ in ("open", "click"):
            if not human:
                counts[(*key, f"verdict:{verdict or 'unknown'}")] += count
            elif first and hour is not None:
                counts[(*key, f"hour:{min(max(hour, 0), HOURS)}:{type_}")] += count
    return counts


async def count_events(
    session: AsyncSession,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    scope: str | None = None,
    newsletter_id: int | None = None,
) -> Counter[Key]:
    """Every metric of the events created in [start, end) (open ends: unbounded), counted by the
    database; only ``scope``'s with a scope, only one newsletter's mails with ``newsletter_id``."""
    span = []
    if start is not None:
        span.append(Event.created_at >= start)
    if end is not None:
        span.append(Event.created_at < end)
    # SQLite would rather walk the type index over every open and click than the few minutes
    # of events since the last roll-up: a span is read by its time, the type compared as an
    # expression no index answers.
    type_ = Event.type + "" if start is not None else Event.type
    counts: Counter[Key] = Counter()
    if scope in (None, "all") and newsletter_id is None:
        hard = Event.data["hard"].as_boolean()
        counts += fold_all(
            await session.execute(
                select(Event.type, Event.machine, Event.verdict, hard, func.count())
                .where(*span)
                .group_by(Event.type, Event.machine, Event.verdict, hard)
            )
        )
    if scope == "all":
        return counts
    # The same for one newsletter's: its mails are not walked to find the last minutes' events.
    newsletter = Message.newsletter_id + 0 if start is not None else Message.newsletter_id
    scoped = [newsletter == newsletter_id] if newsletter_id is not None else []
    rows = (
        select(
            Message.step_id,
            Message.newsletter_id,
            NewsletterRecipient.layer_id,
            Event.type,
            Event.machine,
            Event.verdict,
            _first().label("first"),
            hours_since(Event.created_at, Newsletter.started_at).label("hour"),
        )
        .select_from(Event)
        .join(Message, Message.id == Event.message_id)
        .outerjoin(
            NewsletterRecipient,
            and_(
                NewsletterRecipient.newsletter_id == Message.newsletter_id,
                NewsletterRecipient.subscriber_id == Message.subscriber_id,
            ),
        )
        .outerjoin(Newsletter, Newsletter.id == Message.newsletter_id)
        .where(*span, *scoped, type_.in_(ACTIVITY))
        .subquery()
    )
    columns = list(rows.c)
    counts += fold_mail(
        await session.execute(select(*columns, func.count()).group_by(*columns))  # type: ignore[arg-type]
    )
    return counts


async def _state(session: AsyncSession, *, lock: bool = False) -> RollupState:
    query = select(RollupState).where(RollupState.id == 1)
    state = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
    if state is None:
        state = RollupState(
            id=1, rolled_until=None, flow_rolled_until=None, pruned_before=None, pruned_messages=0, pruned_events=0
        )
        session.add(state)
        await session.flush()
    return state


async def rolled_until(session: AsyncSession) -> dt.datetime | None:
    return (await session.execute(select(RollupState.rolled_until).where(RollupState.id == 1))).scalar_one_or_none()


async def _add(session: AsyncSession, day: dt.date, counts: Counter[Key]) -> None:
    rows = [
        {"day": day, "scope": scope, "scope_id": scope_id, "layer_id": layer_id, "metric": metric, "value": value}
        for (scope, scope_id, layer_id, metric), value in counts.items()
        if value
    ]
    if not rows:
        return
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    statement = dialect.insert(FIGURES)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["day", "scope", "scope_id", "layer_id", "metric"],
            set_={"value": FIGURES.c.value + statement.excluded.value},
        ),
        rows,
    )


async def _first_mark(
    session: AsyncSession, created_at: InstrumentedAttribute[dt.datetime], now: dt.datetime
) -> dt.datetime:
    """Where a first roll-up starts: at the oldest row there is (the least ``created_at``), and
    never later than its lag."""
    oldest = (await session.execute(select(func.min(created_at)))).scalar_one()
    return min(oldest, now - LAG) if oldest is not None else now - LAG


def _next_midnight(at: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(at.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


async def roll(db: Database, now: dt.datetime, *, budget_s: float = 5.0) -> int:
    """Count the events created since the last roll-up into the daily figures, a day at most
    (never across midnight) per transaction, for about ``budget_s`` seconds (a roll-up behind by
    months catches up over the next turns); the spans rolled."""
    rolled = 0
    started = time.monotonic()
    while time.monotonic() - started < budget_s:
        async with db.transaction() as session:
            state = await _state(session, lock=not db.is_sqlite)
            start = state.rolled_until
            if start is None:  # the first roll-up starts at the first event there is
                state.rolled_until = await _first_mark(session, Event.created_at, now)
                continue
            end = min(now - LAG, _next_midnight(start))
            if end <= start:
                break
            await _add(session, start.date(), await count_events(session, start, end))
            state.rolled_until = end
            rolled += 1
    while time.monotonic() - started < budget_s and await _roll_flow(db, now):
        rolled += 1
    return rolled


async def _roll_flow(db: Database, now: dt.datetime) -> bool:
    """Add the layer flow's day counts of the next span (a day at most) to the figures; False
    when there is none yet. The histories are read outside the transaction that adds them."""
    async with db.transaction() as session:
        state = await _state(session, lock=not db.is_sqlite)
        start = state.flow_rolled_until
        if start is None:  # the first roll-up starts at the first change there is
            state.flow_rolled_until = await _first_mark(session, LayerHistory.created_at, now)
            return True
    end = min(now - LAG, _next_midnight(start))
    if end <= start:
        return False
    async with db.read() as session:
        counts = await count_flow(session, start, end)
    async with db.transaction() as session:
        state = await _state(session, lock=not db.is_sqlite)
        if state.flow_rolled_until != start:  # rolled meanwhile (by a scheduler that took over)
            return True
        by_day: dict[dt.date, Counter[Key]] = {}
        for (day, layer_id, metric), count in counts.items():
            by_day.setdefault(day, Counter())["flow", 0, layer_id, metric] += count
        for day, day_counts in sorted(by_day.items()):
            await _add(session, day, day_counts)
        state.flow_rolled_until = end
    return True


async def figures(
    session: AsyncSession,
    scope: str,
    *,
    since: dt.datetime | None = None,
    scope_id: int | None = None,
) -> Counter[Key]:
    """A scope's figures from the day of ``since`` (None: all time): what was rolled, plus the
    events since the last roll-up counted the same way. ``since`` is taken at its day's start."""
    since_day = since.date() if since is not None else None
    query = select(RolledFigure.scope, RolledFigure.scope_id, RolledFigure.layer_id, RolledFigure.metric).add_columns(
        func.sum(RolledFigure.value)
    )
    query = query.where(RolledFigure.scope == scope)
    if scope_id is not None:
        query = query.where(RolledFigure.scope_id == scope_id)
    if since_day is not None:
        query = query.where(RolledFigure.day >= since_day)
    query = query.group_by(RolledFigure.scope, RolledFigure.scope_id, RolledFigure.layer_id, RolledFigure.metric)
    counts: Counter[Key] = Counter(
        {(s, i, layer, metric): int(value) for s, i, layer, metric, value in (await session.execute(query))}
    )
    start = await rolled_until(session)
    if since_day is not None:
        day_start = dt.datetime.combine(since_day, dt.time(), tzinfo=dt.UTC)
        start = max(start, day_start) if start is not None else day_start
    tail = await count_events(
        session, start, None, scope=scope, newsletter_id=scope_id if scope == "newsletter" else None
    )
    counts.update({key: value for key, value in tail.items() if key[0] == scope and (scope_id in (None, key[1]))})
    return counts


async def prune(db: Database, settings: Settings, now: dt.datetime, *, batches: int = 50) -> tuple[int, int]:
    """Delete the outbox rows that ended before the retention period and their events, at most
    ``batches`` batches now; (messages, events) deleted. Runs when its hour has come."""
    if settings.retention_days <= 0:
        return 0, 0
    async with db.read() as session:
        state = await _state(session)
        rolled, pruned_before = state.rolled_until, state.pruned_before
    cutoff = now - dt.timedelta(days=settings.retention_days)
    if rolled is None or (pruned_before is not None and cutoff < pruned_before + PRUNE_EVERY):
        return 0, 0
    cutoff = min(cutoff, rolled)
    messages = events = 0
    for _ in range(batches):
        async with db.transaction() as session:
            done, gone = await _prune_batch(session, cutoff, rolled)
            messages, events = messages + done, events + gone
            state = await _state(session, lock=not db.is_sqlite)
            state.pruned_messages += done
            state.pruned_events += gone
            if done < PRUNE_BATCH:
                state.pruned_before = cutoff
                await _prune_recipients(session, cutoff)
                break
    if messages:
        log.info("retention: deleted %d messages and %d events older than %s", messages, events, cutoff.isoformat())
    return messages, events


async def _prune_batch(session: AsyncSession, cutoff: dt.datetime, rolled: dt.datetime) -> tuple[int, int]:
    ids = list(
        (
            await session.execute(
                select(Message.id)
                .where(
                    Message.state.in_(FINAL_STATES),
                    Message.created_at < cutoff,
                    ~exists().where(Event.message_id == Message.id, Event.created_at >= rolled),
                    ~exists().where(Enquiry.message_id == Message.id),
                )
                .order_by(Message.id)
                .limit(PRUNE_BATCH)
            )
        ).scalars()
    )
    if not ids:
        return 0, 0
    ended = await session.execute(
        select(Message.step_id, Message.newsletter_id, NewsletterRecipient.layer_id, Message.state, func.count())
        .outerjoin(
            NewsletterRecipient,
            and_(
                NewsletterRecipient.newsletter_id == Message.newsletter_id,
                NewsletterRecipient.subscriber_id == Message.subscriber_id,
            ),
        )
        .where(Message.id.in_(ids))
        .group_by(Message.step_id, Message.newsletter_id, NewsletterRecipient.layer_id, Message.state)
    )
    counts: Counter[Key] = Counter()
    for step_id, newsletter_id, layer_id, state, count in ended:
        if step_id is not None:
            counts["step", step_id, 0, f"state:{state}"] += count
        if newsletter_id is not None:
            counts["newsletter", newsletter_id, layer_id or 0, f"state:{state}"] += count
    await _add(session, cutoff.date(), counts)
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    await session.execute(
        dialect.insert(SentStep)
        .from_select(
            ["subscriber_id", "step_id"],
            select(Message.subscriber_id, Message.step_id).where(Message.id.in_(ids), Message.step_id.is_not(None)),
        )
        .on_conflict_do_nothing()
    )
    gone = (await session.execute(delete(Event).where(Event.message_id.in_(ids), Event.type.in_(MAIL_EVENTS)))).rowcount  # type: ignore[attr-defined]
    # An unsubscribe, a complaint, a bounce or a reply stays in the subscriber's record (the
    # layer flow counts who left and how), no longer pointing at the mail.
    await session.execute(update(Event).where(Event.message_id.in_(ids)).values(message_id=None))
    await session.execute(delete(Message).where(Message.id.in_(ids)))
    return len(ids), int(gone or 0)


async def _prune_recipients(session: AsyncSession, cutoff: dt.datetime) -> None:
    """A newsletter that finished before the cutoff and has no outbox row left needs its
    recipient list no more (its report reads the pruned figures)."""
    done = (
        await session.execute(
            select(Newsletter.id).where(
                Newsletter.finished_at < cutoff,
                ~exists().where(Message.newsletter_id == Newsletter.id),
                exists().where(NewsletterRecipient.newsletter_id == Newsletter.id),
            )
        )
    ).scalars()
    for newsletter_id in list(done):
        while True:
            some = (
                select(NewsletterRecipient.subscriber_id)
                .where(NewsletterRecipient.newsletter_id == newsletter_id)
                .limit(PRUNE_BATCH * 5)
                .scalar_subquery()
            )
            gone = await session.execute(
                delete(NewsletterRecipient).where(
                    NewsletterRecipient.newsletter_id == newsletter_id, NewsletterRecipient.subscriber_id.in_(some)
                )
            )
            if not gone.rowcount:  # type: ignore[attr-defined]
                break
