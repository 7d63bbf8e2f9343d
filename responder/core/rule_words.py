"""A layer's rule in plain words, for the people who write rules in the admin UI.

Three pure translations around the rule's JSON (``core.promotion``, ``docs/rules.md``):

- ``rule_sentences``: what a rule does, as the sentences shown beside its form and on the
  Layers page ("Moves up to layer 3 at once on a purchase or a reply, or once they have
  clicked in 2 different mails.").
- ``fields_from_rule`` / ``rule_from_fields``: the rule as the flat fields of a form (numbers
  and units, no JSON keys) and back. ``rule_from_fields`` only reads the fields (a number is a
  number); whether the rule is a good one stays ``validate_rule``'s to say.
- ``error_in_words``: a ``validate_rule`` refusal as the form field at fault and a message in
  the form's words rather than the JSON keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ValidationError
from .promotion import COLLISIONS

# Event types as the form offers them, most telling first.
EVENT_WORDS = {
    "purchase": "a purchase",
    "reply": "a reply",
    "enquiry": "a question (an enquiry)",
    "referral": "a referral",
    "click": "any click",
    "open": "any open",
}
UNIT_WORDS = {"m": "minute", "h": "hour", "d": "day", "w": "week", "s": "second"}
COLLISION_WORDS = {
    "step_waits": "the newsletter goes first and the drip step waits",
    "newsletter_waits": "the drip step goes first and the newsletter waits",
}
# Form fields holding a duration: each is a number field plus a ``<name>_unit`` field.
DURATION_FIELDS = ("up_clicks_within", "down_after", "sunset_after", "sunset_ask", "min_stay", "cap_gap")
NUMBER_FIELDS = ("up_mails", "up_clicks", "up_clicks_after_step", "preferred_clicks", "cap_week")
# Every text field of the form (``up_on``, the ticked event types, is a list beside them).
FORM_FIELDS = (
    *NUMBER_FIELDS,
    "preferred_value",
    "collision",
    *DURATION_FIELDS,
    *(f"{name}_unit" for name in DURATION_FIELDS),
)
# Where each part of the rule's JSON is in the form, and what the form calls it.
PATH_FIELDS = {
    "promote.on_any": ("up_on", "The events that move people up"),
    "promote.clicked_messages": ("up_mails", "The number of different mails clicked"),
    "promote.clicks.count": ("up_clicks", "The number of clicks"),
    "promote.clicks.within": ("up_clicks_within", "The time the clicks must fall within"),
    "promote.clicks.after_step": ("up_clicks_after_step", "The step after which clicks count"),
    "promote.clicks": ("up_clicks", "The number of clicks"),
    "demote.inactive_for": ("down_after", "The time without activity before moving down"),
    "sunset.ask_before": ("sunset_ask", "The time before stopping to ask"),
    "sunset.inactive_for": ("sunset_after", "The time without activity before mailing stops"),
    "min_stay": ("min_stay", "The shortest stay"),
    "preferred.purchase_value": ("preferred_value", "The purchase total"),
    "preferred.human_clicks": ("preferred_clicks", "The number of clicks for preferred"),
    "caps.max_per_week": ("cap_week", "The mails a week"),
    "caps.min_gap": ("cap_gap", "The time between two mails"),
    "caps.collision": ("collision", "Which mail waits"),
}
FIELD_LABELS = {field: label for field, label in PATH_FIELDS.values()}
_TAILS = (
    ("must be a positive integer", "must be a whole number, 1 or more"),
    ("must be a positive number", "must be more than 0"),
    ("is required", "is needed"),
    ("needs sunset.inactive_for", "needs a time without activity after which mailing stops"),
    ("must be shorter than sunset.inactive_for", "must be shorter than the time before mailing stops"),
)
_DURATION = re.compile(r"^(\d+)([smhdw])$")


def _plural(count: float, word: str) -> str:
    return f"{_number(count)} {word}{'' if count == 1 else 's'}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def duration_words(text: str) -> str:
    """``"90d"`` → ``"90 days"``, ``"1w"`` → ``"1 week"`` (the rule's own unit)."""
    match = _DURATION.match(text.strip())
    if not match:
        return text
    return _plural(int(match.group(1)), UNIT_WORDS[match.group(2)])


def _either(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _promotion(promote: Mapping[str, Any], position: int, top_position: int) -> str:
    if position >= top_position:
        return "This is the top layer: nobody moves up from it."
    parts = []
    on_any = [EVENT_WORDS[t] for t in EVENT_WORDS if t in (promote.get("on_any") or [])]
    if on_any:
        parts.append("at once on " + _either(on_any))
    mails = promote.get("clicked_messages")
    if mails:
        parts.append(
            f"once they have clicked in {_plural(mails, 'different mail')}" if mails > 1 else "on a click in a mail"
        )
    clicks = promote.get("clicks")
    if isinstance(clicks, Mapping) and clicks.get("count"):
        words = f"after {_plural(clicks['count'], 'click')}"
        if clicks.get("within"):
            words += f" within {duration_words(clicks['within'])}"
        if clicks.get("after_step"):
            words += f" once step {clicks['after_step']} of the layer's sequence was sent"
        parts.append(words)
    if not parts:
        return "Nobody moves up from this layer by the rule; an admin can move people by hand."
    return f"Moves up to layer {position + 1} " + ", or ".join(parts) + "."


def rule_sentences(rule: Mapping[str, Any], *, position: int, top_position: int) -> list[str]:
    """What ``rule`` (valid, in normal form) does in a layer at ``position`` of ``top_position``."""
    out = [_promotion(rule.get("promote") or {}, position, top_position)]
    demote = (rule.get("demote") or {}).get("inactive_for")
    if position > 1:
        if demote:
            out.append(f"Moves down to layer {position - 1} after {duration_words(demote)} without activity.")
        else:
            out.append("Never moves down for being quiet.")
    sunset = rule.get("sunset") or {}
    if sunset.get("inactive_for"):
        after = duration_words(sunset["inactive_for"])
        if sunset.get("ask_before"):
            out.append(
                f"After {after} without activity mailing them stops; {duration_words(sunset['ask_before'])} before,"
                " they are asked whether they still want the mails."
            )
        else:
            out.append(f"After {after} without activity mailing them stops, without asking first.")
    else:
        out.append("Keeps mailing them however long they are quiet.")
    if rule.get("min_stay"):
        out.append(f"Stays at least {duration_words(rule['min_stay'])} in this layer before any move.")
    preferred = rule.get("preferred") or {}
    earned = []
    if preferred.get("purchase_value"):
        earned.append(f"when their purchases add up to {_number(preferred['purchase_value'])}")
    if preferred.get("human_clicks"):
        earned.append(f"after {_plural(preferred['human_clicks'], 'click')} in this layer")
    if earned:
        out.append("Marked preferred " + " or ".join(earned) + ".")
    caps = rule.get("caps") or {}
    pace = []
    if caps.get("max_per_week"):
        pace.append(f"at most {_plural(caps['max_per_week'], 'mail')} a week")
    if caps.get("min_gap"):
        pace.append(f"at least {duration_words(caps['min_gap'])} apart")
    if not pace:
        out.append("No weekly limit on mails.")
    else:
        text = ", ".join(pace) + "."
        out.append("A" + text[1:] if caps.get("max_per_week") else "Mails " + text)
    collision = caps.get("collision") or COLLISIONS[0]
    out.append(f"When a drip step and a newsletter fall due within a day, {COLLISION_WORDS[collision]}.")
    return out


def _split_duration(value: Any) -> tuple[str, str]:
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    return (match.group(1), match.group(2)) if match else ("", "d")


def fields_from_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The form's fields for ``rule``: numbers as text ("" for a part left out), each duration
    as a number and a unit, ``up_on`` the list of event types."""
    promote = rule.get("promote") or {}
    clicks = promote.get("clicks") or {}
    sunset = rule.get("sunset") or {}
    preferred = rule.get("preferred") or {}
    caps = rule.get("caps") or {}
    numbers = {
        "up_mails": promote.get("clicked_messages"),
        "up_clicks": clicks.get("count"),
        "up_clicks_after_step": clicks.get("after_step"),
        "preferred_value": preferred.get("purchase_value"),
        "preferred_clicks": preferred.get("human_clicks"),
        "cap_week": caps.get("max_per_week"),
    }
    fields: dict[str, Any] = {name: "" if value is None else _number(value) for name, value in numbers.items()}
    fields["up_on"] = list(promote.get("on_any") or [])
    fields["collision"] = caps.get("collision") or COLLISIONS[0]
    durations = {
        "up_clicks_within": clicks.get("within"),
        "down_after": (rule.get("demote") or {}).get("inactive_for"),
        "sunset_after": sunset.get("inactive_for"),
        "sunset_ask": sunset.get("ask_before"),
        "min_stay": rule.get("min_stay"),
        "cap_gap": caps.get("min_gap"),
    }
    for name, value in durations.items():
        fields[name], fields[f"{name}_unit"] = _split_duration(value)
    return fields


def _read_number(fields: Mapping[str, Any], name: str, *, whole: bool = True) -> int | float | None:
    """The number typed into a field (None when empty); whether it suits the rule is
    ``validate_rule``'s to say."""
    text = str(fields.get(name) or "").strip()
    if not text:
        return None
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        kind = "a whole number" if whole else "a number"
        raise ValidationError(f"{FIELD_LABELS[name]} must be {kind}, e.g. 3", field=name)
    return int(value) if float(value).is_integer() else value


def _read_duration(fields: Mapping[str, Any], name: str) -> str | None:
    text = str(fields.get(name) or "").strip()
    if not text:
        return None
    unit = str(fields.get(f"{name}_unit") or "d")
    if not text.isdigit() or unit not in UNIT_WORDS:
        raise ValidationError(
            f"{FIELD_LABELS[name]} must be a whole number of minutes, hours, days or weeks", field=name
        )
    return f"{int(text)}{unit}"


def rule_from_fields(fields: Mapping[str, Any], up_on: Iterable[str]) -> dict[str, Any]:
    """The rule's JSON from the form's fields (``up_on``: the ticked event types). A field left
    empty leaves its part out. Not yet validated: pass the result to ``validate_rule``."""
    values = {name: _read_number(fields, name) for name in NUMBER_FIELDS}
    durations = {name: _read_duration(fields, name) for name in DURATION_FIELDS}
    promote: dict[str, Any] = {"on_any": [t for t in EVENT_WORDS if t in set(up_on)]}
    if values["up_mails"] is not None:
        promote["clicked_messages"] = values["up_mails"]
    clicks = {
        "count": values["up_clicks"],
        "within": durations["up_clicks_within"],
        "after_step": values["up_clicks_after_step"],
    }
    if any(v is not None for v in clicks.values()):
        promote["clicks"] = {k: v for k, v in clicks.items() if v is not None}
    rule: dict[str, Any] = {"promote": promote}
    if durations["down_after"]:
        rule["demote"] = {"inactive_for": durations["down_after"]}
    sunset = {"inactive_for": durations["sunset_after"], "ask_before": durations["sunset_ask"]}
    if any(sunset.values()):
        rule["sunset"] = {k: v for k, v in sunset.items() if v}
    if durations["min_stay"]:
        rule["min_stay"] = durations["min_stay"]
    preferred = {
        "purchase_value": _read_number(fields, "preferred_value", whole=False),
        "human_clicks": values["preferred_clicks"],
    }
    if any(v is not None for v in preferred.values()):
        rule["preferred"] = {k: v for k, v in preferred.items() if v is not None}
    collision = str(fields.get("collision") or COLLISIONS[0])
    caps = {
        "max_per_week": values["cap_week"],
        "min_gap": durations["cap_gap"],
        # The default needs no saying: the rule stays as short as the admin wrote it.
        "collision": collision if collision != COLLISIONS[0] else None,
    }
    if any(v is not None for v in caps.values()):
        rule["caps"] = {k: v for k, v in caps.items() if v is not None}
    return rule


def error_in_words(exc: ValidationError) -> tuple[str | None, str]:
    """A ``validate_rule`` refusal as (the form field at fault, what to say there); a refusal
    that names no part of the rule: (None, its message)."""
    message = exc.message.removeprefix("rule.")
    for path in sorted(PATH_FIELDS, key=len, reverse=True):
        if message.startswith(path):
            field, label = PATH_FIELDS[path]
            rest = message[len(path) :].lstrip(": ")
            for tail, words in _TAILS:
                rest = rest.replace(tail, words)
            if path == "promote.on_any":
                rest = "may only be " + _either(list(EVENT_WORDS.values()))
            return field, f"{label} {rest}".replace(" (it is how long before the sunset to ask)", "")
    return None, exc.message
