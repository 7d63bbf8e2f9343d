"""Layer flow: how subscribers pass through the layers, counted from their layer history and
the events with which they left (unsubscribe, hard bounce, complaint).

A subscriber's changes become *stays*: a time in one layer and how it ended (moved up or down,
unsubscribed, bounced, complained, sunset). Entering counts however it happened: confirming,
an import, a promotion, a demotion, a move by an admin or a layer's removal, a revival.

The figures are counts of stays, kept per day so that they can be added up once and read for
any period without reading anyone's history again (``funnel.rollup`` keeps them):

* ``fold`` turns one subscriber's changes into the day counts of what happened in a span of
  time: a stay begun (``entered``, on its first day), a stay ended and how (``ended:{how}``,
  on its last day), a stay that ended by a move up (``converted``, on its *first* day, so a
  period's conversion is about the stays begun in it), how long a stay ended by a move lasted
  (``stay:{seconds}``, rounded down by ``stay_bucket``), and moves up and down (``move:up``,
  ``move:down``, layer 0). Counting spans one after another gives what one count over their
  union gives, which is what lets a roll-up count each day once.
* ``assemble`` reads day counts into figures per layer over a period (from a day on, or all
  time): ``entered``; ``moved_up``, those of them that left for a higher layer, whenever, so
  ``conversion_to_next`` is ``moved_up / entered``; ``present``, stays in the layer at some
  time in the period (those open now, from the subscribers' own count, plus those that ended
  in the period); ``churned``, stays ended in the period by unsubscribe, bounce, complaint or
  sunset (``left`` by how), so ``churn_rate`` is ``churned / present``; and the median days of
  the stays that ended in the period with a move.

A subscriber who goes round twice (in a layer, out, back) is two stays. Moves up and down are
counted per week (Monday), and churn per month with the stays present in each month. Which way a
move went is fixed when it is made (the layers' positions at the time), so removing or
reordering layers later changes no figure about the past.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ENTRY_KINDS = frozenset({"enter", "move", "revive"})
CHURN_KINDS = ("unsubscribe", "bounce", "complaint", "sunset")
MOVE_ENDS = frozenset({"up", "down", "moved"})


@dataclass(frozen=True)
class Change:
    """One row of a subscriber's layer history, or an event with which they left."""

    at: dt.datetime
    kind: str  # enter | move | relocate | sunset | revive | unsubscribe | bounce | complaint
    layer_id: int | None = None  # the layer entered (enter, move, revive)
    up: bool | None = None  # a move: to a higher position than it left (None: not known)


@dataclass(frozen=True)
class Stay:
    layer_id: int
    start: dt.datetime
    end: dt.datetime | None = None  # None: still there
    ended_by: str | None = None  # up | down | moved | unsubscribe | bounce | complaint | sunset


def stays(changes: Iterable[Change]) -> list[Stay]:
    """One subscriber's stays, from their changes in time order.

    A ``relocate`` (carried along by a layer's removal while not active) starts no stay, and a
    leaving event while in no layer (a complaint after unsubscribing) ends none."""
    out: list[Stay] = []
    current: tuple[int, dt.datetime] | None = None
    for change in changes:
        if change.kind in ENTRY_KINDS and change.layer_id is not None:
            if current is not None:
                how = "moved" if change.kind != "move" or change.up is None else ("up" if change.up else "down")
                out.append(Stay(current[0], current[1], change.at, how))
            current = (change.layer_id, change.at)
        elif change.kind in CHURN_KINDS and current is not None:
            out.append(Stay(current[0], current[1], change.at, change.kind))
            current = None
    if current is not None:
        out.append(Stay(current[0], current[1]))
    return out


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def stay_bucket(seconds: float) -> int:
    """A stay's length as counted: to the minute under a day, the hour under 30 days, else the day."""
    whole = max(int(seconds), 0)
    step = 60 if whole < 86400 else 3600 if whole < 30 * 86400 else 86400
    return whole - whole % step


def median(histogram: Counter[int]) -> float | None:
    """The median of the values counted in ``histogram`` (value → how many)."""
    total = sum(histogram.values())
    if not total:
        return None
    wanted = {(total - 1) // 2, total // 2}
    found: list[int] = []
    seen = 0
    for value in sorted(histogram):
        count = histogram[value]
        found.extend(value for index in wanted if seen <= index < seen + count)
        seen += count
    return sum(found) / len(found)


DayKey = tuple[dt.date, int, str]  # day, layer id (0: none), metric


def fold(changes: Sequence[Change], start: dt.datetime | None, end: dt.datetime | None) -> Counter[DayKey]:
    """The day counts of one subscriber's changes (in time order) for what happened in
    [start, end) (None: unbounded)."""

    def inside(at: dt.datetime) -> bool:
        return (start is None or at >= start) and (end is None or at < end)

    counts: Counter[DayKey] = Counter()
    for change in changes:
        if change.kind == "move" and change.up is not None and inside(change.at):
            counts[change.at.date(), 0, "move:up" if change.up else "move:down"] += 1
    for stay in stays(changes):
        if inside(stay.start):
            counts[stay.start.date(), stay.layer_id, "entered"] += 1
        if stay.end is None or not inside(stay.end):
            continue
        counts[stay.end.date(), stay.layer_id, f"ended:{stay.ended_by}"] += 1
        if stay.ended_by == "up":
            counts[stay.start.date(), stay.layer_id, "converted"] += 1
        if stay.ended_by in MOVE_ENDS:
            counts[stay.end.date(), stay.layer_id, f"stay:{stay_bucket((stay.end - stay.start).total_seconds())}"] += 1
    return counts


@dataclass
class LayerFlow:
    """One layer's figures over a period (see the module docstring)."""

    entered: int = 0
    moved_up: int = 0
    present: int = 0
    churned: int = 0
    left: Counter[str] = field(default_factory=Counter)  # stays ended by how
    stays: Counter[int] = field(default_factory=Counter)  # stay_bucket seconds → stays ended by a move

    @property
    def conversion_to_next(self) -> float | None:
        return ratio(self.moved_up, self.entered)

    @property
    def churn_rate(self) -> float | None:
        return ratio(self.churned, self.present)

    @property
    def median_days(self) -> float | None:
        middle = median(self.stays)
        return None if middle is None else round(middle / 86400, 2)


def month_index(at: dt.date) -> int:
    return at.year * 12 + at.month - 1


def month_name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


@dataclass
class Flow:
    """The figures per layer id over a period, with what ``assemble`` read them from."""

    since: dt.date | None
    layers: dict[int, LayerFlow]
    by_day: dict[tuple[dt.date, int, str], int]  # every day count but stays' lengths
    open_now: Mapping[int, int]

    def moves(self, since: dt.date | None = None) -> dict[dt.date, Counter[str]]:
        """Moves up and down per week (its Monday) from the week of ``since`` (default: the period's)."""
        first = since if since is not None else self.since
        weeks: dict[dt.date, Counter[str]] = defaultdict(Counter)
        for (day, _, metric), count in self.by_day.items():
            if metric.startswith("move:") and (first is None or day >= week_start(first)):
                weeks[week_start(day)][metric.removeprefix("move:")] += count
        return dict(weeks)

    def churn_per_month(self) -> list[tuple[str, dict[int, LayerFlow]]]:
        """Months of the period with churn, oldest first: per layer id, the stays that ended
        and how, and the stays present in the layer that month."""
        entered_by: dict[int, Counter[int]] = defaultdict(Counter)  # layer → month → stays begun
        ended_by: dict[int, Counter[int]] = defaultdict(Counter)  # layer → month → stays ended
        ended_in: dict[int, Counter[int]] = defaultdict(Counter)  # the same, in the period only
        months: dict[int, dict[int, LayerFlow]] = defaultdict(dict)
        for (day, layer_id, metric), count in self.by_day.items():
            month, in_period = month_index(day), self.since is None or day >= self.since
            if metric == "entered":
                entered_by[layer_id][month] += count
            elif metric.startswith("ended:"):
                ended_by[layer_id][month] += count
                ended_in[layer_id][month] += count * in_period
                how = metric.removeprefix("ended:")
                if how in CHURN_KINDS and in_period:
                    flow = months[month].setdefault(layer_id, LayerFlow())
                    flow.left[how] += count
                    flow.churned += count
        out = []
        for month in sorted(months):
            by_layer = months[month]
            for layer_id, flow in by_layer.items():
                # Open at the month's end: open now, less the stays begun since, plus those ended since.
                later_in = sum(n for m, n in entered_by[layer_id].items() if m > month)
                later_out = sum(n for m, n in ended_by[layer_id].items() if m > month)
                open_then = self.open_now.get(layer_id, 0) - later_in + later_out
                flow.present = max(open_then + ended_in[layer_id][month], flow.churned)
            out.append((month_name(month), dict(sorted(by_layer.items()))))
        return out


def assemble(
    by_day: Mapping[DayKey, int],
    stays_ended: Iterable[tuple[int, int, int]],
    open_now: Mapping[int, int],
    since: dt.date | None,
) -> Flow:
    """Figures per layer from the day counts (``fold``'s, added up over everyone), the lengths
    of the stays ended by a move in the period (layer id, ``stay_bucket``, count), and the stays
    open now per layer (active subscribers in it, the one figure a day count cannot give)."""
    layers: dict[int, LayerFlow] = defaultdict(LayerFlow)
    for (day, layer_id, metric), count in by_day.items():
        if not layer_id or (since is not None and day < since):
            continue
        flow = layers[layer_id]
        if metric == "entered":
            flow.entered += count
        elif metric == "converted":
            flow.moved_up += count
        elif metric.startswith("ended:"):
            flow.present += count
            how = metric.removeprefix("ended:")
            if how in CHURN_KINDS:
                flow.left[how] += count
                flow.churned += count
    for layer_id, bucket, count in stays_ended:
        layers[layer_id].stays[bucket] += count
    for layer_id, count in open_now.items():
        layers[layer_id].present += count
    for flow in layers.values():  # subscribers erased since left day counts the present no longer holds
        flow.present = max(flow.present, flow.entered, flow.churned)
    return Flow(since, dict(layers), {key: n for key, n in by_day.items() if not key[2].startswith("stay:")}, open_now)
