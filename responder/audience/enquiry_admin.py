"""The follow-up queue as an admin works it: enquiries in one state oldest first, answer one
(the ``EnquiryLoop`` mails the answer), close one. The API and the admin pages both call these."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbutil import get_or_404
from ..errors import ValidationError
from ..funnel.holds import release_after_settling
from ..models import Enquiry
from ..runtime import Runtime

STATES = ("open", "answered", "closed")
MAX_ANSWER_LEN = 20_000


async def queue(rt: Runtime, state: str = "open", limit: int = 100) -> list[Enquiry]:
    if state not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}", field="state")
    async with rt.db.read() as session:
        return list(
            (
                await session.execute(
                    select(Enquiry).where(Enquiry.state == state).order_by(Enquiry.created_at, Enquiry.id).limit(limit)
                )
            ).scalars()
        )


async def answer(rt: Runtime, enquiry_id: int, text: object) -> Enquiry:
    """Record the answer and leave it due for mailing; the enquiry leaves the open queue."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_ANSWER_LEN:
        raise ValidationError(f"answer must be 1..{MAX_ANSWER_LEN} characters of text", field="answer")
    async with rt.db.transaction() as session:
        enquiry = await get_or_404(session, Enquiry, enquiry_id, "enquiry")
        if enquiry.state != "open":
            raise ValidationError(f"this enquiry is already {enquiry.state}", field="state")
        now = rt.clock.now()
        enquiry.answer = text.replace("\r\n", "\n").strip()
        enquiry.answer_state = "due"
        enquiry.state = "answered"
        enquiry.answered_at = now
        enquiry.closed_at = now
        await _settled(rt, session, enquiry, now)
    rt.wake_outbox()
    return enquiry


async def _settled(rt: Runtime, session: AsyncSession, enquiry: Enquiry, now: dt.datetime) -> None:
    """A reply answered or closed: the hold it put on the subscriber's mail ends (core.hold)."""
    if enquiry.source == "reply" and enquiry.subscriber_id is not None:
        await session.flush()
        await release_after_settling(session, enquiry.subscriber_id, now, rt.settings.reply_hold_s)
        rt.wake_scheduler()


async def close(rt: Runtime, enquiry_id: int) -> Enquiry:
    """Close without a mailed answer; closing a closed or answered enquiry changes nothing."""
    async with rt.db.transaction() as session:
        enquiry = await get_or_404(session, Enquiry, enquiry_id, "enquiry")
        if enquiry.state == "open":
            enquiry.state = "closed"
            enquiry.closed_at = rt.clock.now()
            await _settled(rt, session, enquiry, enquiry.closed_at)
    rt.wake_outbox()
    return enquiry
