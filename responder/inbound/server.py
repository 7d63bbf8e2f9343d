"""The inbound SMTP server inside ``responder serve`` (``RESPONDER_INBOUND=host:port``).

It accepts mail only for our tagged addresses (``bounces+…``, ``reply+…``, ``unsubscribe+…``;
see ``delivery.verp``) and turns each mail into what it means:

- a DSN: hard → bounce event, address suppressed, message marked bounced; soft → counted;
- an ARF abuse report → complaint, the address stops receiving mail;
- a person writing to an ``unsubscribe+`` address → unsubscribed;
- a person replying → ``reply`` event (``replies.handle_reply``), and an enquiry to follow up;
- an automatic reply (out of office, vacation, list or robot mail; ``core.inbound.auto_reply``)
  to one of our mails → a machine ``reply`` event with its reason: never a promotion, never an
  enquiry; to an ``unsubscribe+`` address → nothing.

Content never gets a mail refused: subjects and text are cleaned and cut (``core.inbound``),
never rejected. Only a fault of ours (the database away) answers 451, so the sending server
tries again later; and a mail delivered again (same ``Message-ID``, same address) is recorded
once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import hashlib
import logging
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..audience.enquiries import EnquiryIn, add_enquiry
from ..audience.subscribers import opt_out
from ..core.inbound import Report, classify, one_line, plain_text
from ..delivery.verp import Addresses, Tagged, addresses_for
from ..delivery.worker import soft_bounced, suppress_bounced
from ..errors import Busy, MailUnavailable, ResponderError
from ..funnel.events import record_event
from ..funnel.holds import hold_for_reply
from ..models import InboundMail, Message, Subscriber
from ..runtime import Runtime
from ..settings import Settings
from .replies import Reply, handle_reply

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class InboundHandler:
    def __init__(self, rt: Runtime) -> None:
        assert rt.settings.secret_key is not None
        self.rt = rt
        self.addresses: Addresses = addresses_for(
            rt.settings.secret_key, rt.settings.verp_domain, rt.settings.previous_secret_keys
        )

    def _is_fbl(self, address: str) -> bool:
        fbl = self.rt.settings.fbl_address
        return fbl is not None and address.strip().lower() == fbl

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if self.addresses.parse(address) is None and not self._is_fbl(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = bytes(envelope.original_content or envelope.content)
        try:
            for address in envelope.rcpt_tos:
                tagged = self.addresses.parse(address)
                try:
                    if tagged is None:  # the feedback-loop address registered with providers
                        outcome = await process_feedback(self.rt, self.addresses, envelope.mail_from or "", data)
                    else:
                        outcome = await process(self.rt, tagged, envelope.mail_from or "", data)
                except (Busy, MailUnavailable):
                    raise
                except ResponderError as exc:  # about the content: kept out, never refused
                    outcome = f"not recorded: {exc}"
                    log.warning("inbound mail to %s could not be recorded: %s", address, exc)
                log.info("inbound mail to %s: %s", address, outcome)
        except Exception:
            log.exception("inbound mail could not be recorded")
            return "451 4.3.0 could not record this message; try again later"
        return "250 OK"


def read(data: bytes, mail_from: str) -> Report:
    """``classify``, and a person's mail with its bytes as text if the parser itself fails."""
    try:
        return classify(data, sender=mail_from)
    except Exception:  # a parser fault must not refuse the mail forever
        log.exception("inbound mail could not be parsed; kept as a person's mail")
        return Report("human", text=plain_text(data.decode("utf-8", "replace")))


async def process_feedback(rt: Runtime, addresses: Addresses, mail_from: str, data: bytes) -> str:
    """A report sent to ``RESPONDER_FBL_ADDRESS``: an ARF report about one of our mails, found by
    the VERP address it was sent from (``Original-Mail-From``, or the reported mail's
    ``Return-Path``), else by its ``Message-ID``; then recorded as if it came to that mail's
    own address."""
    report = read(data, mail_from)
    if report.kind != "arf":
        return f"ignored at the feedback address ({report.kind})"
    tagged = addresses.parse(report.original_mail_from) if report.original_mail_from else None
    if tagged is None and report.original_message_id:
        async with rt.db.read() as session:
            found = (
                await session.execute(select(Message.id).where(Message.message_id == report.original_message_id))
            ).scalar_one_or_none()
        tagged = Tagged("bounces", found) if found is not None else None
    if tagged is None:
        return "ignored at the feedback address (no mail of ours named)"
    return await process(rt, tagged, mail_from, data)


async def process(rt: Runtime, tagged: Tagged, mail_from: str, data: bytes) -> str:
    """Record what one inbound mail to one of our addresses means; a word on what was done."""
    report = read(data, mail_from)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        if report.message_id:
            digest = hashlib.sha256(f"{tagged.kind}:{tagged.id}:{report.message_id}".encode()).hexdigest()
            seen = (
                await session.execute(select(InboundMail.outcome).where(InboundMail.digest == digest))
            ).scalar_one_or_none()
            if seen is not None:
                return f"already recorded ({seen})"
            # Flushed first: a copy arriving at the same moment waits on (or fails at) this
            # row and, retried, finds it.
            session.add(InboundMail(digest=digest, outcome="recording", received_at=now))
            await session.flush()
        outcome = await _record(rt, session, tagged, mail_from, data, report, now)
        if report.message_id:
            await session.execute(update(InboundMail).where(InboundMail.digest == digest).values(outcome=outcome[:80]))
    if outcome.startswith("promoted"):
        rt.wake_scheduler()
        outcome = "reply"
    rt.wake_outbox()
    return outcome


async def _record(
    rt: Runtime, session: AsyncSession, tagged: Tagged, mail_from: str, data: bytes, report: Report, now: dt.datetime
) -> str:
    if tagged.kind == "unsubscribe":
        subscriber = await session.get(Subscriber, tagged.id)
        if subscriber is None or report.kind != "human":
            return f"ignored ({report.kind})"
        done = await opt_out(session, subscriber, now, data={"via": "mailto"})
        return "unsubscribed" if done else "already unsubscribed"
    message = await session.get(Message, tagged.id)
    if message is None:
        return "ignored (no such message)"
    subscriber = await session.get(Subscriber, message.subscriber_id)
    assert subscriber is not None
    if report.kind == "arf":
        if report.feedback_type == "not-spam":  # a reader marked it as not spam: no complaint
            return "ignored (not-spam report)"
        await _complaint(session, subscriber, message, report, now)
        return "complaint"
    if report.kind == "dsn":
        return await _bounce(session, rt.settings, subscriber, message, report, now)
    if report.kind == "auto":
        await handle_reply(session, Reply(subscriber, message, mail_from, report), now)
        return f"automatic reply ({report.auto_reason}), recorded as machine"
    recorded = await handle_reply(session, Reply(subscriber, message, mail_from, report), now)
    # Every reply is followed up: it waits in the enquiry queue and is acknowledged (the
    # acknowledgement itself is never sent to lists or automatic mail, see enquiries.py),
    # recorded with its event in this one transaction; until it is answered, the
    # subscriber's drip steps and newsletters wait (core.hold).
    enquiry = EnquiryIn(
        email=subscriber.email,
        name=one_line(subscriber.name),
        subject=report.subject,
        body=report.text.strip() or "(no text)",
        source="reply",
        subscriber_id=subscriber.id,
        message_id=message.id,
        headers=_headers(data),
    )
    enquiry_id, _ = await add_enquiry(session, enquiry, now)
    if enquiry_id is not None:
        await hold_for_reply(session, subscriber, now, rt.settings.reply_hold_s)
    return "promoted by reply" if recorded.history is not None else "reply"


def _headers(data: bytes) -> dict[str, str]:
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    return {name: str(value) for name, value in parsed.items()}


async def _complaint(session: AsyncSession, subscriber: Subscriber, message: Message, report: Report, now: Any) -> None:
    # Always on record; the status becomes ``complained`` from anything but a bounce.
    data = {"feedback_type": report.feedback_type or "abuse", "via": "arf"}
    await record_event(session, subscriber, "complaint", now, message_id=message.id, data=data)


async def _bounce(
    session: AsyncSession, settings: Settings, subscriber: Subscriber, message: Message, report: Report, now: Any
) -> str:
    failed = next((r for r in report.recipients if r.hard), None)
    if failed is not None:
        reply = f"{failed.status} {failed.diagnostic}".strip()
        await suppress_bounced(session, subscriber.id, message.id, reply, now, source="dsn")
        if message.state in ("sent", "sending"):  # a DSN can beat the record of the send
            message.state = "bounced"
            message.last_error = reply
        return "hard bounce"
    if not report.recipients:
        data = {"hard": False, "status": "", "source": "dsn"}
        await record_event(session, subscriber, "bounce", now, message_id=message.id, data=data)
        return "soft bounce"
    first = report.recipients[0]
    reply = f"{first.status} {first.diagnostic}".strip()
    await soft_bounced(session, settings, subscriber.id, message.id, first.bounce, reply, now, source="dsn")
    return f"soft bounce ({first.bounce.kind})"


async def start_inbound(rt: Runtime) -> asyncio.Server:
    assert rt.settings.inbound is not None
    host, port = rt.settings.inbound
    handler = InboundHandler(rt)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=rt.settings.verp_domain,
            ident="responder",
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
        ),
        host,
        port,
    )
