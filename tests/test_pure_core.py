"""The pure core: durations, drip advancement, promotion rules, retry backoff."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.core.promotion import DEFAULT_RULE, EventFact, evaluate, validate_rule
from responder.core.retry import next_attempt
from responder.core.schedule import (
    StepPlan,
    advance,
    first_due,
    format_duration,
    imported_start,
    parse_duration,
)
from responder.errors import ValidationError

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("3d", 259200),
        ("1w", 604800),
        (" 0s ", 0),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "d", "-1d", "2 days", "1.5h", "3y"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (90, "90s"), (7200, "2h"), (172800, "2d")])
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


STEPS = [StepPlan(1, 0), StepPlan(2, 2 * 86400), StepPlan(3, 4 * 86400)]


def test_first_step_due_after_its_delay() -> None:
    assert first_due(STEPS, T0) == T0
    assert first_due([StepPlan(1, 3600)], T0) == T0 + dt.timedelta(hours=1)
    assert first_due([], T0) is None


def test_advance_walks_the_sequence() -> None:
    a = advance(STEPS, 1, T0)
    assert a is not None and (a.send_position, a.next_position) == (1, 2)
    assert a.next_due_at == T0 + dt.timedelta(days=2)
    b = advance(STEPS, 3, T0)
    assert b is not None and b.send_position == 3 and b.next_due_at is None
    assert advance(STEPS, 4, T0) is None


def test_advance_skips_gaps_left_by_edits() -> None:
    a = advance([StepPlan(1, 0), StepPlan(5, 60)], 2, T0)
    assert a is not None and a.send_position == 5 and a.next_due_at is None


def click(i: int, message: int, minutes: int, machine: bool = False) -> EventFact:
    return EventFact(i, "click", T0 + dt.timedelta(minutes=minutes), message, machine)


@pytest.mark.parametrize(
    ("events", "target"),
    [
        ([], None),
        ([click(1, 10, 1)], None),
        ([click(1, 10, 1), click(2, 10, 2)], None),  # two clicks in one mail
        ([click(1, 10, 1), click(2, 11, 2)], 2),
        ([click(1, 10, 1), click(2, 11, 2, machine=True)], None),  # scanners never promote
        ([click(1, 10, -5), click(2, 11, 2)], None),  # before entering the layer
        ([EventFact(1, "purchase", T0 + dt.timedelta(minutes=1))], 2),
        ([EventFact(1, "reply", T0 + dt.timedelta(minutes=1))], 2),
        ([EventFact(1, "reply", T0 + dt.timedelta(minutes=1), machine=True)], None),
        ([EventFact(1, "open", T0 + dt.timedelta(minutes=1))], None),
    ],
)
def test_default_rule(events: list[EventFact], target: int | None) -> None:
    decision = evaluate(
        DEFAULT_RULE, position=1, top_position=5, entered_at=T0, events=events, now=T0 + dt.timedelta(days=3)
    )
    assert decision.target_position == target
    if target:
        assert decision.reason and decision.event_ids


def test_top_layer_never_promotes() -> None:
    events = [EventFact(1, "purchase", T0 + dt.timedelta(minutes=1))]
    assert not evaluate(
        DEFAULT_RULE, position=5, top_position=5, entered_at=T0, events=events, now=T0 + dt.timedelta(days=3)
    ).moves


@pytest.mark.parametrize(
    "rule",
    [
        {"promote": []},
        {"promote": {"on_any": ["teleport"]}},
        {"promote": {"clicked_messages": 0}},
        {"promote": {"clicked_messages": "two"}},
    ],
)
def test_validate_rule_refuses(rule: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        validate_rule(rule)


def test_retry_backoff_grows_and_gives_up() -> None:
    first = next_attempt(1, T0, T0, jitter=0.5)
    second = next_attempt(2, T0, T0, jitter=0.5)
    assert first == T0 + dt.timedelta(minutes=5)
    assert second == T0 + dt.timedelta(minutes=10)
    assert next_attempt(30, T0, T0, jitter=0.5) == T0 + dt.timedelta(hours=4)
    assert next_attempt(3, T0 + dt.timedelta(days=5), T0) is None


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_retry_jitter_stays_within_a_quarter(jitter: float) -> None:
    when = next_attempt(1, T0, T0, jitter=jitter)
    assert when is not None
    assert dt.timedelta(minutes=3.75) <= when - T0 <= dt.timedelta(minutes=6.25)


def test_imported_start_chooses_steps_and_spreads_starts() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    steps = [StepPlan(2, 172800), StepPlan(1, 0), StepPlan(3, 345600)]
    assert imported_start(steps, "none", 0, 7, now) is None
    assert imported_start(steps, "next", 0, 7, now) == ([StepPlan(2, 172800), StepPlan(3, 345600)], now)
    assert imported_start(steps, "start", 0, 7, now) == (sorted(steps, key=lambda s: s.position), now)
    starts = [imported_start(steps, "start", 86400, key, now)[1] for key in range(1, 1001)]  # type: ignore[index]
    assert all(now <= at < now + dt.timedelta(days=1) for at in starts)
    hours = {at.hour for at in starts}
    assert len(hours) == 24  # consecutive ids spread over the whole day
    with pytest.raises(ValidationError, match="enroll must be one of"):
        imported_start(steps, "all", 0, 1, now)
