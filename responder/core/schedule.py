"""Drip scheduling as pure functions: durations, and what an enrollment does next at ``now``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ValidationError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``"90s"``, ``"2h"``, ``"3d"``, ``"1w"`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValidationError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 3d, 1w)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def format_duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class StepPlan:
    position: int
    delay_s: int


@dataclass(frozen=True)
class Advance:
    """What to do with a due enrollment: send ``send_position`` and wait for the next step."""

    send_position: int
    next_position: int
    next_due_at: dt.datetime | None  # None: the sequence is complete after this send


def first_due(steps: Sequence[StepPlan], started_at: dt.datetime) -> dt.datetime | None:
    """When the first step of a sequence is due for an enrollment that starts at ``started_at``."""
    if not steps:
        return None
    return started_at + dt.timedelta(seconds=steps[0].delay_s)


ENROLL_MODES = ("none", "next", "start")
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash: consecutive ids land far apart in [0, 1)


def check_enroll(mode: str, spread_s: int) -> None:
    """An import's choice of what its subscribers get (``imported_start``), or ``ValidationError``."""
    if mode not in ENROLL_MODES:
        raise ValidationError(f"enroll must be one of {', '.join(ENROLL_MODES)}, not {mode!r}", field="enroll")
    if spread_s < 0:
        raise ValidationError("spread cannot be negative", field="spread")


def imported_start(
    steps: Sequence[StepPlan], mode: str, spread_s: int, key: int, now: dt.datetime
) -> tuple[list[StepPlan], dt.datetime] | None:
    """What an imported subscriber gets of their layer's sequence, and from when: ``none``
    nothing (their layer's newsletters only), ``next`` every step after the first (the welcome
    is for people who just signed up), ``start`` every step. Their start is put off by a share
    of ``spread_s`` that ``key`` (the subscriber id) picks, so a list is spread evenly over that
    time instead of being mailed at once."""
    check_enroll(mode, spread_s)
    if mode == "none":
        return None
    ordered = sorted(steps, key=lambda s: s.position)
    chosen = ordered[1:] if mode == "next" else ordered
    share = ((key * _GOLDEN) & 0xFFFFFFFF) / 2**32
    return chosen, now + dt.timedelta(seconds=int(spread_s * share))


def advance(steps: Sequence[StepPlan], next_position: int, now: dt.datetime) -> Advance | None:
    """The enrollment is due at ``now`` with step ``next_position`` waiting; None if none is left.

    Steps are ordered by position; positions may have gaps (edited sequences), so the step
    sent is the first with a position at or after ``next_position``.
    """
    ordered = sorted(steps, key=lambda s: s.position)
    for index, step in enumerate(ordered):
        if step.position >= next_position:
            later = ordered[index + 1] if index + 1 < len(ordered) else None
            if later is None:
                return Advance(step.position, step.position + 1, None)
            return Advance(step.position, later.position, now + dt.timedelta(seconds=later.delay_s))
    return None
