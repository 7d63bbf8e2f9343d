"""When a mail may go: frequency caps, send windows and step conditions, as pure functions.

* Caps (per layer, in the layer rule's ``caps``): at most ``max_per_week`` drip and newsletter
  mails in any 7 days, at least ``min_gap`` between two. A mail under the cap is postponed to
  the first moment it fits, never dropped. Transactional mail is never counted or held.
* Collision: a drip step and a newsletter never go out within one day of each other; which
  one waits is ``caps.collision`` (``step_waits``, the default, or ``newsletter_waits``).
* Send window (per step): ``{"days": "mon-fri", "start": "09:00", "end": "17:00"}`` in the
  subscriber's time zone (``attributes.timezone``) when known, else UTC.
* Condition (per step): ``{"skip_if_purchased": true, "require_tags": [..],
  "skip_if_tags": [..]}``; a step whose condition fails is skipped, not postponed.
* The subscriber's own choices (unsubscribe page, preference center), through the same caps:
  ``frequency == "fewer"`` tightens the layer's caps to at most one drip or newsletter mail a
  week (newsletters included: they wait like steps); ``paused_until`` postpones drip steps to
  the end of the pause and skips newsletters sent during it (a stale newsletter is not held).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class Sent:
    """One counted mail to a subscriber: when, and whether it was a drip step or a newsletter."""

    at: dt.datetime
    kind: str  # step | newsletter


def next_allowed(
    sent: Iterable[Sent],
    now: dt.datetime,
    caps: Mapping[str, Any] | None,
    kind: str,
) -> dt.datetime:
    """The earliest time at or after ``now`` a mail of ``kind`` may go under the layer's caps."""
    caps = caps or {}
    collision = caps.get("collision", "step_waits")
    waits = (kind == "step") == (collision == "step_waits")
    history = sorted(s.at for s in sent)
    others = [s.at for s in sent if s.kind != kind]
    at = now
    if waits and others:
        at = max(at, max(others) + COLLISION_GAP)
    # Under "step_waits" a newsletter is not held by the caps either: it is the one that goes.
    if kind == "newsletter" and collision == "step_waits":
        return at
    if caps.get("min_gap") and history:
        at = max(at, history[-1] + dt.timedelta(seconds=parse_duration(caps["min_gap"])))
    limit = caps.get("max_per_week")
    if limit:
        while True:
            in_week = [t for t in history if at - WEEK < t <= at]
            if len(in_week) < limit:
                break
            at = in_week[len(in_week) - limit] + WEEK
    return at


def caps_for(caps: Mapping[str, Any] | None, frequency: str | None) -> Mapping[str, Any] | None:
    """The layer's caps as they apply to a subscriber who chose ``frequency``."""
    if frequency != "fewer":
        return caps
    limit = (caps or {}).get("max_per_week")
    # Newsletters wait too, so the weekly limit holds for every counted mail.
    return {
        **(caps or {}),
        "collision": "newsletter_waits",
        "max_per_week": min(limit, FEWER_PER_WEEK) if limit else FEWER_PER_WEEK,
    }


def mail_at(
    sent: Iterable[Sent],
    now: dt.datetime,
    caps: Mapping[str, Any] | None,
    kind: str,
    *,
    frequency: str | None = "normal",
    paused_until: dt.datetime | None = None,
) -> dt.datetime | None:
    """When a mail of ``kind`` may go to this subscriber; None: a newsletter skipped (paused)."""
    if paused_until is not None and now < paused_until:
        if kind == "newsletter":
            return None
        now = paused_until
    return next_allowed(sent, now, caps_for(caps, frequency), kind)


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
