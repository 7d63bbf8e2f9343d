"""Promotion, demotion and sunset rules: pure functions of a subscriber's human events.

A layer's rule is data (stored as JSON on the layer; the schema is documented in
``docs/rules.md``)::

    {"promote": {"on_any": ["purchase", "reply"], "clicked_messages": 2,
                 "clicks": {"count": 3, "within": "30d", "after_step": 2}},
     "demote": {"inactive_for": "90d"},
     "sunset": {"inactive_for": "180d"},
     "min_stay": "7d",
     "preferred": {"purchase_value": 500, "human_clicks": 10},
     "caps": {"max_per_week": 3, "min_gap": "1d", "collision": "step_waits"}}

Only human events count; machine opens and clicks never move anyone. Every key is optional.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .schedule import parse_duration

DEFAULT_RULE: dict[str, Any] = {
    "promote": {"on_any": ["purchase", "reply"], "clicked_messages": 2},
    "demote": {"inactive_for": "90d"},
    "sunset": {"inactive_for": "180d"},
}
PROMOTING_TYPES = frozenset({"open", "click", "reply", "enquiry", "purchase", "referral"})
# What counts as a sign of life: every human event of these types sets the subscriber's last
# activity (demotion and sunset count the silence since) and brings a sunset subscriber back.
# ``keep``: the "yes, keep me" button of the re-permission mail sent before a sunset.
ACTIVITY_TYPES = PROMOTING_TYPES | {"confirm", "keep"}
RULE_KEYS = frozenset({"promote", "demote", "sunset", "min_stay", "preferred", "caps"})
COLLISIONS = ("step_waits", "newsletter_waits")


KNOWN_PROMOTE_KEYS = {"on_any", "clicked_messages", "clicks"}
# Parts of a rule that a new event can never turn into a move: demotion and sunset count silence
# (an event only shortens it), the minimum stay only holds a move back, caps pace sending, and
# ``preferred`` is granted elsewhere.
INERT_RULE_KEYS = {"promote", "demote", "sunset", "min_stay", "caps", "preferred"}


def should_ask(
    rule: Mapping[str, Any], silent_since: dt.datetime, asked_at: dt.datetime | None, now: dt.datetime
) -> bool:
    """Re-permission before sunset: with ``sunset.ask_before``, a subscriber silent since
    ``silent_since`` is asked once "do you still want to hear from us?" when the sunset is that
    close, and never twice in one silence (``asked_at`` before ``silent_since`` was another)."""
    sunset = rule.get("sunset") if isinstance(rule, Mapping) else None
    if not isinstance(sunset, Mapping) or not sunset.get("ask_before") or not sunset.get("inactive_for"):
        return False
    if asked_at is not None and asked_at >= silent_since:
        return False
    ask_at = silent_since + dt.timedelta(
        seconds=parse_duration(sunset["inactive_for"]) - parse_duration(sunset["ask_before"])
    )
    sunset_at = silent_since + dt.timedelta(seconds=parse_duration(sunset["inactive_for"]))
    return ask_at <= now < sunset_at


def rule_watches(rule: dict[str, Any], event_type: str) -> bool:
    """Can an event of this type change what ``rule`` decides (a move, or the ``preferred``
    tag)? True for any rule this code does not fully understand, so a richer rule format is
    never judged too rarely."""
    promote = rule.get("promote", {}) if isinstance(rule, dict) else None
    if not isinstance(promote, dict) or set(promote) - KNOWN_PROMOTE_KEYS or set(rule) - INERT_RULE_KEYS:
        return True
    return (
        event_type in promote.get("on_any", ())
        or (event_type == "click" and bool(promote.get("clicked_messages") or promote.get("clicks")))
        or (event_type in ("click", "purchase") and bool(rule.get("preferred")))  # earns the tag
    )


def needs_step_times(rule: Mapping[str, Any]) -> bool:
    """Whether judging ``rule`` needs to know when the layer's steps were sent (``after_step``)."""
    promote = rule.get("promote") if isinstance(rule, Mapping) else None
    clicks = promote.get("clicks") if isinstance(promote, Mapping) else None
    return isinstance(clicks, Mapping) and bool(clicks.get("after_step"))


@dataclass(frozen=True)
class EventFact:
    """The part of an event a rule may look at."""

    id: int
    type: str
    created_at: dt.datetime
    message_id: int | None = None
    machine: bool = False


@dataclass(frozen=True)
class Decision:
    target_position: int | None  # None: stay
    reason: str = ""
    event_ids: tuple[int, ...] = field(default_factory=tuple)
    sunset: bool = False

    @property
    def moves(self) -> bool:
        return self.target_position is not None or self.sunset


STAY = Decision(None)


def _fail(message: str) -> ValidationError:
    return ValidationError(f"rule.{message}", field="rule")


def _object(rule: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = rule.get(key, {})
    if not isinstance(value, Mapping):
        raise _fail(f"{key} must be an object")
    return value


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"{name} must be a positive integer")
    return value


def _positive_number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(f"{name} must be a positive number")
    return value


def _duration(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(f"{name} must be a duration such as 90s, 2h, 30d")
    try:
        parse_duration(value)
    except ValidationError as exc:
        raise _fail(f"{name}: {exc.message}") from exc
    return value.strip()


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != {}}


def validate_rule(rule: Any) -> dict[str, Any]:
    """The rule in its normal form, or a ``ValidationError`` naming the bad part."""
    if not isinstance(rule, Mapping):
        raise ValidationError("rule must be a JSON object", field="rule")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise _fail(f"{min(unknown)} is not a rule key (known: {sorted(RULE_KEYS)})")
    promote = _object(rule, "promote")
    on_any = promote.get("on_any", [])
    if not isinstance(on_any, list) or not all(t in PROMOTING_TYPES for t in on_any):
        raise _fail(f"promote.on_any must list event types among {sorted(PROMOTING_TYPES)}")
    clicks = promote.get("clicks")
    clicks_out = None
    if clicks is not None:
        if not isinstance(clicks, Mapping):
            raise _fail("promote.clicks must be an object")
        clicks_out = _drop_none(
            {
                "count": _positive_int(clicks.get("count"), "promote.clicks.count"),
                "within": _duration(clicks.get("within"), "promote.clicks.within"),
                "after_step": _positive_int(clicks.get("after_step"), "promote.clicks.after_step"),
            }
        )
        if "count" not in clicks_out:
            raise _fail("promote.clicks.count is required")
    out: dict[str, Any] = {
        "promote": _drop_none(
            {
                "on_any": list(on_any),
                "clicked_messages": _positive_int(promote.get("clicked_messages"), "promote.clicked_messages"),
                "clicks": clicks_out,
            }
        )
    }
    for key in ("demote", "sunset"):
        part = _object(rule, key)
        after = _duration(part.get("inactive_for"), f"{key}.inactive_for")
        if after is not None:
            out[key] = {"inactive_for": after}
    ask = _duration(_object(rule, "sunset").get("ask_before"), "sunset.ask_before")
    if ask is not None:
        if "sunset" not in out:
            raise _fail("sunset.ask_before needs sunset.inactive_for")
        if parse_duration(ask) >= parse_duration(out["sunset"]["inactive_for"]):
            raise _fail(
                "sunset.ask_before must be shorter than sunset.inactive_for (it is how long before the sunset to ask)"
            )
        out["sunset"]["ask_before"] = ask
    stay = _duration(rule.get("min_stay"), "min_stay")
    if stay is not None:
        out["min_stay"] = stay
    preferred = _object(rule, "preferred")
    preferred_out = _drop_none(
        {
            "purchase_value": _positive_number(preferred.get("purchase_value"), "preferred.purchase_value"),
            "human_clicks": _positive_int(preferred.get("human_clicks"), "preferred.human_clicks"),
        }
    )
    if preferred_out:
        out["preferred"] = preferred_out
    caps = _object(rule, "caps")
    collision = caps.get("collision")
    if collision is not None and collision not in COLLISIONS:
        raise _fail(f"caps.collision must be one of {list(COLLISIONS)}")
    caps_out = _drop_none(
        {
            "max_per_week": _positive_int(caps.get("max_per_week"), "caps.max_per_week"),
            "min_gap": _duration(caps.get("min_gap"), "caps.min_gap"),
            "collision": collision,
        }
    )
    if caps_out:
        out["caps"] = caps_out
    return out


def _seconds(rule: Mapping[str, Any], *path: str) -> int | None:
    value: Any = rule
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return parse_duration(value) if isinstance(value, str) else None


_SPOKEN_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def spoken_duration(seconds: float, counted_in: int | None = None) -> str:
    """A duration in words, in whole units rounded down: ``"91 days"``, ``"36 hours"``, ``"1 minute"``.

    The unit is the largest that divides ``counted_in`` (a rule's threshold: ``"90d"`` counts
    in days, ``"36h"`` in hours, ``"90s"`` in seconds), so a silence judged against a rule reads
    in the rule's terms and is never "0 days"; without it, the largest unit ``seconds`` reaches.
    """
    whole = max(int(seconds), 0)
    if counted_in:
        name, size = next((n, s) for n, s in _SPOKEN_UNITS if counted_in % s == 0)
    else:
        name, size = next(((n, s) for n, s in _SPOKEN_UNITS if whole >= s), _SPOKEN_UNITS[-1])
    count = whole // size
    return f"{count} {name}{'' if count == 1 else 's'}"


def silence_reason(action: str, silent_s: float, threshold_s: int) -> str:
    """Why a subscriber was sunset or demoted: ``"sunset: no human event for 91 days"``, the
    silence counted in the unit of the rule's threshold."""
    return f"{action}: no human event for {spoken_duration(silent_s, threshold_s)}"


def revival_reason(event_type: str, silent_s: float) -> str:
    """Why a sunset subscriber is mailed again: ``"revived: click after no human event for 200 days"``."""
    return f"revived: {event_type} after no human event for {spoken_duration(silent_s)}"


def evaluate(
    rule: Mapping[str, Any],
    *,
    position: int,
    top_position: int,
    entered_at: dt.datetime,
    events: Iterable[EventFact],
    now: dt.datetime,
    step_sent_at: Mapping[int, dt.datetime] | None = None,
    last_human_at: dt.datetime | None = None,
) -> Decision:
    """Stay, move one layer up or down, or sunset, judged at ``now``.

    ``events`` are the subscriber's events since ``entered_at`` (machine ones are ignored here),
    ``step_sent_at`` maps positions of the layer's sequence to when they were sent, and
    ``last_human_at`` is the subscriber's last human event in any layer (or, if none, when
    they confirmed).
    """
    stay_s = _seconds(rule, "min_stay")
    if stay_s and now < entered_at + dt.timedelta(seconds=stay_s):
        return STAY  # hysteresis: no move of any kind before the minimum stay is over
    # Sunset counts silence across layers; demotion counts it within the layer.
    silent_overall = now - (last_human_at or entered_at)
    silent = now - max(entered_at, last_human_at or entered_at)
    sunset_s = _seconds(rule, "sunset", "inactive_for")
    if sunset_s and silent_overall >= dt.timedelta(seconds=sunset_s):
        return Decision(None, silence_reason("sunset", silent_overall.total_seconds(), sunset_s), sunset=True)
    human = sorted((e for e in events if not e.machine and e.created_at > entered_at), key=lambda e: e.created_at)
    if position < top_position:
        promoted = _promotion(rule.get("promote", {}), position, human, now, step_sent_at or {})
        if promoted.moves:
            return promoted
    demote_s = _seconds(rule, "demote", "inactive_for")
    if position > 1 and demote_s and silent >= dt.timedelta(seconds=demote_s):
        return Decision(position - 1, silence_reason("demoted", silent.total_seconds(), demote_s))
    return STAY


def _promotion(
    promote: Mapping[str, Any],
    position: int,
    human: list[EventFact],
    now: dt.datetime,
    step_sent_at: Mapping[int, dt.datetime],
) -> Decision:
    on_any = set(promote.get("on_any", []))
    for event in human:
        if event.type in on_any:
            return Decision(position + 1, f"{event.type} in layer {position}", (event.id,))
    needed = promote.get("clicked_messages")
    if needed:
        first_click: dict[int, int] = {}
        for event in human:
            if event.type == "click" and event.message_id is not None:
                first_click.setdefault(event.message_id, event.id)
        if len(first_click) >= needed:
            return Decision(
                position + 1,
                f"clicked in {len(first_click)} mails of layer {position}",
                tuple(first_click.values()),
            )
    clicks = promote.get("clicks")
    if clicks:
        since = None
        if clicks.get("within"):
            since = now - dt.timedelta(seconds=parse_duration(clicks["within"]))
        after_step = clicks.get("after_step")
        if after_step is not None:
            reached = step_sent_at.get(after_step)
            if reached is None:
                return STAY
            since = max(since, reached) if since else reached
        counted = [e.id for e in human if e.type == "click" and (since is None or e.created_at >= since)]
        if len(counted) >= clicks["count"]:
            where = f" after step {after_step}" if after_step else ""
            within = f" within {clicks['within']}" if clicks.get("within") else ""
            return Decision(position + 1, f"{len(counted)} clicks{within}{where} in layer {position}", tuple(counted))
    return STAY


def earns_preferred(rule: Mapping[str, Any], *, purchase_total: float, human_clicks: int) -> bool:
    """Whether the layer's ``preferred`` rule gives the ``preferred`` tag."""
    preferred = rule.get("preferred") or {}
    value = preferred.get("purchase_value")
    clicks = preferred.get("human_clicks")
    return bool((value and purchase_total >= value) or (clicks and human_clicks >= clicks))
