"""Promotion rules: a pure function of a subscriber's human events in their layer.

A layer's rule is data (stored as JSON on the layer)::

    {"promote": {"on_any": ["purchase", "reply"], "clicked_messages": 2}}

``on_any``: one human event of any of these types promotes at once.
``clicked_messages``: human clicks in at least this many different mails since entering the layer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError

DEFAULT_RULE: dict[str, Any] = {"promote": {"on_any": ["purchase", "reply"], "clicked_messages": 2}}
PROMOTING_TYPES = frozenset({"open", "click", "reply", "enquiry", "purchase", "referral"})


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

    @property
    def moves(self) -> bool:
        return self.target_position is not None


STAY = Decision(None)


def validate_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    promote = rule.get("promote", {})
    if not isinstance(promote, Mapping):
        raise ValidationError("rule.promote must be an object", field="rule")
    on_any = promote.get("on_any", [])
    if not isinstance(on_any, list) or not all(t in PROMOTING_TYPES for t in on_any):
        raise ValidationError(
            f"rule.promote.on_any must list event types among {sorted(PROMOTING_TYPES)}",
            field="rule",
        )
    clicked = promote.get("clicked_messages")
    if clicked is not None and (not isinstance(clicked, int) or clicked < 1):
        raise ValidationError("rule.promote.clicked_messages must be a positive integer", field="rule")
    return {"promote": {"on_any": list(on_any), "clicked_messages": clicked}}


def evaluate(
    rule: Mapping[str, Any],
    *,
    position: int,
    top_position: int,
    entered_at: dt.datetime,
    events: Iterable[EventFact],
) -> Decision:
    """Stay, or move one layer up, judged on human events since ``entered_at``."""
    if position >= top_position:
        return STAY
    promote = rule.get("promote", {})
    human = [e for e in events if not e.machine and e.created_at > entered_at]
    on_any = set(promote.get("on_any", []))
    for event in human:
        if event.type in on_any:
            return Decision(position + 1, f"{event.type} in layer {position}", (event.id,))
    needed = promote.get("clicked_messages")
    if needed:
        first_click: dict[int, int] = {}
        for event in sorted(human, key=lambda e: e.created_at):
            if event.type == "click" and event.message_id is not None:
                first_click.setdefault(event.message_id, event.id)
        if len(first_click) >= needed:
            return Decision(
                position + 1,
                f"clicked in {len(first_click)} mails of layer {position}",
                tuple(first_click.values()),
            )
    return STAY
