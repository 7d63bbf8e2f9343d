"""A reply pauses the drip, as pure functions.

When a person replies to one of our mails, a conversation has started: sending them the next
drip step (or a newsletter) before anyone has answered would be rude. So a human reply holds
every counted mail of that subscriber — drip steps and newsletters alike, held and never
dropped — until the enquiry it opened is answered or closed, or for at most ``hold_s``
(``RESPONDER_REPLY_HOLD_S``, three days by default), whichever comes first. Held mail then goes
at the first moment the layer's caps allow (``core.pacing.plan``). Transactional mail is never
held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable


def hold_after_reply(current: dt.datetime | None, replied_at: dt.datetime, hold_s: int) -> dt.datetime | None:
    """The subscriber's hold after a human reply at ``replied_at``: it lasts ``hold_s`` from the
    newest reply (a later reply never shortens it); none when holds are off (``hold_s`` 0)."""
    if hold_s <= 0:
        return current
    until = replied_at + dt.timedelta(seconds=hold_s)
    return max(current, until) if current is not None else until


def hold_after_settling(unsettled_replies: Iterable[dt.datetime], hold_s: int, now: dt.datetime) -> dt.datetime | None:
    """The hold once an enquiry is answered or closed: what the replies still waiting for an
    answer (their times) keep of it, or none — mail goes again at once."""
    if hold_s <= 0:
        return None
    ends = [at + dt.timedelta(seconds=hold_s) for at in unsettled_replies]
    latest = max(ends, default=None)
    return latest if latest is not None and latest > now else None


def held(held_until: dt.datetime | None, now: dt.datetime) -> bool:
    return held_until is not None and now < held_until
