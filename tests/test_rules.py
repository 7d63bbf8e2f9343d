"""The pure rules: promotion, demotion, sunset, hysteresis, preferred, windows, conditions (caps and
collisions: ``test_pacing.py``)."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.core.pacing import (
    condition_holds,
    in_window,
    validate_condition,
    validate_window,
    zone,
)
from responder.core.promotion import (
    DEFAULT_RULE,
    EventFact,
    earns_preferred,
    evaluate,
    validate_rule,
)
from responder.errors import ValidationError
from responder.funnel.webhooks import retry_at, sign, verify

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)  # a Monday


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def ev(id: int, type: str, when: dt.datetime, message: int | None = None, machine: bool = False) -> EventFact:
    return EventFact(id, type, when, message, machine)


CLICKS_RULE = {"promote": {"clicks": {"count": 3, "within": "30d", "after_step": 2}}}


@pytest.mark.parametrize(
    "rule, position, events, now, steps, expect",
    [
        (DEFAULT_RULE, 1, [ev(1, "purchase", day(1))], day(1), {}, 2),
        (DEFAULT_RULE, 1, [ev(1, "reply", day(1))], day(1), {}, 2),
        (DEFAULT_RULE, 1, [ev(1, "purchase", day(1), machine=True)], day(1), {}, None),
        (DEFAULT_RULE, 1, [ev(1, "click", day(1), 10), ev(2, "click", day(2), 10)], day(2), {}, None),
        (DEFAULT_RULE, 1, [ev(1, "click", day(1), 10), ev(2, "click", day(2), 11)], day(2), {}, 2),
        (DEFAULT_RULE, 1, [ev(1, "click", day(1), 10, True), ev(2, "click", day(2), 11, True)], day(2), {}, None),
        # 3 human clicks within 30 days after step 2
        (CLICKS_RULE, 1, [ev(i, "click", day(i), i) for i in (5, 6, 7)], day(7), {2: day(4)}, 2),
        (CLICKS_RULE, 1, [ev(i, "click", day(i), i) for i in (5, 6, 7)], day(7), {2: day(5.5)}, None),
        (CLICKS_RULE, 1, [ev(i, "click", day(i), i) for i in (5, 6, 7)], day(7), {}, None),
        (CLICKS_RULE, 1, [ev(i, "click", day(i), i) for i in (1, 2, 40)], day(40), {2: day(0)}, None),
        # demotion after 90 silent days, not before, never below layer 1
        (DEFAULT_RULE, 3, [], day(90), {}, 2),
        (DEFAULT_RULE, 3, [], day(89), {}, None),
        (DEFAULT_RULE, 1, [], day(90), {}, None),
    ],
)
def test_evaluate(rule, position, events, now, steps, expect) -> None:  # type: ignore[no-untyped-def]
    last = max((e.created_at for e in events if not e.machine), default=None)
    decision = evaluate(
        rule,
        position=position,
        top_position=5,
        entered_at=T0,
        events=events,
        now=now,
        step_sent_at=steps,
        last_human_at=last,
    )
    assert decision.target_position == expect
    assert not decision.sunset
    if expect is not None:
        assert decision.reason
        assert set(decision.event_ids) <= {e.id for e in events if not e.machine}


def test_sunset_beats_demotion_and_stops_mail() -> None:
    decision = evaluate(DEFAULT_RULE, position=3, top_position=5, entered_at=T0, events=[], now=day(180))
    assert decision.sunset and decision.target_position is None
    assert not evaluate(DEFAULT_RULE, position=1, top_position=5, entered_at=T0, events=[], now=day(89)).moves


def test_recent_human_event_keeps_the_subscriber() -> None:
    decision = evaluate(
        DEFAULT_RULE, position=3, top_position=5, entered_at=T0, events=[], now=day(100), last_human_at=day(50)
    )
    assert not decision.moves


@pytest.mark.parametrize("now, moves", [(day(6), False), (day(7), True)])
def test_hysteresis_holds_every_move_until_the_minimum_stay(now, moves) -> None:  # type: ignore[no-untyped-def]
    rule = {**DEFAULT_RULE, "min_stay": "7d"}
    decision = evaluate(rule, position=2, top_position=5, entered_at=T0, events=[ev(1, "purchase", day(1))], now=now)
    assert decision.moves is moves


def test_top_layer_is_never_promoted() -> None:
    assert not evaluate(
        DEFAULT_RULE, position=5, top_position=5, entered_at=T0, events=[ev(1, "purchase", day(1))], now=day(1)
    ).moves


def test_events_before_entering_the_layer_do_not_count() -> None:
    assert not evaluate(
        DEFAULT_RULE, position=2, top_position=5, entered_at=day(2), events=[ev(1, "purchase", day(1))], now=day(3)
    ).moves


@pytest.mark.parametrize(
    "rule, field",
    [
        ({"promote": {"on_any": ["sent"]}}, "on_any"),
        ({"promote": {"clicked_messages": 0}}, "clicked_messages"),
        ({"promote": {"clicks": {"within": "3d"}}}, "clicks.count"),
        ({"demote": {"inactive_for": "soon"}}, "demote.inactive_for"),
        ({"min_stay": 7}, "min_stay"),
        ({"caps": {"collision": "both"}}, "caps.collision"),
        ({"preferred": {"purchase_value": -1}}, "preferred.purchase_value"),
        ({"promotion": {}}, "promotion"),
        ([], "JSON object"),
    ],
)
def test_bad_rules_are_refused_with_the_part_named(rule, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as err:
        validate_rule(rule)
    assert field in err.value.message


def test_documented_example_rule_validates() -> None:
    rule = {
        "promote": {"on_any": ["purchase", "reply"], "clicks": {"count": 3, "within": "30d", "after_step": 2}},
        "demote": {"inactive_for": "90d"},
        "sunset": {"inactive_for": "180d"},
        "min_stay": "7d",
        "preferred": {"purchase_value": 500},
        "caps": {"max_per_week": 3, "min_gap": "1d", "collision": "step_waits"},
    }
    assert validate_rule(rule) == rule
    assert validate_rule(DEFAULT_RULE) == DEFAULT_RULE


@pytest.mark.parametrize("total, clicks, expect", [(499, 0, False), (500, 0, True), (0, 10, True), (0, 9, False)])
def test_preferred(total, clicks, expect) -> None:  # type: ignore[no-untyped-def]
    rule = {"preferred": {"purchase_value": 500, "human_clicks": 10}}
    assert earns_preferred(rule, purchase_total=total, human_clicks=clicks) is expect
    assert not earns_preferred({}, purchase_total=10**6, human_clicks=10**6)


WINDOW = {"days": "mon-fri", "start": "09:00", "end": "17:00"}


@pytest.mark.parametrize(
    "now, tz, expect",
    [
        (dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC), "UTC", dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)),
        (dt.datetime(2026, 1, 5, 18, 0, tzinfo=dt.UTC), "UTC", dt.datetime(2026, 1, 6, 9, 0, tzinfo=dt.UTC)),
        (
            dt.datetime(2026, 1, 9, 17, 30, tzinfo=dt.UTC),
            "UTC",  # Friday evening → Monday
            dt.datetime(2026, 1, 12, 9, 0, tzinfo=dt.UTC),
        ),
        (
            dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC),
            "America/New_York",  # 05:00 there
            dt.datetime(2026, 1, 5, 14, 0, tzinfo=dt.UTC),
        ),
        (
            dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC),
            "Not/AZone",  # unknown → UTC
            dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC),
        ),
    ],
)
def test_send_window(now, tz, expect) -> None:  # type: ignore[no-untyped-def]
    assert in_window(WINDOW, now, zone(tz)) == expect


@pytest.mark.parametrize(
    "window", [{"days": "someday"}, {"start": "9am"}, {"start": "17:00", "end": "09:00"}, {"hours": 3}, "mon"]
)
def test_bad_windows_are_refused(window) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        validate_window(window)


@pytest.mark.parametrize(
    "condition, purchased, tags, send",
    [
        (None, True, [], True),
        ({"skip_if_purchased": True}, True, [], False),
        ({"skip_if_purchased": True}, False, [], True),
        ({"require_tags": ["preferred"]}, False, ["preferred"], True),
        ({"require_tags": ["preferred"]}, False, [], False),
        ({"skip_if_tags": ["vip"]}, False, ["vip"], False),
    ],
)
def test_conditions(condition, purchased, tags, send) -> None:  # type: ignore[no-untyped-def]
    assert validate_condition(condition) == condition
    assert condition_holds(condition, purchased=purchased, tags=tags) is send


def test_webhook_signature_and_backoff() -> None:
    signature = sign("s3cret", 1767603600, b'{"a":1}')
    assert signature.startswith("sha256=") and len(signature) == 71
    assert verify("s3cret", 1767603600, b'{"a":1}', signature)
    assert not verify("s3cret", 1767603601, b'{"a":1}', signature)
    assert not verify("other", 1767603600, b'{"a":1}', signature)
    delays = [(retry_at(n, T0) - T0).total_seconds() for n in range(1, 8)]  # type: ignore[operator]
    assert delays == [30, 60, 120, 240, 480, 960, 1920]
    assert retry_at(8, T0) is None
