"""Layer flow: how subscribers pass through the layers, counted from their layer history and
the events with which they left (unsubscribe, hard bounce, complaint).

A subscriber's changes become *stays*: a time in one layer and how it ended (moved up or down,
unsubscribed, bounced, complained, sunset). Entering counts however it happened: confirming,
an import, a promotion, a demotion, a move by an admin or a layer's removal, a revival.
``FlowTally`` adds up the stays of many subscribers, one subscriber at a time, into figures
per layer over a period (from a given time on, or all time):

* ``entered`` — subscribers whose stay in the layer began in the period;
* ``moved_up`` — those of them who left that stay for a higher layer, whenever that was, so
  ``conversion_to_next`` is ``moved_up / entered``;
* ``present`` — subscribers in the layer (and active) at some time in the period;
* ``churned`` — those who left the layer in the period by unsubscribe, bounce, complaint or
  sunset (``left`` counts them by how), so ``churn_rate`` is ``churned / present``;
* ``stay_s`` — how long stays lasted that ended in the period with a move.

Moves up and down are counted per week (Monday), and churn per month with the subscribers
present in each month. Which way a move went is fixed when it is made (the layers' positions
at the time), so removing or reordering layers later changes no figure about the past.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
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


@dataclass
class LayerFlow:
    """One layer's figures over a period (see the module docstring)."""

    entered: int = 0
    moved_up: int = 0
    present: int = 0
    churned: int = 0  # subscribers who left (one who left twice, or two ways, counts once)
    left: Counter[str] = field(default_factory=Counter)  # subscribers who left, by how
    stay_s: list[float] = field(default_factory=list)

    @property
    def conversion_to_next(self) -> float | None:
        return ratio(self.moved_up, self.entered)

    @property
    def churn_rate(self) -> float | None:
        return ratio(self.churned, self.present)

    @property
    def median_days(self) -> float | None:
        return round(statistics.median(self.stay_s) / 86400, 2) if self.stay_s else None


def month_index(at: dt.datetime) -> int:
    return at.year * 12 + at.month - 1


def month_name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


class FlowTally:
    """Figures per layer id from ``since`` on (None: from the start), as of ``now`` (the month
    stays still open reach), fed one subscriber's changes at a time, so memory holds the totals,
    not the history. Every count is of subscribers, not of stays."""

    def __init__(self, since: dt.datetime | None, now: dt.datetime) -> None:
        self.since, self.now = since, now
        self.layers: dict[int, LayerFlow] = defaultdict(LayerFlow)
        self.moves: dict[dt.date, Counter[str]] = defaultdict(Counter)  # week's Monday → up/down
        self.monthly: dict[int, dict[int, LayerFlow]] = defaultdict(lambda: defaultdict(LayerFlow))
        # Subscribers present per layer and month, as a difference array over month indexes.
        self._present_delta: dict[int, Counter[int]] = defaultdict(Counter)

    def _in_period(self, at: dt.datetime) -> bool:
        return self.since is None or at >= self.since

    def add(self, changes: Sequence[Change]) -> None:
        """One subscriber's changes, in time order."""
        for change in changes:
            if change.kind == "move" and change.up is not None and self._in_period(change.at):
                self.moves[week_start(change.at.date())]["up" if change.up else "down"] += 1
        entered: set[int] = set()
        moved_up: set[int] = set()
        present: set[int] = set()
        left: set[tuple[int, int, str]] = set()  # (month, layer, how)
        last_month: dict[int, int] = {}
        for stay in stays(changes):
            flow = self.layers[stay.layer_id]
            if self._in_period(stay.start):
                entered.add(stay.layer_id)
                if stay.ended_by == "up":
                    moved_up.add(stay.layer_id)
            if self.since is not None and stay.end is not None and stay.end < self.since:
                continue
            present.add(stay.layer_id)
            if stay.end is not None and self._in_period(stay.end):
                if stay.ended_by in MOVE_ENDS:
                    flow.stay_s.append((stay.end - stay.start).total_seconds())
                else:
                    assert stay.ended_by is not None
                    left.add((month_index(stay.end), stay.layer_id, stay.ended_by))
            first = month_index(max(stay.start, self.since) if self.since else stay.start)
            last = month_index(stay.end or max(self.now, stay.start))
            first = max(first, last_month.get(stay.layer_id, first - 1) + 1)  # counted once a month
            if first <= last:
                self._present_delta[stay.layer_id][first] += 1
                self._present_delta[stay.layer_id][last + 1] -= 1
                last_month[stay.layer_id] = last
        for layer_id in entered:
            self.layers[layer_id].entered += 1
        for layer_id in moved_up:
            self.layers[layer_id].moved_up += 1
        for layer_id in present:
            self.layers[layer_id].present += 1
        for layer_id, how in {(layer_id, how) for _, layer_id, how in left}:
            self.layers[layer_id].left[how] += 1
        for layer_id in {layer_id for _, layer_id, _ in left}:
            self.layers[layer_id].churned += 1
        for month, layer_id, how in left:
            self.monthly[month][layer_id].left[how] += 1
        for month, layer_id in {(month, layer_id) for month, layer_id, _ in left}:
            self.monthly[month][layer_id].churned += 1

    def add_present(self, layer_id: int, count: int) -> None:
        """``count`` subscribers who were in the layer the whole period and changed nothing in it
        (so their history need not be read)."""
        self.layers[layer_id].present += count
        first = month_index(self.since or self.now)
        self._present_delta[layer_id][first] += count
        self._present_delta[layer_id][month_index(self.now) + 1] -= count

    def present_in(self, layer_id: int, month: int) -> int:
        return sum(n for m, n in self._present_delta[layer_id].items() if m <= month)

    def churn_per_month(self) -> list[tuple[str, dict[int, LayerFlow]]]:
        """Months with churn, oldest first: per layer id, who left and how, and the subscribers
        present in the layer that month."""
        return [
            (
                month_name(month),
                {
                    layer_id: LayerFlow(present=self.present_in(layer_id, month), churned=flow.churned, left=flow.left)
                    for layer_id, flow in sorted(by_layer.items())
                },
            )
            for month, by_layer in sorted(self.monthly.items())
        ]
