"""Caps and collisions (``core.pacing.plan``), pure: explicit cases for both collision modes,
then properties over any sent history and waiting mail (the caps and gaps never broken, every
mail at the first moment it fits, inside its send window), and over any run of requests
arriving in time (every mail goes exactly once, and none waits for mail that came due later).

The properties check ``plan`` against a second, deliberately plain reading of the rules: a
run of ``max_per_week + 1`` mails in time order spans at least a week, any two mails are
``min_gap`` apart (a step and a newsletter at least a day), and every time is on an hour grid
so an hour-by-hour search finds the first moment that fits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.core.pacing import Held, Sent, plan
from responder.core.schedule import parse_duration

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)  # a Monday
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
CAPS = {"max_per_week": 2, "min_gap": "1d"}
WINDOW = {"days": "mon-fri", "start": "09:00", "end": "17:00"}
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def step(at: dt.datetime) -> Sent:
    return Sent(at, "step")


def news(at: dt.datetime) -> Sent:
    return Sent(at, "newsletter")


NW = {"collision": "newsletter_waits"}
CAPS_3 = {"max_per_week": 3, "min_gap": "1d"}


@pytest.mark.parametrize(
    ("sent", "held", "caps", "expected"),
    [
        # The caps: min_gap after the last mail; max_per_week until the oldest of the week is 7 days old.
        ([], [Held("step", day(0))], CAPS, [day(0)]),
        ([step(day(-0.5))], [Held("step", day(0))], CAPS, [day(0.5)]),
        ([step(day(-6)), step(day(-3))], [Held("step", day(0))], CAPS, [day(1)]),
        ([step(day(-6)), step(day(-3))], [Held("step", day(0))], {"max_per_week": 3}, [day(0)]),
        ([step(day(-7))], [Held("step", day(0))], {"max_per_week": 1}, [day(0)]),  # 7 days apart: two weeks
        # The caps bind newsletters as they bind steps, in both modes (a newsletter was let
        # through under step_waits: five mails in a day in a 3-a-week layer).
        ([step(day(-6)), step(day(-3))], [Held("newsletter", day(0))], CAPS, [day(1)]),
        ([step(day(-6)), step(day(-3))], [Held("newsletter", day(0))], {**CAPS, **NW}, [day(1)]),
        ([news(day(-0.5))], [Held("newsletter", day(0))], CAPS, [day(0.5)]),
        # A mail that went is never moved: the one due within a day after it waits, either mode.
        ([news(day(-0.25))], [Held("step", day(0))], {}, [day(0.75)]),
        ([step(day(-0.25))], [Held("newsletter", day(0))], {}, [day(0.75)]),
        ([news(day(-0.25))], [Held("step", day(0))], NW, [day(0.75)]),
        ([step(day(-0.25))], [Held("newsletter", day(0))], NW, [day(0.75)]),
        # A retry bound to go later holds a new mail too.
        ([news(day(0.5))], [Held("step", day(0))], {}, [day(1.5)]),
        # Both due at once: step_waits sends the newsletter, the step waits; newsletter_waits the reverse.
        ([], [Held("step", day(0)), Held("newsletter", day(0))], {}, [day(1), day(0)]),
        ([], [Held("step", day(0)), Held("newsletter", day(0))], NW, [day(0), day(1)]),
        ([], [Held("step", day(0)), Held("newsletter", day(0))], {"min_gap": "2d"}, [day(2), day(0)]),
        ([], [Held("step", day(0)), Held("newsletter", day(0))], {"min_gap": "2d", **NW}, [day(0), day(2)]),
        # Due within a day of each other: the mode decides even when the one that goes is due later.
        ([], [Held("step", day(0)), Held("newsletter", day(0.4))], {}, [day(1.4), day(0.4)]),
        ([], [Held("newsletter", day(0)), Held("step", day(0.4))], NW, [day(1.4), day(0.4)]),
        # More than a day apart: the first due goes first, the other waits for the caps.
        ([], [Held("newsletter", day(0)), Held("step", day(1.5))], {"min_gap": "2d", **NW}, [day(0), day(2)]),
        ([], [Held("step", day(0)), Held("newsletter", day(1.5))], {"min_gap": "2d"}, [day(0), day(2)]),
        # A step held (by max_per_week) since two days ago is not overtaken by a newsletter due now.
        (
            [step(day(-6)), step(day(-5))],
            [Held("step", day(-2)), Held("newsletter", day(0))],
            CAPS,
            [day(1), day(2)],
        ),
        # Several newsletters: no gap between two of a kind unless min_gap says so.
        ([], [Held("newsletter", day(0)), Held("newsletter", day(0))], {}, [day(0), day(0)]),
        ([], [Held("newsletter", day(0)), Held("newsletter", day(0))], CAPS, [day(0), day(1)]),
        # Send window: a step due on Friday evening goes on Monday at 09:00; a day after a
        # newsletter sent on Monday at 08:00 is Tuesday 08:00, so Tuesday 09:00.
        ([], [Held("step", day(4.375), WINDOW)], {}, [day(7)]),
        ([news(day(7) - HOUR)], [Held("step", day(4.375), WINDOW)], {}, [day(8)]),
        # The window's first opening that fits the caps, not the first opening.
        ([step(day(0))], [Held("step", day(0), WINDOW)], {"max_per_week": 1}, [day(7)]),
        ([step(day(-1) + 4 * HOUR)], [Held("step", day(0), WINDOW)], {"min_gap": "1d"}, [day(0) + 4 * HOUR]),
    ],
)
def test_plan(sent: list[Sent], held: list[Held], caps: dict[str, Any], expected: list[dt.datetime]) -> None:
    assert plan(sent, held, day(0), caps) == expected


@pytest.mark.parametrize(
    ("caps", "expected"), [(CAPS_3, [day(8) + HOUR, day(7)]), ({**CAPS_3, **NW}, [day(7), day(8) + HOUR])]
)
def test_the_example_of_the_docs(caps: dict[str, Any], expected: list[dt.datetime]) -> None:
    """docs/rules.md: mails on Monday 09:00, Tuesday 10:00 and Thursday 09:00; a step and a
    newsletter due on Friday 09:00."""
    sent = [step(day(0)), news(day(1) + HOUR), step(day(3))]
    assert plan(sent, [Held("step", day(4)), Held("newsletter", day(4))], day(4), caps) == expected


def test_a_stream_of_newsletters_never_starves_a_step() -> None:
    """One mail a week, a newsletter every two days for ten weeks, a step due on day 0.5: the
    step goes in the second week, not after every newsletter."""
    requests = [Held("newsletter", day(2 * i)) for i in range(35)] + [Held("step", day(0.5))]
    sent = run(requests, {"max_per_week": 1})
    assert sent[-1] == day(7)
    assert sent[:3] == [day(0), day(14), day(21)]


# --- a plain reading of the rules, to check plan against -----------------------------------


def limits(caps: Mapping[str, Any], frequency: str) -> tuple[int | None, dt.timedelta]:
    per_week = caps.get("max_per_week")
    if frequency == "fewer":
        per_week = min(per_week or 1, 1)
    return per_week, dt.timedelta(seconds=parse_duration(caps["min_gap"])) if caps.get("min_gap") else dt.timedelta()


def broken(mails: Sequence[tuple[Sent, bool]], per_week: int | None, min_gap: dt.timedelta) -> str | None:
    """What rule a set of mails breaks (only where a mail marked True takes part), or None."""
    for i, (a, mine_a) in enumerate(mails):
        for b, mine_b in mails[i + 1 :]:
            gap = max(min_gap, DAY) if a.kind != b.kind else min_gap
            if (mine_a or mine_b) and abs(a.at - b.at) < gap:
                return f"{a} and {b} closer than {gap}"
    if per_week:
        ordered = sorted(mails, key=lambda m: m[0].at)
        for i in range(len(ordered) - per_week):
            run_ = ordered[i : i + per_week + 1]
            if any(mine for _, mine in run_) and run_[-1][0].at - run_[0][0].at < WEEK:
                return f"{per_week + 1} mails within a week from {run_[0][0].at}"
    return None


def in_window(window: Mapping[str, Any] | None, at: dt.datetime) -> bool:
    if window is None:
        return True
    first, _, last = window["days"].partition("-")
    a, b = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
    days = {(a + i) % 7 for i in range((b - a) % 7 + 1)}
    return at.weekday() in days and window["start"] <= at.strftime("%H:%M") < window["end"]


def order(held: Sequence[Held], caps: Mapping[str, Any]) -> list[int]:
    """The turns: by when each fell due, the kind that waits a day later (and last on a tie)."""
    waits = "newsletter" if caps.get("collision") == "newsletter_waits" else "step"
    return sorted(
        range(len(held)), key=lambda i: (held[i].due_at + DAY * (held[i].kind == waits), held[i].kind == waits)
    )


CAPS_ = st.fixed_dictionaries(
    {},
    optional={
        "max_per_week": st.integers(1, 4),
        "min_gap": st.sampled_from(["1h", "6h", "1d", "2d", "3d"]),
        "collision": st.sampled_from(["step_waits", "newsletter_waits"]),
    },
)
WINDOWS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "days": st.sampled_from(["mon-fri", "sat-sun", "tue", "fri-mon"]),
            "start": st.sampled_from(["00:00", "09:00", "13:00"]),
            "end": st.sampled_from(["17:00", "20:00"]),
        }
    ),
)
KINDS = st.sampled_from(["step", "newsletter"])


@st.composite
def mail_held(draw: st.DrawFn, hours: tuple[int, int]) -> Held:
    kind = draw(KINDS)
    window = draw(WINDOWS) if kind == "step" else None
    return Held(kind, T0 + draw(st.integers(*hours)) * HOUR, window)


@settings(max_examples=150, deadline=None)
@given(
    caps=CAPS_,
    sent=st.lists(st.builds(Sent, st.integers(-240, 48).map(lambda h: T0 + h * HOUR), KINDS), max_size=8),
    held=st.lists(mail_held((-120, 120)), min_size=1, max_size=6),
    frequency=st.sampled_from(["normal", "fewer"]),
    paused_h=st.one_of(st.none(), st.integers(1, 200)),
)
def test_plan_never_breaks_the_caps_and_sends_at_the_first_moment_that_fits(
    caps: dict[str, Any], sent: list[Sent], held: list[Held], frequency: str, paused_h: int | None
) -> None:
    paused_until = T0 + paused_h * HOUR if paused_h is not None else None
    times = plan(sent, held, T0, caps, frequency=frequency, paused_until=paused_until)
    per_week, min_gap = limits(caps, frequency)
    placed = [(Sent(at, mail.kind), True) for at, mail in zip(times, held, strict=True)]
    # Never more than max_per_week in 7 days, never closer than min_gap (a day across kinds),
    # whatever was sent before (even a history that broke them itself).
    assert broken([(s, False) for s in sent] + placed, per_week, min_gap) is None
    before: list[tuple[Sent, bool]] = [(s, False) for s in sent]
    for i in order(held, caps):
        mail, at = held[i], times[i]
        start = max(T0, mail.due_at, paused_until or T0)
        assert at >= start and in_window(mail.window, at)
        # The first moment that fits what was sent and what took its turn before it.
        probe = start
        while probe < at:
            fits = broken([*before, (Sent(probe, mail.kind), True)], per_week, min_gap) is None
            assert not (fits and in_window(mail.window, probe)), f"{mail} could go at {probe}, planned {at}"
            probe += HOUR
        before.append((Sent(at, mail.kind), False))


def run(requests: Sequence[Held], caps: Mapping[str, Any]) -> list[dt.datetime]:
    """Each request arrives at its ``due_at``; the clock jumps from one arrival or planned time
    to the next, sending what is planned for now. When each one went."""
    went: dict[int, dt.datetime] = {}
    now = min(r.due_at for r in requests)
    for _ in range(10 * len(requests) + 10):
        waiting = [i for i, r in enumerate(requests) if r.due_at <= now and i not in went]
        sent = [Sent(at, requests[i].kind) for i, at in went.items()]
        times = plan(sent, [requests[i] for i in waiting], now, caps)
        for i, at in zip(waiting, times, strict=True):
            if at == now:
                went[i] = now
                sent.append(Sent(now, requests[i].kind))
        later = [at for at in times if at > now] + [r.due_at for r in requests if r.due_at > now]
        if not later:
            break
        now = min(later)
    assert len(went) == len(requests), "a request never went"
    return [went[i] for i in range(len(requests))]


@settings(max_examples=150, deadline=None)
@given(caps=CAPS_, requests=st.lists(mail_held((0, 24 * 28)), min_size=1, max_size=14))
def test_requests_over_time_all_go_once_within_the_caps_and_none_starves(
    caps: dict[str, Any], requests: list[Held]
) -> None:
    went = run(requests, caps)
    per_week, min_gap = limits(caps, "normal")
    assert broken([(Sent(at, r.kind), True) for at, r in zip(went, requests, strict=True)], per_week, min_gap) is None
    slot = WEEK + 2 * max(min_gap, DAY)
    for at, request in zip(went, requests, strict=True):
        assert at >= request.due_at and in_window(request.window, at)
        # Only mail due before it, or within a day after it, can go first: however much mail
        # comes due later, a request goes within a slot per such mail (and a week for its window).
        ahead = sum(1 for r in requests if r.due_at <= request.due_at + DAY)
        assert at <= request.due_at + ahead * slot + WEEK
