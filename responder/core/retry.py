"""Retry backoff for deferred messages: pure, with the jitter drawn by the caller."""

from __future__ import annotations

import datetime as dt

FIRST_RETRY_S = 300
MAX_RETRY_S = 4 * 3600
LIFETIME_S = 5 * 86400


def next_attempt(
    attempts: int,
    now: dt.datetime,
    created_at: dt.datetime,
    jitter: float = 0.5,
    lifetime_s: int = LIFETIME_S,
    first_s: float = FIRST_RETRY_S,
) -> dt.datetime | None:
    """When to try again after ``attempts`` failed tries, or None to give up.

    Exponential from ``first_s`` (5 minutes, as Postfix's ``minimal_backoff_time``), capped at
    4 hours; ``jitter`` in [0, 1) spreads retries
    by ±25% so a recovering server is not hit by every message at the same second.
    """
    delay_s = min(first_s * 2 ** max(attempts - 1, 0), MAX_RETRY_S)
    delay_s = delay_s * (0.75 + 0.5 * jitter)
    when = now + dt.timedelta(seconds=delay_s)
    if when - created_at > dt.timedelta(seconds=lifetime_s):
        return None
    return when
