"""Funnel analytics: where subscribers are, how they move, and what they open and click.

Counts are aggregated in the database; the layer flow (entries, conversion to the next layer,
time in layer, moves per week, churn per layer and month) comes from the day counts that
``flow.layer_flow`` reads, kept by the roll-up. Rates count human events only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.flow import CHURN_KINDS, LayerFlow
from ..core.flow import ratio as _ratio
from ..delivery.outbox import kept_counts
from ..models import Layer, Newsletter, Step
from . import rollup
from .flow import layer_flow, open_stays

# How each way of leaving is named in the figures.
LEFT_AS = {"unsubscribe": "unsubscribed", "bounce": "bounced", "complaint": "complained", "sunset": "sunset"}


def _week(monday: dt.date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def churn_json(flow: LayerFlow) -> dict[str, Any]:
    """How many left a layer and how, and the share of those in the layer that is."""
    return {
        **{LEFT_AS[kind]: flow.left.get(kind, 0) for kind in CHURN_KINDS},
        "churned": flow.churned,
        "in_layer": flow.present,
        "rate": flow.churn_rate,
    }


async def _rates(session: AsyncSession, scope: str) -> dict[int, dict[str, Any]]:
    """Sent count and human open/click rates per step or newsletter (``scope`` "step" or
    "newsletter"): the outbox's sent mail as the triggers count it and the pruned, and the mails
    a person opened or clicked, from the roll-up (``funnel.rollup``)."""
    sent: dict[int, int] = {}
    for (scope_id, _, state), count in (await kept_counts(session, scope)).items():
        if state == "sent":
            sent[scope_id] = sent.get(scope_id, 0) + count
    engaged: dict[tuple[int, str], int] = {}
    for (_, scope_id, _, metric), count in (await rollup.figures(session, scope)).items():
        kind, _, what = metric.partition(":")
        if kind == "state" and what == "sent":
            sent[scope_id] = sent.get(scope_id, 0) + count
        elif kind == "mails" and what in ("open", "click", "open:0", "click:0"):
            type_ = what.split(":")[0]
            engaged[scope_id, type_] = engaged.get((scope_id, type_), 0) + count  # a newsletter's: every layer's
    return {
        k: {"sent": total, **{f"{t}_rate": _ratio(engaged.get((k, t), 0), total) for t in ("open", "click")}}
        for k, total in sent.items()
    }


async def funnel_stats(session: AsyncSession, now: dt.datetime, since: dt.datetime | None = None) -> dict[str, Any]:
    """The figures from ``since`` (None: all time) to ``now``."""
    layers = list(
        (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
    )
    active = await open_stays(session)
    flow = await layer_flow(session, now, since, open_now=active)
    position = {layer.id: layer.position for layer in layers}
    per_layer = []
    for layer in layers:
        figures = flow.layers.get(layer.id, LayerFlow())
        per_layer.append(
            {
                "position": layer.position,
                "name": layer.name,
                "label": layer.label,
                "subscribers": active.get(layer.id, 0),
                "entered": figures.entered,
                "moved_up": figures.moved_up,
                "conversion_to_next": figures.conversion_to_next if layer.position < len(layers) else None,
                "median_days_in_layer": figures.median_days,
                "churn": churn_json(figures),
            }
        )
    step_rates = await _rates(session, "step")
    steps = (await session.execute(select(Step.id, Step.sequence_id, Step.position, Step.template_name))).all()
    newsletter_rates = await _rates(session, "newsletter")
    names = dict((await session.execute(select(Newsletter.id, Newsletter.name))).all())
    return {
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "layers": per_layer,
        "moves_per_week": [
            {"week": _week(monday), "up": moves["up"], "down": moves["down"]}
            for monday, moves in sorted(flow.moves().items())
        ],
        "churn_per_month": [
            {
                "month": month,
                "layers": {str(position[lid]): churn_json(f) for lid, f in by_layer.items() if lid in position},
            }
            for month, by_layer in flow.churn_per_month()
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

    lines = [f"{'layer':<44} {'active':>7} {'entered':>8} {'to next':>8} {'churn':>7} {'median days':>12}"]
    for row in stats["layers"]:
        days = "-" if row["median_days_in_layer"] is None else f"{row['median_days_in_layer']:.1f}"
        lines.append(
            f"{row['position']}. {row['name'][:41]:<41} {row['subscribers']:>7} {row['entered']:>8} "
            f"{pct(row['conversion_to_next']):>8} {pct(row['churn']['rate']):>7} {days:>12}"
        )
    if stats["moves_per_week"]:
        lines += ["", "moves per week (up / down)"]
        lines += [f"  {m['week']}  {m['up']:>6} / {m['down']}" for m in stats["moves_per_week"]]
    if stats["churn_per_month"]:
        lines += ["", "churn per month (layer: left of those in it, rate; how they left)"]
        for month in stats["churn_per_month"]:
            parts = [
                f"{p}: {c['churned']}/{c['in_layer']} ({pct(c['rate'])}; "
                + ", ".join(f"{c[name]} {name}" for name in LEFT_AS.values() if c[name])
                + ")"
                for p, c in month["layers"].items()
            ]
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
