"""A person's reply to one of our mails: recorded as a ``reply`` event on the subscriber, linked
to the message, so promotion rules see it at once. Everything done with a reply starts here."""

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
    """Record the reply (never an automatic one: the caller has sorted those out)."""
    assert reply.report.kind == "human"
    return await record_event(
        session,
        reply.subscriber,
        "reply",
        now,
        message_id=reply.message.id if reply.message else None,
        data={
            "from": reply.sender[:254],
            "subject": reply.report.subject[:300],
            "snippet": reply.report.text.strip()[:SNIPPET_CHARS],
        },
    )
