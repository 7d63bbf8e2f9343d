"""A reply to one of our mails: recorded as a ``reply`` event on the subscriber, linked to the
message. A person's reply is human, so promotion rules see it at once; an automatic one (out of
office, vacation, list or robot mail: ``core.inbound.auto_reply``) is kept as a machine reply,
with its reason, which never promotes, never counts as activity and never opens an enquiry.
Everything done with a reply starts here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from ..core.inbound import Report
from ..funnel.events import Recorded, record_event
from ..models import Message, Subscriber

SNIPPET_CHARS = 500


@dataclass(frozen=True)
class Reply:
    subscriber: Subscriber
    message: Message | None
    sender: str
    report: Report


async def handle_reply(session: AsyncSession, reply: Reply, now: dt.datetime) -> Recorded:
    """Record the reply: human when a person wrote it, machine when it is automatic."""
    assert reply.report.kind in ("human", "auto")
    automatic = reply.report.kind == "auto"
    data = {
        "from": reply.sender[:254],
        "subject": reply.report.subject[:300],
        "snippet": reply.report.text.strip()[:SNIPPET_CHARS],
    }
    if automatic:
        data["auto_reply"] = reply.report.auto_reason
    return await record_event(
        session,
        reply.subscriber,
        "reply",
        now,
        message_id=reply.message.id if reply.message else None,
        machine=automatic,
        data=data,
    )
