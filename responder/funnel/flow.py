"""Reads layer history and the events with which subscribers left into ``core.flow``'s day
counts, and the day counts into figures: the one source of the conversion, churn and
weekly-move figures of ``responder stats``, the API and the dashboard.

``count_flow`` reads the history of the subscribers with a change in a span of time; the
roll-up (``funnel.rollup``) keeps its day counts for every span up to its last minutes, so a
report (``layer_flow``) reads the kept day counts and folds only the few subscribers changed
since, however long the list.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.flow import Change, DayKey, Flow, assemble, fold
from ..models import Event, LayerHistory, RolledFigure, RollupState, SubscriberCount

LEAVING_EVENTS = ("unsubscribe", "bounce", "complaint")
BATCH = 5000


def _leaving(type_: str, data: Any) -> bool:
    """A soft bounce (``data.hard`` false) is a delivery hiccup, not a departure."""
    return type_ != "bounce" or not (isinstance(data, dict) and data.get("hard") is False)


def _up(from_position: int | None, to_position: int | None) -> bool | None:
    if from_position is None or to_position is None or from_position == to_position:
        return None
    return to_position > from_position


def _grouped(rows: Sequence[Any], leaving: dict[int, list[Change]]) -> Iterator[list[Change]]:
    """History rows ordered by subscriber → each subscriber's changes in time order."""
    current: int | None = None
    changes: list[Change] = []
    for row in rows:
        if row.subscriber_id != current:
            if current is not None:
                yield _merge(changes, leaving.pop(current, []))
            current, changes = row.subscriber_id, []
        changes.append(Change(row.created_at, row.kind, row.to_layer_id, _up(row.from_position, row.to_position)))
    if current is not None:
        yield _merge(changes, leaving.pop(current, []))


def _merge(history: list[Change], leaving: list[Change]) -> list[Change]:
    # A stable sort on time keeps history first when a departure has the same instant.
    return sorted(history + leaving, key=lambda c: c.at) if leaving else history


async def count_flow(session: AsyncSession, start: dt.datetime | None, end: dt.datetime | None) -> Counter[DayKey]:
    """The day counts (``core.flow.fold``) of what happened in [start, end) (None: unbounded):
    the history of each subscriber with a change or a departure in it is read, in batches."""
    history_span, event_span = [], []
    if start is not None:
        history_span.append(LayerHistory.created_at >= start)
        event_span.append(Event.created_at >= start)
    if end is not None:
        history_span.append(LayerHistory.created_at < end)
        event_span.append(Event.created_at < end)
    # A span is read by its time (the type compared as an expression no index answers).
    type_ = Event.type + "" if start is not None else Event.type
    touched = union(
        select(LayerHistory.subscriber_id).where(*history_span),
        select(Event.subscriber_id).where(type_.in_(LEAVING_EVENTS), *event_span),
    ).subquery()
    ids = sorted(i for i in (await session.execute(select(touched.c.subscriber_id))).scalars() if i is not None)
    counts: Counter[DayKey] = Counter()
    for first in range(0, len(ids), BATCH):
        chunk = ids[first : first + BATCH]
        leaving: dict[int, list[Change]] = defaultdict(list)
        departures = await session.execute(
            select(Event.subscriber_id, Event.type, Event.data, Event.created_at)
            .where(Event.subscriber_id.in_(chunk), Event.type.in_(LEAVING_EVENTS))
            .order_by(Event.created_at, Event.id)
        )
        for subscriber_id, kind, data, at in departures:
            if _leaving(kind, data):
                leaving[subscriber_id].append(Change(at, kind))
        rows = await session.execute(
            select(
                LayerHistory.subscriber_id,
                LayerHistory.created_at,
                LayerHistory.kind,
                LayerHistory.to_layer_id,
                LayerHistory.from_position,
                LayerHistory.to_position,
            )
            .where(LayerHistory.subscriber_id.in_(chunk))
            .order_by(LayerHistory.subscriber_id, LayerHistory.created_at, LayerHistory.id)
        )
        for changes in _grouped(rows.all(), leaving):
            counts.update(fold(changes, start, end))
    return counts


async def open_stays(session: AsyncSession) -> dict[int, int]:
    """Active subscribers per layer (the stays open now), from the counts the triggers keep."""
    rows = await session.execute(
        select(SubscriberCount.layer_id, SubscriberCount.n).where(
            SubscriberCount.status == "active", SubscriberCount.layer_id != 0, SubscriberCount.n != 0
        )
    )
    return {int(layer_id): int(count) for layer_id, count in rows}


async def layer_flow(
    session: AsyncSession,
    now: dt.datetime,
    since: dt.datetime | None = None,
    *,
    open_now: dict[int, int] | None = None,
    read_from: dt.datetime | None = None,
) -> Flow:
    """The flow figures from the day of ``since`` (None: all time) to ``now``: the day counts
    rolled up (``funnel.rollup``) plus those of the changes since, counted the same way. The day
    counts are read from the day of ``read_from`` (default ``since``: earlier for weeks of moves).
    ``open_now``: the active subscribers per layer, when the caller has counted them."""
    since_day = since.date() if since is not None else None
    first = since if read_from is None or since is None else min(read_from, since)
    first_day = first.date() if first is not None else None
    figures = select(RolledFigure.day, RolledFigure.layer_id, RolledFigure.metric, RolledFigure.value).where(
        RolledFigure.scope == "flow", ~RolledFigure.metric.startswith("stay:")
    )
    if first_day is not None:
        figures = figures.where(RolledFigure.day >= first_day)
    by_day: Counter[DayKey] = Counter()
    for day, layer_id, metric, value in await session.execute(figures):
        by_day[day, layer_id, metric] += int(value)
    lengths = select(RolledFigure.layer_id, RolledFigure.metric, func.sum(RolledFigure.value)).where(
        RolledFigure.scope == "flow", RolledFigure.metric.startswith("stay:")
    )
    if since_day is not None:
        lengths = lengths.where(RolledFigure.day >= since_day)
    stays_ended: Counter[tuple[int, int]] = Counter()
    for layer_id, metric, value in await session.execute(lengths.group_by(RolledFigure.layer_id, RolledFigure.metric)):
        stays_ended[layer_id, int(metric.removeprefix("stay:"))] += int(value)
    rolled = (
        await session.execute(select(RollupState.flow_rolled_until).where(RollupState.id == 1))
    ).scalar_one_or_none()
    for (day, layer_id, metric), value in (await count_flow(session, rolled, None)).items():
        if metric.startswith("stay:"):
            if since_day is None or day >= since_day:
                stays_ended[layer_id, int(metric.removeprefix("stay:"))] += value
        elif first_day is None or day >= first_day:
            by_day[day, layer_id, metric] += value
    if open_now is None:
        open_now = await open_stays(session)
    return assemble(
        by_day, [(layer_id, bucket, n) for (layer_id, bucket), n in stays_ended.items()], open_now, since_day
    )
