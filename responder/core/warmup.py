"""The warm-up schedule: how much list mail each mailbox provider may get on each day while a new
sending IP builds its reputation, as pure decisions.

Gmail, Yahoo and Microsoft judge a new IP by how much it sends and how readers take it; a sudden
flood from an unknown address is filtered or refused. Senders therefore ramp up: a daily cap per
provider that grows day by day (``50,100,500,…``) and ends after the schedule's last day.

Only list mail (drip steps and newsletters) is capped; confirmations and other transactional mail
always go. A message over today's cap is never dropped: it waits for the start of the next day
(UTC), when the cap is counted afresh.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DAY = dt.timedelta(days=1)
HELD = "held by the warm-up schedule: "  # how a held message's last_error begins


@dataclass(frozen=True)
class Schedule:
    """Daily caps per provider from ``start`` (a UTC date): ``caps[0]`` on day 1, and so on."""

    start: dt.date
    caps: tuple[int, ...]

    def day(self, now: dt.datetime) -> int:
        """The day number at ``now``: 1 on the start date, 0 or less before it."""
        return (now.astimezone(dt.UTC).date() - self.start).days + 1

    def cap(self, now: dt.datetime) -> int | None:
        """Each provider's cap today, or None when nothing is capped (before the start or past
        the last day)."""
        day = self.day(now)
        return self.caps[day - 1] if 1 <= day <= len(self.caps) else None


def parse_caps(value: str) -> tuple[int, ...]:
    """``"50,100,500"`` → ``(50, 100, 500)``; each a positive whole number."""
    caps = tuple(int(part) for part in value.replace(" ", "").split(",") if part)
    if not caps or any(cap <= 0 for cap in caps):
        raise ValueError("a warm-up schedule is daily caps above zero, e.g. 50,100,500,1000")
    return caps


def next_day(now: dt.datetime) -> dt.datetime:
    """The start (00:00 UTC) of the day after ``now``'s."""
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + DAY


@dataclass(frozen=True)
class Verdict:
    """``held_until`` is None when the message may go now."""

    held_until: dt.datetime | None
    reason: str = ""


def judge(schedule: Schedule, provider: str, sent_today: int, now: dt.datetime) -> Verdict:
    """May the list mail that would be ``provider``'s ``sent_today``-th today (counting itself)
    go now? If not, when it may."""
    cap = schedule.cap(now)
    if cap is None or sent_today <= cap:
        return Verdict(None)
    until = next_day(now)
    reason = f"{HELD}{provider}'s cap today is {cap} (day {schedule.day(now)}); goes on {until:%Y-%m-%d}"
    return Verdict(until, reason)


def lifetime_start(schedule: Schedule | None, created_at: dt.datetime, now: dt.datetime) -> dt.datetime:
    """From when a list mail's lifetime (the time after which retries give up) counts: a message
    held for days must still get its full lifetime of retries once it goes, so while the schedule
    runs (and on the day after, when the last day's held mail goes) it counts from today's start."""
    if schedule is None or not 1 <= schedule.day(now) <= len(schedule.caps) + 1:
        return created_at
    return max(created_at, next_day(now) - DAY)
