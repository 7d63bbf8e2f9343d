"""A subscriber's status and the changes it allows, as data.

``pending`` (opted in, not confirmed) → ``active`` (confirmed: mailed) → out again by
unsubscribing, a hard bounce, a complaint, or a sunset (long silence: no more mail, the record
stays). A sunset subscriber's human event makes them ``active`` again; an unsubscribed or
sunset address that opts in anew is ``pending`` until it confirms.
"""

from __future__ import annotations

STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained", "sunset")
# Each status, and the statuses a subscriber may reach it from.
REACHED_FROM: dict[str, frozenset[str]] = {
    "pending": frozenset({"unsubscribed", "sunset"}),
    "active": frozenset({"pending", "sunset"}),
    "unsubscribed": frozenset({"pending", "active", "sunset"}),
    "bounced": frozenset({"pending", "active", "sunset"}),
    "complained": frozenset({"pending", "active", "sunset", "unsubscribed"}),
    "sunset": frozenset({"active"}),
}
MAILED = frozenset({"active"})  # the one status drip steps and newsletters go to
STOPS_MAIL = frozenset({"unsubscribed", "bounced", "complained", "sunset"})


def may_become(current: str, wanted: str) -> bool:
    """Whether a subscriber in ``current`` may change to ``wanted``."""
    return current in REACHED_FROM[wanted]
