"""When a mail may go: frequency caps, collisions, send windows and step conditions, as pure
functions.

* Caps (per layer, in the layer rule's ``caps``): at most ``max_per_week`` drip and newsletter
  mails in any 7 days (two mails less than 7 days apart share a week), at least ``min_gap``
  between any two. Transactional mail is never counted or held.
* Collision: a drip step and a newsletter never go within one day of each other. Which one
  waits when they fall due within a day of each other is ``caps.collision``: ``step_waits``
  (the default) or ``newsletter_waits``. The caps bind both kinds in both modes.
* ``plan`` is the one answer to "when may each mail waiting for this subscriber go, given what
  was sent": every path that queues a counted mail (due drip steps, a newsletter's batch, a
  pause) asks it. Waiting mails take their turn in the order they fell due, the kind that waits
  a day later (so the mode decides mails due within a day of each other, and a mail that has
  waited longer than that is not overtaken again: nothing starves); each goes at the first
  moment it fits around what was sent and what takes its turn before it, inside its send
  window. Nothing is dropped.
* Send window (per step): ``{"days": "mon-fri", "start": "09:00", "end": "17:00"}`` in the
  subscriber's time zone (``attributes.timezone``) when known, else UTC.
* Condition (per step): ``{"skip_if_purchased": true, "require_tags": [..],
  "skip_if_tags": [..]}``; a step whose condition fails is skipped, not postponed.
* The subscriber's own choices (unsubscribe page, preference center): ``frequency == "fewer"``
  tightens the layer's caps to at most one drip or newsletter mail a week; ``paused_until``
  holds every counted mail until the pause ends, and a newsletter that reaches them during it
  skips them (a stale newsletter is not held).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ValidationError
from .schedule import parse_duration

WEEK = dt.timedelta(days=7)
COLLISION_GAP = dt.timedelta(days=1)
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
CONDITION_KEYS = frozenset({"skip_if_purchased", "require_tags", "skip_if_tags"})
FEWER_PER_WEEK = 1
NO_GAP = dt.timedelta(0)


@dataclass(frozen=True)
class Sent:
    """A counted mail that went, or is bound to go, at ``at``: a drip step or a newsletter."""

    at: dt.datetime
    kind: str  # step | newsletter


@dataclass(frozen=True)
class Held:
    """A counted mail waiting to go: its kind, when it fell due (its turn), and for a drip step
    its send window in the subscriber's time zone."""

    kind: str  # step | newsletter
    due_at: dt.datetime
    window: Mapping[str, Any] | None = None
    tz: dt.tzinfo = dt.UTC


def caps_for(caps: Mapping[str, Any] | None, frequency: str | None) -> Mapping[str, Any]:
    """The layer's caps as they apply to a subscriber who chose ``frequency``."""
    caps = caps or {}
    if frequency != "fewer":
        return caps
    limit = caps.get("max_per_week")
    return {**caps, "max_per_week": min(limit, FEWER_PER_WEEK) if limit else FEWER_PER_WEEK}


def skips_newsletter(paused_until: dt.datetime | None, now: dt.datetime) -> bool:
    """A newsletter reaching a subscriber during their pause skips them (it is not held)."""
    return paused_until is not None and now < paused_until


def waiting_kind(caps: Mapping[str, Any] | None) -> str:
    """The kind that waits when a drip step and a newsletter fall due within a day."""
    return "newsletter" if (caps or {}).get("collision") == "newsletter_waits" else "step"


def turn(mail: Held, waits: str) -> tuple[dt.datetime, int]:
    """A waiting mail's place in the queue: when it fell due, one collision gap later for the
    kind that waits (and after the other kind on a tie)."""
    if mail.kind == waits:
        return mail.due_at + COLLISION_GAP, 1
    return mail.due_at, 0


@dataclass(frozen=True)
class _Limits:
    per_week: int | None
    min_gap: dt.timedelta

    def gap(self, kind: str, other: str) -> dt.timedelta:
        return max(self.min_gap, COLLISION_GAP) if kind != other else self.min_gap

    def fits(self, placed: Sequence[Sent], kind: str, at: dt.datetime) -> bool:
        for mail in placed:
            gap = self.gap(kind, mail.kind)
            if gap and abs(at - mail.at) < gap:
                return False
        if self.per_week is None:
            return True
        # Every run of mails less than a week apart that holds ``at`` starts at one of them.
        near = sorted([mail.at for mail in placed if abs(mail.at - at) < WEEK] + [at])
        return all(sum(1 for t in near if first <= t < first + WEEK) <= self.per_week for first in near if first <= at)

    def first_fit(self, placed: Sequence[Sent], kind: str, start: dt.datetime) -> dt.datetime:
        """The earliest moment at or after ``start`` that fits: a gap or a week after a placed
        mail is where a run of unfitting moments can end, so only those are tried after it."""
        if self.fits(placed, kind, start):
            return start
        ends: set[dt.datetime] = set()
        for mail in placed:
            gap = self.gap(kind, mail.kind)
            if gap:
                ends.add(mail.at + gap)
            if self.per_week is not None:
                ends.add(mail.at + WEEK)
        for at in sorted(t for t in ends if t >= start):
            if self.fits(placed, kind, at):
                return at
        raise AssertionError("a week and a gap after every placed mail always fits")


def plan(
    sent: Sequence[Sent],
    held: Sequence[Held],
    now: dt.datetime,
    caps: Mapping[str, Any] | None,
    *,
    frequency: str | None = "normal",
    paused_until: dt.datetime | None = None,
) -> list[dt.datetime]:
    """When each mail waiting for one subscriber may go (at or after ``now``), in ``held``'s
    order. A time at ``now`` means "send it now"; a later one is when to look again."""
    own = caps_for(caps, frequency)
    limits = _Limits(
        own.get("max_per_week"),
        dt.timedelta(seconds=parse_duration(own["min_gap"])) if own.get("min_gap") else NO_GAP,
    )
    start = max(now, paused_until) if paused_until else now
    waits = waiting_kind(own)
    placed = list(sent)
    times: dict[int, dt.datetime] = {}
    for index in sorted(range(len(held)), key=lambda i: turn(held[i], waits)):
        mail = held[index]
        at = max(mail.due_at, start)
        while True:
            at = limits.first_fit(placed, mail.kind, at)
            opens = in_window(mail.window, at, mail.tz)
            if opens == at:
                break
            at = opens
        times[index] = at
        placed.append(Sent(at, mail.kind))
    return [times[i] for i in range(len(held))]


def _days(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset(range(7))
    if isinstance(value, str):
        start, _, end = value.lower().partition("-")
        if start not in DAY_NAMES or (end and end not in DAY_NAMES):
            raise ValidationError("send_window.days must be like 'mon-fri' or a list of day names", field="send_window")
        first, last = DAY_NAMES.index(start), DAY_NAMES.index(end or start)
        return frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
    if isinstance(value, list) and value and all(isinstance(d, str) and d.lower() in DAY_NAMES for d in value):
        return frozenset(DAY_NAMES.index(d.lower()) for d in value)
    raise ValidationError("send_window.days must be like 'mon-fri' or a list of day names", field="send_window")


def _minutes(value: Any, name: str) -> int:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if not match:
        raise ValidationError(f"send_window.{name} must be HH:MM (24 h)", field="send_window")
    return int(match.group(1)) * 60 + int(match.group(2))


def validate_window(window: Any) -> dict[str, Any] | None:
    if window is None:
        return None
    if not isinstance(window, Mapping) or set(window) - {"days", "start", "end"}:
        raise ValidationError("send_window must be an object with days, start and end", field="send_window")
    _days(window.get("days"))
    start = _minutes(window.get("start", "00:00"), "start")
    end = _minutes(window.get("end", "23:59"), "end")
    if end <= start:
        raise ValidationError("send_window.end must be after its start", field="send_window")
    return {
        "days": window.get("days", "mon-sun"),
        "start": window.get("start", "00:00"),
        "end": window.get("end", "23:59"),
    }


def zone(name: Any) -> dt.tzinfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return dt.UTC


def in_window(window: Mapping[str, Any] | None, now: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``now`` if it falls inside the window, else the window's next opening (UTC)."""
    if not window:
        return now
    days = _days(window.get("days"))
    start = _minutes(window.get("start", "00:00"), "start")
    end = _minutes(window.get("end", "23:59"), "end")
    local = now.astimezone(tz)
    for offset in range(8):
        day = (local + dt.timedelta(days=offset)).date()
        if day.weekday() not in days:
            continue
        opens = dt.datetime.combine(day, dt.time(start // 60, start % 60), tz)
        closes = dt.datetime.combine(day, dt.time(end // 60, end % 60), tz)
        if offset == 0 and opens <= local < closes:
            return now
        if opens > local:
            return opens.astimezone(dt.UTC)
    raise AssertionError("a window with at least one day always opens within a week")


def validate_condition(condition: Any) -> dict[str, Any] | None:
    if condition is None:
        return None
    if not isinstance(condition, Mapping) or set(condition) - CONDITION_KEYS:
        raise ValidationError(
            f"condition must be an object with keys among {sorted(CONDITION_KEYS)}", field="condition"
        )
    out: dict[str, Any] = {}
    if "skip_if_purchased" in condition:
        if not isinstance(condition["skip_if_purchased"], bool):
            raise ValidationError("condition.skip_if_purchased must be true or false", field="condition")
        out["skip_if_purchased"] = condition["skip_if_purchased"]
    for key in ("require_tags", "skip_if_tags"):
        if key in condition:
            tags = condition[key]
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValidationError(f"condition.{key} must be a list of tags", field="condition")
            out[key] = list(tags)
    return out or None


def condition_holds(condition: Mapping[str, Any] | None, *, purchased: bool, tags: Sequence[str]) -> bool:
    """Whether a step with this condition is sent (True) or skipped (False)."""
    if not condition:
        return True
    if condition.get("skip_if_purchased") and purchased:
        return False
    if not set(condition.get("require_tags", [])) <= set(tags):
        return False
    return not set(condition.get("skip_if_tags", [])) & set(tags)
