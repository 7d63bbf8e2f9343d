"""Reads layer history and the events with which subscribers left, subscriber by subscriber,
into ``core.flow``'s tally: the one source of the conversion, churn and weekly-move figures of
``responder stats``, the API and the dashboard.

Only subscribers with a change since the period began are read row by row; everyone else
active is in the layer they were in all along, which one grouped count says.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.flow import Change, FlowTally
from ..models import Event, LayerHistory, Subscriber

LEAVING_EVENTS = ("unsubscribe", "bounce", "complaint")
BATCH = 5000


def _leaving(type_: str, data: Any) -> bool:
    """A soft bounce (``data.hard`` false) is a delivery hiccup, not a departure."""
    return type_ != "bounce" or not (isinstance(data, dict) and data.get("hard") is False)


def _up(from_position: int | None, to_position: int | None) -> bool | None:
    if from_position is None or to_position is None or from_position == to_position:
        return None
    return to_position > from_position


async def _grouped(
    batches: AsyncIterator[Sequence[Any]], leaving: dict[int, list[Change]]
) -> AsyncIterator[list[Change]]:
    """Batches of history rows ordered by subscriber → each subscriber's changes in time order.
    (Batches, not rows: an async step per row cost more than the rest of the work.)"""
    current: int | None = None
    changes: list[Change] = []
    async for batch in batches:
        for row in batch:
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


async def layer_flow(session: AsyncSession, now: dt.datetime, since: dt.datetime | None = None) -> FlowTally:
    """The flow figures from ``since`` (None: the first row) to ``now``."""
    tally = FlowTally(since, now)
    touched = None
    if since is not None:
        recent = union(
            select(LayerHistory.subscriber_id).where(LayerHistory.created_at >= since),
            select(Event.subscriber_id).where(Event.type.in_(LEAVING_EVENTS), Event.created_at >= since),
        ).subquery()
        touched = select(recent.c.subscriber_id)
    events = select(Event.subscriber_id, Event.type, Event.data, Event.created_at).where(Event.type.in_(LEAVING_EVENTS))
    history = select(
        LayerHistory.subscriber_id,
        LayerHistory.created_at,
        LayerHistory.kind,
        LayerHistory.to_layer_id,
        LayerHistory.from_position,
        LayerHistory.to_position,
    )
    if touched is not None:
        events = events.where(Event.subscriber_id.in_(touched))
        history = history.where(LayerHistory.subscriber_id.in_(touched))
    # Departures are few (one or two per subscriber who left), so they are held while the
    # history, ordered by subscriber, streams past.
    leaving: dict[int, list[Change]] = defaultdict(list)
    for subscriber_id, type_, data, at in (await session.execute(events.order_by(Event.created_at, Event.id))).all():
        if _leaving(type_, data):
            leaving[subscriber_id].append(Change(at, type_))
    rows = await session.stream(
        history.order_by(LayerHistory.subscriber_id, LayerHistory.created_at, LayerHistory.id).execution_options(
            yield_per=BATCH
        )
    )
    async for changes in _grouped(rows.partitions(BATCH), leaving):
        tally.add(changes)
    # Active subscribers with nothing to read were in their layer the whole period: all the
    # active ones, less those read above (a count of the few, not a scan excluding them).
    active = select(Subscriber.layer_id, func.count()).where(
        Subscriber.status == "active", Subscriber.layer_id.is_not(None)
    )
    steady: Counter[int | None] = Counter()
    if touched is not None:
        for layer_id, count in (await session.execute(active.group_by(Subscriber.layer_id))).all():
            steady[layer_id] += count
        read = active.where(Subscriber.id.in_(touched))
        for layer_id, count in (await session.execute(read.group_by(Subscriber.layer_id))).all():
            steady[layer_id] -= count
    else:
        no_history = ~select(LayerHistory.id).where(LayerHistory.subscriber_id == Subscriber.id).exists()
        for layer_id, count in (await session.execute(active.where(no_history).group_by(Subscriber.layer_id))).all():
            steady[layer_id] += count
    for layer_id, count in steady.items():
        if layer_id is not None and count:
            tally.add_present(layer_id, count)
    return tally
