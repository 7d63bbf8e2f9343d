"""The warm-up schedule: the pure caps and verdicts, a property over many days of sending, and the
delivery worker holding list mail over the cap against a real SMTP server."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from responder.clock import FakeClock
from responder.core.warmup import HELD, Schedule, judge, lifetime_start, next_day, parse_caps
from responder.models import Message

from .admin_fixtures import signed_in
from .conftest import App, SmtpSink, running_app
from .delivery_fixtures import message, queue_newsletter, runtime_for, worker_for
from .test_delivery_basic import queue_confirmation

START = dt.date(2026, 12, 1)
RAMP = Schedule(START, (50, 100, 500))


def at(day: int, hour: int = 9) -> dt.datetime:
    return dt.datetime.combine(START, dt.time(hour), tzinfo=dt.UTC) + dt.timedelta(days=day - 1)


@pytest.mark.parametrize(
    ("now", "day", "cap"),
    [(at(0), 0, None), (at(1), 1, 50), (at(1, 23), 1, 50), (at(2), 2, 100), (at(3), 3, 500), (at(4), 4, None)],
)
def test_the_cap_grows_by_day_and_ends_after_the_last(now: dt.datetime, day: int, cap: int | None) -> None:
    assert RAMP.day(now) == day
    assert RAMP.cap(now) == cap


def test_over_the_cap_waits_for_the_next_day_with_a_reason() -> None:
    assert judge(RAMP, "gmail", 100, at(2)).held_until is None
    verdict = judge(RAMP, "gmail", 101, at(2, 22))
    assert verdict.held_until == dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    assert verdict.reason == "held by the warm-up schedule: gmail's cap today is 100 (day 2); goes on 2026-12-03"
    assert judge(RAMP, "gmail", 10**6, at(4)).held_until is None


@pytest.mark.parametrize("value", ["", "0", "5,-1", "a,b"])
def test_a_schedule_is_positive_daily_caps(value: str) -> None:
    with pytest.raises(ValueError):
        parse_caps(value)
    assert parse_caps(" 50, 100 ,500") == (50, 100, 500)


@given(
    caps=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    queued=st.dictionaries(st.sampled_from(["gmail", "yahoo", "microsoft", "other"]), st.integers(0, 120)),
    hours=st.integers(0, 23),
)
def test_never_over_the_cap_and_nothing_dropped(caps: list[int], queued: dict[str, int], hours: int) -> None:
    """Each day, every waiting message is tried in turn: no provider gets more than the day's cap,
    every held message gets a later time, and everything goes in the end."""
    schedule = Schedule(START, tuple(caps))
    now = at(1, hours)
    waiting = dict(queued)
    for _ in range(len(caps) + 1):
        cap = schedule.cap(now)
        for provider, count in waiting.items():
            sent = 0
            for tried in range(1, count + 1):
                verdict = judge(schedule, provider, tried, now)
                if verdict.held_until is None:
                    sent += 1
                else:
                    assert verdict.held_until > now and verdict.held_until == next_day(now)
            assert cap is None or sent <= cap
            waiting[provider] = count - sent
        now = next_day(now) + dt.timedelta(hours=hours)
    assert not any(waiting.values())


async def test_a_newsletter_ramps_up_per_provider_and_confirmations_still_go(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    env = {"RESPONDER_WARMUP_START": clock.now().date().isoformat(), "RESPONDER_WARMUP_SCHEDULE": "3,6"}
    gmail = [f"g{i}@gmail.com" for i in range(10)]
    other = [f"o{i}@example.org" for i in range(10)]
    async with runtime_for(database_url, smtp.url, clock, **env) as rt, worker_for(rt) as worker:
        await queue_newsletter(rt, gmail + other)
        confirm = await queue_confirmation(rt, "new@gmail.com")

        async def drain() -> None:
            while await worker.run_once():
                pass

        def received(domain: str) -> int:
            return sum(r.rcpt_tos[0].endswith(domain) for r in smtp.received)

        await drain()
        assert (received("@gmail.com"), received("@example.org")) == (3 + 1, 3)  # +1: the confirmation
        assert [r.rcpt_tos for r in smtp.received if r.rcpt_tos == ["new@gmail.com"]]
        async with rt.db.read() as session:
            held = (await session.execute(select(Message).where(Message.state == "deferred"))).scalars().all()
            assert (await session.get(Message, confirm)).state == "sent"  # type: ignore[union-attr]
        assert len(held) == 14
        tomorrow = dt.datetime.combine(clock.now().date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        for message in held:
            assert message.next_attempt_at == tomorrow and message.attempts == 0
            assert message.last_error is not None and message.last_error.startswith("held by the warm-up schedule: ")
            assert message.last_error.endswith(f"'s cap today is 3 (day 1); goes on {tomorrow:%Y-%m-%d}")

        clock.advance(hours=20)  # 05:00 on day 2: the counts start afresh
        await drain()
        assert (received("@gmail.com"), received("@example.org")) == (1 + 9, 9)

        clock.advance(days=1)  # past the schedule: no cap
        await drain()
        assert (received("@gmail.com"), received("@example.org")) == (1 + 10, 10)
        addresses = sorted(r.rcpt_tos[0] for r in smtp.received)
        assert addresses == sorted([*gmail, *other, "new@gmail.com"])


async def test_settings_page_shows_caps_sent_and_held(database_url: str, smtp: SmtpSink, clock: FakeClock) -> None:
    env = {"RESPONDER_WARMUP_START": clock.now().date().isoformat(), "RESPONDER_WARMUP_SCHEDULE": "3,6"}
    async with running_app(database_url, smtp, clock, **env) as app:
        browser = await signed_in(app.rt, app.client)
        page = await (await browser.get("/admin/settings")).text()
        assert "Today is day 1 of 2: each provider may get 3 list mails." in page
        assert "No mail is held by the schedule." in page
        await queue_newsletter(app.rt, [f"g{i}@gmail.com" for i in range(5)])
        await smtp.wait_for(3)
        for _ in range(100):
            page = await (await browser.get("/admin/settings")).text()
            if "held messages go" in page:
                break
            await asyncio.sleep(0.05)
        tomorrow = clock.now().date() + dt.timedelta(days=1)
        assert f"2 held messages go at {tomorrow} 00:00 UTC." in page
        assert re.search(r"<td>gmail</td><td>3</td><td>3</td>", page)
        assert len(smtp.received) == 3


async def test_settings_page_says_when_the_schedule_is_off(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/settings")).text()
    assert "Off: list mail is not capped per day." in page


def test_held_list_mail_gets_its_whole_lifetime_once_it_goes() -> None:
    created = at(1, 9)
    assert lifetime_start(RAMP, created, at(3, 10)) == at(3, 0)
    assert lifetime_start(RAMP, created, at(4, 10)) == at(4, 0)  # the last day's held mail goes
    assert lifetime_start(RAMP, created, at(5, 10)) == created
    assert lifetime_start(None, created, at(3, 10)) == created


async def test_a_held_message_is_retried_not_given_up_after_its_wait(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    """A lifetime shorter than the wait: the held message's first refusal still only defers it."""
    env = {
        "RESPONDER_WARMUP_START": clock.now().date().isoformat(),
        "RESPONDER_WARMUP_SCHEDULE": "1,1",
        "RESPONDER_MESSAGE_LIFETIME_S": "3600",
    }
    async with runtime_for(database_url, smtp.url, clock, **env) as rt, worker_for(rt) as worker:
        first, second = await queue_newsletter(rt, ["a@gmail.com", "b@gmail.com"])
        await worker.run_once()
        smtp.handler.replies["b@gmail.com"] = "451 4.7.28 try again later"
        clock.advance(hours=15)  # 00:00 on day 2, when the held message goes: 15 h after it was queued
        await worker.run_once()
        async with rt.db.read() as session:
            held = await session.get(Message, second)
        assert held is not None and held.state == "deferred" and held.attempts == 1
        assert held.last_error is not None and "4.7.28" in held.last_error and "gave up" not in held.last_error
        del smtp.handler.replies["b@gmail.com"]
        clock.advance(hours=1)  # the refused try took day 2's one place: held again, not lost
        await worker.run_once()
        assert (await message(rt, second)).last_error.startswith(HELD)  # type: ignore[union-attr]
        clock.advance(days=1)
        await worker.run_once()
        assert sorted(r.rcpt_tos[0] for r in smtp.received) == ["a@gmail.com", "b@gmail.com"]
