"""Funnel analytics: where subscribers are, how they move, and what they open and click.

Counts are aggregated in the database; only layer history (one row per move) and unsubscribe
events are walked row by row, streamed, to compute weekly moves, conversion, median time in
layer and monthly churn. Rates count human events only.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import Event, Layer, LayerHistory, Message, Newsletter, Step, Subscriber


def _week(at: dt.datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def _rates(session: AsyncSession, key: Any) -> dict[int, dict[str, Any]]:
    """Sent count and human open/click rates per value of ``key`` (Message.step_id or
    Message.newsletter_id)."""
    sent: dict[int, int] = dict(
        (
            await session.execute(
                select(key, func.count()).where(key.is_not(None), Message.state == "sent").group_by(key)
            )
        ).all()
    )
    out: dict[int, dict[str, Any]] = {}
    for type_ in ("open", "click"):
        rows: dict[int, int] = dict(
            (
                await session.execute(
                    select(key, func.count(distinct(Event.message_id)))
                    .join(Message, Message.id == Event.message_id)
                    .where(key.is_not(None), Event.type == type_, Event.machine.is_(False))
                    .group_by(key)
                )
            ).all()
        )
        for k, total in sent.items():
            out.setdefault(k, {"sent": total})[f"{type_}_rate"] = _ratio(rows.get(k, 0), total)
    return out


async def funnel_stats(session: AsyncSession) -> dict[str, Any]:
    layers = list(
        (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
    )
    position = {layer.id: layer.position for layer in layers}
    active = dict(
        (
            await session.execute(
                select(Subscriber.layer_id, func.count())
                .where(Subscriber.status == "active")
                .group_by(Subscriber.layer_id)
            )
        ).all()
    )

    moves: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    entered: dict[int, set[int]] = defaultdict(set)
    promoted: dict[int, set[int]] = defaultdict(set)
    durations: dict[int, list[float]] = defaultdict(list)
    confirmed = await session.stream(
        select(Subscriber.id, Subscriber.confirmed_at).where(Subscriber.confirmed_at.is_not(None))
    )
    since: dict[int, dt.datetime] = {}
    first = layers[0].id if layers else None
    async for subscriber_id, at in confirmed:
        since[subscriber_id] = at  # type: ignore[assignment]  # confirmed_at IS NOT NULL
        if first is not None:
            entered[first].add(subscriber_id)
    history = await session.stream(
        select(
            LayerHistory.subscriber_id, LayerHistory.from_layer_id, LayerHistory.to_layer_id, LayerHistory.created_at
        ).order_by(LayerHistory.id)
    )
    async for subscriber_id, from_id, to_id, at in history:
        if from_id is not None:
            src, dst = position.get(from_id), position.get(to_id)
            if src is not None and dst is not None:
                moves[_week(at)]["up" if dst > src else "down"] += 1
                if dst == src + 1:
                    promoted[from_id].add(subscriber_id)
            if subscriber_id in since:
                durations[from_id].append((at - since[subscriber_id]).total_seconds())
        since[subscriber_id] = at
        entered[to_id].add(subscriber_id)

    churn: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    unsubscribes = await session.stream(
        select(Event.created_at, Subscriber.layer_id).join(Subscriber).where(Event.type == "unsubscribe")
    )
    async for at, layer_id in unsubscribes:
        if layer_id in position:
            churn[at.strftime("%Y-%m")][position[layer_id]] += 1

    per_layer = []
    for layer in layers:
        times = durations.get(layer.id)
        per_layer.append(
            {
                "position": layer.position,
                "name": layer.name,
                "label": layer.label,
                "subscribers": active.get(layer.id, 0),
                "conversion_to_next": _ratio(len(promoted[layer.id]), len(entered[layer.id]))
                if layer.position < len(layers)
                else None,
                "median_days_in_layer": round(statistics.median(times) / 86400, 2) if times else None,
            }
        )
    step_rates = await _rates(session, Message.step_id)
    steps = (await session.execute(select(Step.id, Step.sequence_id, Step.position, Step.template_name))).all()
    newsletter_rates = await _rates(session, Message.newsletter_id)
    names = dict((await session.execute(select(Newsletter.id, Newsletter.name))).all())
    return {
        "layers": per_layer,
        "moves_per_week": [{"week": w, **m} for w, m in sorted(moves.items())],
        "churn_per_month": [
            {
                "month": month,
                "layers": {
                    str(p): {"unsubscribed": n, "rate": _ratio(n, n + active.get(lid, 0))}
                    for lid, p in position.items()
                    if (n := by_layer.get(p, 0))
                },
            }
            for month, by_layer in sorted(churn.items())
        ],
        "steps": [
            {
                "step_id": s.id,
                "sequence_id": s.sequence_id,
                "position": s.position,
                "template": s.template_name,
                **step_rates[s.id],
            }
            for s in steps
            if s.id in step_rates
        ],
        "newsletters": [{"newsletter_id": n, "name": names.get(n), **r} for n, r in sorted(newsletter_rates.items())],
    }


def format_stats(stats: dict[str, Any]) -> str:
    """The stats as text for ``responder stats``."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    lines = [f"{'layer':<44} {'active':>7} {'to next':>8} {'median days':>12}"]
    for row in stats["layers"]:
        days = "-" if row["median_days_in_layer"] is None else f"{row['median_days_in_layer']:.1f}"
        lines.append(
            f"{row['position']}. {row['name'][:41]:<41} {row['subscribers']:>7} "
            f"{pct(row['conversion_to_next']):>8} {days:>12}"
        )
    if stats["moves_per_week"]:
        lines += ["", "moves per week (up / down)"]
        lines += [f"  {m['week']}  {m['up']:>6} / {m['down']}" for m in stats["moves_per_week"]]
    if stats["churn_per_month"]:
        lines += ["", "churn per month (layer: unsubscribed, rate)"]
        for month in stats["churn_per_month"]:
            parts = [f"{p}: {c['unsubscribed']} ({pct(c['rate'])})" for p, c in month["layers"].items()]
            lines.append(f"  {month['month']}  " + ", ".join(parts))
    if stats["steps"]:
        lines += ["", "steps (sent, human open rate, human click rate)"]
        lines += [
            f"  {s['template']:<32} {s['sent']:>7} {pct(s['open_rate']):>7} {pct(s['click_rate']):>7}"
            for s in stats["steps"]
        ]
    if stats["newsletters"]:
        lines += ["", "newsletters (sent, human open rate, human click rate)"]
        lines += [
            f"  {str(n['name'])[:32]:<32} {n['sent']:>7} {pct(n['open_rate']):>7} {pct(n['click_rate']):>7}"
            for n in stats["newsletters"]
        ]
    return "\n".join(lines)
