"""The dashboard's figures: subscribers per layer, weekly moves up and down, conversion to the
next layer and churn per layer, human versus machine opens and clicks and the reasons of their
verdicts, complaint rate with its alarm.

The arithmetic is pure (``weekly_moves``, ``rate``, ``complaint_alarm``, and ``core.flow`` for
conversion and churn); ``dashboard_stats`` reads its inputs with a few grouped queries and the
layer flow's day counts (``flow.layer_flow``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.flow import CHURN_KINDS, LayerFlow, week_start
from ..core.machine import HUMAN, HUMAN_REASONS, REASONS
from ..models import Layer, Message, Sequence, Step
from . import rollup
from .flow import layer_flow, open_stays

WEEKS = 8
WINDOW_DAYS = 30
COMPLAINT_ALARM_RATE = 0.003  # mailbox providers start filtering above 0.3 %


@dataclass(frozen=True)
class LayerFigures:
    """One layer over the window: who entered it, the share of them who moved up since, and
    who left it (unsubscribed, bounced, complained, sunset) out of everyone in it."""

    position: int
    name: str
    label: str
    subscribers: int
    churned: int
    churn_rate: float
    entered: int = 0
    conversion_to_next: float | None = None
    left: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WeekMoves:
    week_start: dt.date
    up: int
    down: int


@dataclass(frozen=True)
class Engagement:
    human: int = 0
    machine: int = 0


@dataclass(frozen=True)
class ReasonCount:
    """Opens and clicks whose verdict had this reason (``core.machine``)."""

    reason: str
    machine: bool
    meaning: str
    opens: int = 0
    clicks: int = 0


@dataclass(frozen=True)
class Stats:
    layers: list[LayerFigures]
    moves: list[WeekMoves]
    opens: Engagement
    clicks: Engagement
    reasons: list[ReasonCount]  # machine reasons first, most events first
    sent: int
    complaints: int
    complaint_rate: float
    complaint_alarm: bool
    bounces: int = 0  # hard: the address refused, suppressed
    soft_bounces: int = 0  # full mailboxes, policy refusals, …: retried
    bounce_rate: float = 0.0
    window_days: int = WINDOW_DAYS
    alarm_threshold: float = field(default=COMPLAINT_ALARM_RATE)

    def json(self) -> dict[str, Any]:
        body = asdict(self)
        body["moves"] = [{"week_start": m.week_start.isoformat(), "up": m.up, "down": m.down} for m in self.moves]
        return body


def weekly_moves(moves: Mapping[dt.date, Mapping[str, int]], now: dt.datetime, weeks: int = WEEKS) -> list[WeekMoves]:
    """Moves up and down per week (its Monday: ``Flow.moves``) → each of the last ``weeks``
    weeks, oldest first, those without a move too."""
    current = week_start(now.date())
    starts = [current - dt.timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
    empty: Mapping[str, int] = {}
    return [
        WeekMoves(start, moves.get(start, empty).get("up", 0), moves.get(start, empty).get("down", 0))
        for start in starts
    ]


def rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def complaint_alarm(complaints: int, sent: int) -> bool:
    return rate(complaints, sent) > COMPLAINT_ALARM_RATE


async def dashboard_stats(session: AsyncSession, now: dt.datetime) -> Stats:
    since = now - dt.timedelta(days=WINDOW_DAYS)
    layers = list(
        (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
    )
    active = await open_stays(session)
    # Churn counts the stays that ended in the window, in the layer they were in, out of all
    # stays in that layer at some time in the window.
    weeks_from = week_start(now.date()) - dt.timedelta(weeks=WEEKS - 1)
    flow = await layer_flow(
        session, now, since, open_now=active, read_from=dt.datetime.combine(weeks_from, dt.time(), tzinfo=dt.UTC)
    )
    figures = []
    for layer in layers:
        counts = flow.layers.get(layer.id, LayerFlow())
        figures.append(
            LayerFigures(
                layer.position,
                layer.name,
                layer.label,
                active.get(layer.id, 0),
                counts.churned,
                rate(counts.churned, counts.present),
                counts.entered,
                counts.conversion_to_next if layer.position < len(layers) else None,
                {kind: counts.left.get(kind, 0) for kind in CHURN_KINDS},
            )
        )
    # Opens, clicks, mail and complaints from the start of the window's first day: the daily
    # roll-up and the events since it (``funnel.rollup``), never a scan of the window.
    by_type: dict[tuple[str, bool], int] = {}
    by_reason: dict[tuple[str, bool], dict[str, int]] = {}
    bounced: dict[bool, int] = {}
    for (_, _, _, metric), count in (await rollup.figures(session, "all", since=since)).items():
        kind, _, rest = metric.partition(":")
        if kind == "bounce":
            bounced[rest == "hard"] = bounced.get(rest == "hard", 0) + count
            continue
        type_, flag, verdict = rest.split(":", 2)
        machine = flag == "1"
        by_type[type_, machine] = by_type.get((type_, machine), 0) + count
        if type_ in ("open", "click"):
            reason = verdict or ("unknown" if machine else HUMAN)  # recorded without a verdict
            per_type = by_reason.setdefault((reason, machine), {})
            per_type[type_] = per_type.get(type_, 0) + count
    sent = by_type.get(("sent", False), 0) + by_type.get(("sent", True), 0)
    complaints = by_type.get(("complaint", False), 0) + by_type.get(("complaint", True), 0)
    return Stats(
        layers=figures,
        moves=weekly_moves(flow.moves(weeks_from), now),
        opens=Engagement(by_type.get(("open", False), 0), by_type.get(("open", True), 0)),
        clicks=Engagement(by_type.get(("click", False), 0), by_type.get(("click", True), 0)),
        reasons=reason_counts(by_reason),
        sent=sent,
        complaints=complaints,
        complaint_rate=rate(complaints, sent),
        complaint_alarm=complaint_alarm(complaints, sent),
        bounces=bounced.get(True, 0),
        soft_bounces=sum(count for is_hard, count in bounced.items() if not is_hard),
        bounce_rate=rate(bounced.get(True, 0), sent),
    )


async def dashboard_page_figures(session: AsyncSession, now: dt.datetime) -> tuple[Stats, list[StepLeaving]]:
    """The dashboard page's list-sized figures, built together (``funnel.apart``)."""
    return await dashboard_stats(session, now), await unsubscribes_per_step(session)


def reason_counts(by_reason: dict[tuple[str, bool], dict[str, int]]) -> list[ReasonCount]:
    """(reason, machine) → {type: count} as rows: machine reasons first, most events first."""
    rows = [
        ReasonCount(
            reason,
            machine,
            (REASONS if machine else HUMAN_REASONS).get(reason, "recorded without a reason"),
            counts.get("open", 0),
            counts.get("click", 0),
        )
        for (reason, machine), counts in by_reason.items()
    ]
    return sorted(rows, key=lambda row: (not row.machine, -(row.opens + row.clicks), row.reason))


@dataclass(frozen=True)
class StepFigures:
    sent: int = 0
    opened: int = 0  # messages with at least one human open
    clicked: int = 0  # messages with at least one human click
    unsubscribed: int = 0  # unsubscribes that came from this step's mails

    @property
    def open_rate(self) -> float:
        return rate(self.opened, self.sent)

    @property
    def click_rate(self) -> float:
        return rate(self.clicked, self.sent)

    @property
    def unsubscribe_rate(self) -> float:
        return rate(self.unsubscribed, self.sent)


@dataclass(frozen=True)
class StepLeaving:
    label: str  # "layer2-how-to · layer 2 step 3"
    figures: StepFigures


async def unsubscribes_per_step(session: AsyncSession, most: int = 10) -> list[StepLeaving]:
    """The steps people leave from: unsubscribes per step of the layers' and triggered
    sequences, the highest rate first (steps that sent nothing are left out)."""
    figures = await step_figures(session)
    rows = (
        await session.execute(
            select(Step.id, Step.position, Step.template_name, Sequence.name, Sequence.trigger, Layer.position)
            .join(Sequence, Sequence.id == Step.sequence_id)
            .outerjoin(Layer, Layer.id == Sequence.layer_id)
            .where(Step.id.in_(list(figures)))
        )
    ).all()
    leaving = [
        StepLeaving(
            f"{template} · {f'layer {layer}' if trigger == 'layer' and layer is not None else sequence}"
            f" step {position}",
            figures[step_id],
        )
        for step_id, position, template, sequence, trigger, layer in rows
    ]
    leaving.sort(key=lambda s: (-s.figures.unsubscribe_rate, -s.figures.unsubscribed, s.label))
    return leaving[:most]


async def step_figures(session: AsyncSession) -> dict[int, StepFigures]:
    """Per sequence step: messages sent (the outbox's, and those pruned since), and how many of
    them a person opened or clicked or unsubscribed from (``funnel.rollup``)."""
    sent: dict[int, int] = {}
    for step_id, count in await session.execute(
        select(Message.step_id, func.count())
        .where(Message.step_id.is_not(None), Message.state == "sent")
        .group_by(Message.step_id)
    ):
        if step_id is not None:
            sent[step_id] = count
    engaged: dict[tuple[int, str], int] = {}
    for (_, step_id, _, metric), count in (await rollup.figures(session, "step")).items():
        kind, _, what = metric.partition(":")
        if kind == "state" and what == "sent":
            sent[step_id] = sent.get(step_id, 0) + count
        elif kind == "mails":
            engaged[step_id, what] = count
    return {
        step_id: StepFigures(
            count,
            engaged.get((step_id, "open"), 0),
            engaged.get((step_id, "click"), 0),
            engaged.get((step_id, "unsubscribe"), 0),
        )
        for step_id, count in sent.items()
    }
