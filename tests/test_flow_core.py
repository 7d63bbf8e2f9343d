"""The pure layer-flow arithmetic (``core.flow``) and the reasons written for silence and
revival (``core.promotion``)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from responder.core.flow import Change, DayKey, Flow, LayerFlow, Stay, assemble, fold, median, stay_bucket, stays
from responder.core.promotion import evaluate, revival_reason, silence_reason, spoken_duration

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)  # a Monday


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def test_stays_follow_entries_moves_sunsets_and_departures() -> None:
    changes = [
        Change(day(0), "enter", 1),
        Change(day(2), "move", 2, up=True),
        Change(day(5), "move", 1, up=False),
        Change(day(9), "sunset"),
        Change(day(12), "relocate", 3),  # carried off a removed layer while sunset: no stay
        Change(day(20), "revive", 3),
        Change(day(25), "unsubscribe"),
        Change(day(26), "complaint"),  # already out: ends nothing
    ]
    assert stays(changes) == [
        Stay(1, day(0), day(2), "up"),
        Stay(2, day(2), day(5), "down"),
        Stay(1, day(5), day(9), "sunset"),
        Stay(3, day(20), day(25), "unsubscribe"),
    ]
    # A move whose positions are unknown ends the stay without a direction; an open stay stays open.
    assert stays([Change(day(0), "enter", 1), Change(day(1), "move", 2)]) == [
        Stay(1, day(0), day(1), "moved"),
        Stay(2, day(1)),
    ]


def figures(histories: list[list[Change]], since: dt.datetime | None, more_open: dict[int, int] | None = None) -> Flow:
    """The figures as a report reads them: everyone's day counts, the stays open now."""
    counts: Counter[DayKey] = Counter()
    open_now: Counter[int] = Counter(more_open or {})
    for changes in histories:
        counts.update(fold(changes, None, None))
        open_now.update(stay.layer_id for stay in stays(changes) if stay.end is None)
    since_day = since.date() if since is not None else None
    lengths = [
        (layer_id, int(metric.removeprefix("stay:")), n)
        for (at, layer_id, metric), n in counts.items()
        if metric.startswith("stay:") and (since_day is None or at >= since_day)
    ]
    return assemble(counts, lengths, open_now, since_day)


def test_conversion_counts_every_way_in_and_only_moves_up() -> None:
    flow = figures(
        [
            [Change(day(0), "enter", 3), Change(day(3), "move", 4, up=True)],  # imported into 3, up
            [Change(day(0), "enter", 3)],  # imported into 3, stays
            [Change(day(0), "enter", 2), Change(day(1), "move", 3, up=True), Change(day(4), "move", 2, up=False)],
            # In and out of layer 3 twice, up the second time: two stays, one of them converted.
            [
                Change(day(0), "enter", 3),
                Change(day(1), "move", 2, up=False),
                Change(day(2), "move", 3, up=True),
                Change(day(6), "move", 4, up=True),
            ],
        ],
        None,
    )
    layer3 = flow.layers[3]
    assert (layer3.entered, layer3.moved_up, layer3.conversion_to_next) == (5, 2, 0.4)
    assert (flow.layers[2].entered, flow.layers[2].moved_up) == (3, 2)  # both of 2's stays before a move up
    assert flow.layers[4].conversion_to_next == 0.0
    assert LayerFlow().conversion_to_next is None  # nobody entered
    assert layer3.stays == {3 * 86400: 2, 86400: 1, 4 * 86400: 1}
    assert layer3.median_days == 3.0
    assert flow.moves() == {dt.date(2026, 1, 5): {"up": 4, "down": 2}}


def test_a_period_counts_entries_and_departures_in_it_and_everyone_present() -> None:
    flow = figures(
        [
            [Change(day(0), "enter", 1), Change(day(12), "move", 2, up=True)],  # entered before
            [Change(day(11), "enter", 1), Change(day(20), "bounce")],
            [Change(day(1), "enter", 1), Change(day(5), "unsubscribe")],  # gone before the period
            [Change(day(2), "enter", 1), Change(day(30), "sunset")],
        ],
        day(10),
        {1: 5},  # five more who sat in layer 1 all along
    )
    layer1 = flow.layers[1]
    assert (layer1.entered, layer1.moved_up) == (1, 0)
    assert layer1.present == 3 + 5
    assert dict(layer1.left) == {"bounce": 1, "sunset": 1}
    assert (layer1.churned, layer1.churn_rate) == (2, 0.25)
    assert flow.layers[2].entered == 1
    [(january, by_layer)] = [m for m in flow.churn_per_month() if m[0] == "2026-01"]
    assert january == "2026-01" and by_layer[1].churned == 1 and by_layer[1].present == 3 + 5
    [(february, by_layer)] = [m for m in flow.churn_per_month() if m[0] == "2026-02"]
    assert by_layer[1].left == {"sunset": 1} and by_layer[1].present == 1 + 5
    assert [month for month, _ in flow.churn_per_month()] == [
        "2026-01",
        "2026-02",
    ]  # the unsubscribe of 10 January is before the period


def test_stay_lengths_are_counted_to_the_minute_hour_or_day_and_their_median_is_exact() -> None:
    assert [stay_bucket(s) for s in (59.9, 3599, 86399, 86400 + 3599, 40 * 86400 + 7)] == [
        0,
        3540,
        86340,
        86400,
        40 * 86400,
    ]
    assert median(Counter()) is None
    assert median(Counter({7: 1})) == 7
    assert median(Counter({1: 1, 3: 2, 4: 1})) == 3  # 1 3 3 4
    assert median(Counter({1: 2, 5: 2})) == 3  # 1 1 5 5: between the middle two


KINDS = ["enter", "move", "relocate", "sunset", "revive", "unsubscribe", "bounce", "complaint"]
HISTORIES = st.lists(
    st.lists(
        st.tuples(st.integers(0, 90), st.sampled_from(KINDS), st.integers(1, 5), st.none() | st.booleans()),
        max_size=12,
    ),
    max_size=20,
)


def _changes(rows: list[tuple[int, str, int, bool | None]]) -> list[Change]:
    return [Change(day(d), kind, layer, up) for d, kind, layer, up in sorted(rows, key=lambda r: r[0])]


@given(HISTORIES, st.none() | st.integers(0, 90))
def test_figures_stay_within_bounds(histories, since_day) -> None:  # type: ignore[no-untyped-def]
    flow = figures([_changes(rows) for rows in histories], None if since_day is None else day(since_day))
    for layer in flow.layers.values():
        assert 0 <= layer.moved_up <= layer.entered <= layer.present
        assert sum(layer.left.values()) == layer.churned <= layer.present
        assert layer.conversion_to_next is None or 0 <= layer.conversion_to_next <= 1
    for _, by_layer in flow.churn_per_month():
        for layer in by_layer.values():
            assert 0 < layer.churned <= layer.present


@given(HISTORIES, st.lists(st.floats(-1, 92), max_size=4))
def test_counting_span_after_span_counts_what_one_count_does(histories, cuts) -> None:  # type: ignore[no-untyped-def]
    """What lets the roll-up count each span once and a report add the spans since."""
    bounds = [None, *(day(c) for c in sorted(cuts)), None]
    for rows in histories:
        changes = _changes(rows)
        pieces: Counter[DayKey] = Counter()
        for start, end in zip(bounds, bounds[1:], strict=False):
            pieces.update(fold(changes, start, end))
        assert pieces == fold(changes, None, None)


@pytest.mark.parametrize(
    ("seconds", "counted_in", "words"),
    [
        (91 * 86400 + 5 * 3600, 90 * 86400, "91 days"),
        (86400, 86400, "1 day"),
        (40 * 3600, 36 * 3600, "40 hours"),
        (95.7, 90, "95 seconds"),
        (150, 120, "2 minutes"),
        (13 * 7 * 86400, 7 * 86400, "91 days"),  # a rule in weeks still reads in days
        (200 * 86400 + 10, None, "200 days"),
        (59, None, "59 seconds"),
        (3 * 3600 + 59, None, "3 hours"),
        (0, None, "0 seconds"),
    ],
)
def test_spoken_durations(seconds: float, counted_in: int | None, words: str) -> None:
    assert spoken_duration(seconds, counted_in) == words


def test_silence_and_revival_reasons_are_exact_never_zero_days() -> None:
    assert silence_reason("sunset", 91 * 86400, 90 * 86400) == "sunset: no human event for 91 days"
    assert silence_reason("sunset", 100, 90) == "sunset: no human event for 100 seconds"
    assert revival_reason("click", 200 * 86400) == "revived: click after no human event for 200 days"
    # A short rule (as tests and trials use) reads in its own unit, not "0 days".
    decision = evaluate(
        {"sunset": {"inactive_for": "90s"}, "demote": {"inactive_for": "60s"}},
        position=2,
        top_position=5,
        entered_at=T0,
        events=[],
        now=T0 + dt.timedelta(seconds=100),
    )
    assert decision.sunset and decision.reason == "sunset: no human event for 100 seconds"
    decision = evaluate(
        {"demote": {"inactive_for": "90d"}},
        position=2,
        top_position=5,
        entered_at=T0,
        events=[],
        now=day(91.5),
    )
    assert decision.target_position == 1 and decision.reason == "demoted: no human event for 91 days"
