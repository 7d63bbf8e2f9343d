"""One newsletter's report: what became of its mails (delivered, bounced, failed, waiting),
what people did with them (human opens and clicks, as distinct mails; unsubscribes; complaints),
what machines did (their hits by verdict), all of it per layer the recipients were in when
sending started, and hour by hour since it started the mails a person first opened or
clicked. And an A/B test's figures per variant (``variant_figures``).

How the mails ended is read from the counts the outbox's triggers keep (plus those the
retention period pruned); what was done with them comes from the roll-up and the events since
(``funnel.rollup``). Nothing is carried into the process per recipient.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import distinct, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbutil import days_between, get_or_404
from ..delivery.outbox import kept_counts
from ..models import Event, Layer, LayerHistory, Message, Newsletter
from . import rollup
from .rollup import HOURS

ACTIVITY = ("open", "click", "unsubscribe", "complaint")
DELIVERY = {"sent": "delivered", "bounced": "bounced", "failed": "failed"}


@dataclass
class Figures:
    delivered: int = 0
    bounced: int = 0
    failed: int = 0
    waiting: int = 0
    opened: int = 0  # distinct mails opened by a person
    clicked: int = 0  # distinct mails clicked by a person
    unsubscribed: int = 0
    complained: int = 0
    machine_hits: int = 0

    def add_state(self, state: str, count: int) -> None:
        name = DELIVERY.get(state)
        if name is None:
            self.waiting += count
        else:
            setattr(self, name, getattr(self, name) + count)

    def as_json(self) -> dict[str, Any]:
        rate = lambda part: round(part / self.delivered, 4) if self.delivered else None  # noqa: E731
        return {
            **self.__dict__,
            "open_rate": rate(self.opened),
            "click_rate": rate(self.clicked),
            "unsubscribe_rate": rate(self.unsubscribed),
            "complaint_rate": rate(self.complained),
        }


@dataclass
class Report:
    total: Figures = field(default_factory=Figures)
    layers: dict[int | None, Figures] = field(default_factory=dict)
    machine_by_verdict: dict[str, int] = field(default_factory=dict)
    hourly: list[dict[str, int]] = field(default_factory=list)
    later: dict[str, int] = field(default_factory=dict)


def _add_activity(figures: Figures, type_: str, machine: bool, hits: int, mails: int) -> None:
    if machine:
        figures.machine_hits += hits
    elif type_ == "open":
        figures.opened += mails
    elif type_ == "click":
        figures.clicked += mails
    elif type_ == "unsubscribe":
        figures.unsubscribed += mails
    elif type_ == "complaint":
        figures.complained += mails


async def newsletter_report(session: AsyncSession, newsletter: Newsletter) -> dict[str, Any]:
    report = Report()
    for (_, layer, state), count in (await kept_counts(session, "newsletter", newsletter.id)).items():
        report.total.add_state(state, count)
        report.layers.setdefault(layer or None, Figures()).add_state(state, count)
    # What people and machines did, from the roll-up and the events since (``funnel.rollup``).
    # A mail counts once per kind of activity in the total; per layer, in its own layer.
    hours = {"open": [0] * (HOURS + 1), "click": [0] * (HOURS + 1)}
    for (_, _, layer, metric), count in (await rollup.figures(session, "newsletter", scope_id=newsletter.id)).items():
        layer_id = layer or None
        kind, _, what = metric.partition(":")
        if kind == "state":
            report.total.add_state(what, count)
            report.layers.setdefault(layer_id, Figures()).add_state(what, count)
        elif kind in ("hits", "mails"):
            type_, flag = what.split(":")
            hits, mails = (count, 0) if kind == "hits" else (0, count)
            _add_activity(report.layers.setdefault(layer_id, Figures()), type_, flag == "1", hits, mails)
            _add_activity(report.total, type_, flag == "1", hits, mails)
        elif kind == "verdict":
            report.machine_by_verdict[what] = report.machine_by_verdict.get(what, 0) + count
        elif kind == "hour":
            hour, type_ = what.split(":")
            hours[type_][int(hour)] += count
    if newsletter.started_at is not None:
        buckets = [{"hour": h, "open": hours["open"][h], "click": hours["click"][h]} for h in range(HOURS)]
        report.later = {"open": hours["open"][HOURS], "click": hours["click"][HOURS]}
        last = max((b["hour"] for b in buckets if b["open"] or b["click"]), default=-1)
        report.hourly = buckets[: max(last + 1, 1)]
    names = {
        layer.id: (layer.position, layer.name)
        for layer in (await session.execute(select(Layer).where(Layer.id.in_(report.layers.keys() - {None}))))
        .scalars()
        .all()
    }
    per_layer = [
        {
            "layer_id": layer_id,
            "position": names.get(layer_id, (None, None))[0] if layer_id is not None else None,
            "name": names.get(layer_id, (None, None))[1] if layer_id is not None else None,
            **figures.as_json(),
        }
        for layer_id, figures in report.layers.items()
    ]
    per_layer.sort(key=lambda row: (row["position"] is None, row["position"] or 0))
    return {
        "newsletter_id": newsletter.id,
        "name": newsletter.name,
        "state": newsletter.state,
        "started_at": newsletter.started_at.isoformat() if newsletter.started_at else None,
        "recipients": newsletter.total,
        "total": report.total.as_json(),
        "layers": per_layer,
        "machine_by_verdict": dict(sorted(report.machine_by_verdict.items())),
        "hourly": report.hourly,
        "later": report.later,
    }


async def report_of(session: AsyncSession, newsletter_id: int) -> dict[str, Any]:
    """A newsletter's report by its id (404 if there is none): what ``funnel.apart``
    builds in a builder process, where a million recipients' mails are counted off the loop."""
    return await newsletter_report(session, await get_or_404(session, Newsletter, newsletter_id, "newsletter"))


CONVERSION_WINDOW = dt.timedelta(days=7)


@dataclass
class VariantFigures:
    """One A/B variant's mails: queued (all of them), delivered, and of the delivered ones how
    many a person opened or clicked, whose reader unsubscribed or complained from them, and
    whose reader converted within ``CONVERSION_WINDOW`` after delivery (a human purchase, or a
    move up to a higher layer)."""

    queued: int = 0
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    complained: int = 0
    converted: int = 0

    def as_json(self) -> dict[str, Any]:
        rate = lambda part: round(part / self.sent, 4) if self.sent else None  # noqa: E731
        return {
            **self.__dict__,
            "open_rate": rate(self.opened),
            "click_rate": rate(self.clicked),
            "unsubscribe_rate": rate(self.unsubscribed),
            "complaint_rate": rate(self.complained),
            "conversion_rate": rate(self.converted),
        }


async def variant_figures(
    session: AsyncSession, variant_ids: Iterable[int], *, conversions: bool = True
) -> dict[int, VariantFigures]:
    """Per variant, counted by the database in three grouped queries over the variants' mails
    (two without ``conversions``). Opens and clicks are human ones only (machine hits never
    count), each mail once."""
    ids = list(variant_ids)
    figures: dict[int | None, VariantFigures] = {variant_id: VariantFigures() for variant_id in ids}
    if not ids:
        return {}
    for variant_id, state, count in await session.execute(
        select(Message.variant_id, Message.state, func.count())
        .where(Message.variant_id.in_(ids))
        .group_by(Message.variant_id, Message.state)
    ):
        figures[variant_id].queued += count
        if state == "sent":
            figures[variant_id].sent += count
    names = {"open": "opened", "click": "clicked", "unsubscribe": "unsubscribed", "complaint": "complained"}
    for variant_id, type_, mails in await session.execute(
        select(Message.variant_id, Event.type, func.count(distinct(Event.message_id)))
        .join(Message, Message.id == Event.message_id)
        .where(Message.variant_id.in_(ids), Event.type.in_(ACTIVITY), Event.machine.is_(False))
        .group_by(Message.variant_id, Event.type)
    ):
        setattr(figures[variant_id], names[type_], mails)
    if not conversions:
        return {variant_id: f for variant_id, f in figures.items() if variant_id is not None}
    window_d = CONVERSION_WINDOW.total_seconds() / 86400
    purchased = exists().where(
        Event.subscriber_id == Message.subscriber_id,
        Event.type == "purchase",
        Event.machine.is_(False),
        Event.created_at >= Message.sent_at,
        days_between(Event.created_at, Message.sent_at) <= window_d,
    )
    moved_up = exists().where(
        LayerHistory.subscriber_id == Message.subscriber_id,
        LayerHistory.kind == "move",
        LayerHistory.to_position > LayerHistory.from_position,
        LayerHistory.created_at >= Message.sent_at,
        days_between(LayerHistory.created_at, Message.sent_at) <= window_d,
    )
    for variant_id, count in await session.execute(
        select(Message.variant_id, func.count())
        .where(Message.variant_id.in_(ids), Message.state == "sent", or_(purchased, moved_up))
        .group_by(Message.variant_id)
    ):
        figures[variant_id].converted = count
    return {variant_id: f for variant_id, f in figures.items() if variant_id is not None}
