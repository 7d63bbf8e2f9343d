"""Enquiries: questions from the enquiry form and replies to any mail, each acknowledged at once
and kept in a follow-up queue until answered or closed.

``open_enquiry`` is the one way in (the form handler and the inbound reply handler both call it).
An automatic reply (``core.inbound.auto_reply``, the verdict the inbound server also asks) is
never an enquiry. The ``EnquiryLoop`` sends what is due: acknowledgements
(``Auto-Submitted: auto-replied``, never to robots' addresses, so two robots never talk to each
other), answers written
by an admin, and a digest of enquiries left open too long. Each mail is leased to the worker
sending it (``ack_at``/``answer_at`` hold when the lease lapses) and a temporary failure waits
for the delivery backoff, so a worker that dies mid-send delays a mail but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import html
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.inbound import auto_reply
from ..core.retry import next_attempt
from ..delivery.build import newest_template
from ..delivery.dkim import signed_mail
from ..delivery.mime import Mail, new_message_id
from ..delivery.transport import Transport
from ..errors import PermanentDeliveryError, TemplateError, TemporaryDeliveryError, ValidationError
from ..funnel.events import record_event
from ..loop import PollingLoop
from ..models import Enquiry, Subscriber
from ..runtime import Runtime
from ..settings import Settings
from ..templating.context import enquiry_context
from ..validation import clean_email, clean_name, clean_text
from . import limits
from .limits import mailbox_key

MAX_BODY_LEN = 10_000
MAX_ACK_ATTEMPTS = 5
DIGEST_CHECK_S = 60.0
SOURCES = ("form", "reply")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnquiryIn:
    email: str
    body: str
    name: str = ""
    subject: str = ""
    source: str = "form"
    subscriber_id: int | None = None
    message_id: int | None = None  # the outbox row a reply answers
    headers: Mapping[str, str] = field(default_factory=dict)  # of an inbound reply
    ip: str | None = None  # of a form's poster, for the per-address limit


def clean_enquiry(data: EnquiryIn) -> EnquiryIn:
    if data.source not in SOURCES:
        raise ValidationError(f"source must be one of {', '.join(SOURCES)}", field="source")
    body = data.body if isinstance(data.body, str) else ""
    body = body.replace("\r\n", "\n").strip()
    if not body:
        raise ValidationError("a question is required", field="question")
    if len(body) > MAX_BODY_LEN:
        raise ValidationError(f"question is longer than {MAX_BODY_LEN} characters", field="question")
    if any(ord(c) < 32 and c not in "\n\t" for c in body):
        raise ValidationError("question contains control characters", field="question")
    return EnquiryIn(
        email=clean_email(data.email),
        body=body,
        name=clean_name(data.name),
        subject=clean_text(data.subject, "subject", max_len=200),
        source=data.source,
        subscriber_id=data.subscriber_id,
        message_id=data.message_id,
        headers=data.headers,
    )


async def open_enquiry(rt: Runtime, data: EnquiryIn) -> int | None:
    """Record an enquiry and queue its acknowledgement; the enquiry's id, or None for an
    automatic reply, which is never an enquiry.

    A subscriber who asks is showing interest: the enquiry is a human ``enquiry`` event and
    their promotion rule is judged at once. A form's question from a robot's address (the
    address typed in) is kept, but neither acknowledged nor counted.
    """
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        await limits.per_ip(session, data.ip, now, limit=rt.settings.subscribe_per_ip_per_hour)
        enquiry_id, moved = await add_enquiry(session, data, now)
    if moved:
        rt.wake_scheduler()
    if enquiry_id is not None:
        rt.wake_outbox()
    return enquiry_id


async def add_enquiry(session: AsyncSession, data: EnquiryIn, now: dt.datetime) -> tuple[int | None, bool]:
    """``open_enquiry`` inside the caller's transaction (an inbound reply records its ``reply``
    event and its enquiry together): the enquiry's id (None for an automatic reply), and
    whether its event moved the subscriber."""
    data = clean_enquiry(data)
    automatic = auto_reply(data.headers, data.email)
    if automatic and data.source == "reply":
        return None, False
    moved = False
    subscriber = (
        await session.get(Subscriber, data.subscriber_id)
        if data.subscriber_id
        else (await session.execute(select(Subscriber).where(Subscriber.email == data.email))).scalar_one_or_none()
    )
    enquiry = Enquiry(
        subscriber_id=subscriber.id if subscriber else None,
        email=data.email,
        name=data.name,
        subject=data.subject,
        body=data.body,
        state="open",
        source=data.source,
        message_id=data.message_id,
        ack_state="skipped" if automatic else "due",
        ack_attempts=0,
        created_at=now,
    )
    if not automatic and (subscriber is None or subscriber.status != "active"):
        # Someone typed this address into a form: one acknowledgement a day to its mailbox.
        if await limits.hit(session, f"ack:{mailbox_key(data.email)}", now, limit=1, window_s=86400):
            enquiry.ack_state = "skipped"
    session.add(enquiry)
    await session.flush()
    # A reply was already recorded as a ``reply`` event when it arrived: one signal, not two.
    if subscriber is not None and not automatic and data.source != "reply":
        recorded = await record_event(
            session,
            subscriber,
            "enquiry",
            now,
            message_id=data.message_id,
            data={"enquiry_id": enquiry.id, "source": data.source},
        )
        moved = recorded.history is not None
    return enquiry.id, moved


def answer_by(now: dt.datetime, hours: int) -> str:
    due = now + dt.timedelta(hours=hours)
    return f"{due:%A} {due.day} {due:%B} {due:%Y}"


def ack_context(settings: Settings, enquiry: Enquiry, *, quote: bool = True) -> dict[str, Any]:
    """What the acknowledgement of ``enquiry`` is rendered against (``templating.context``).
    Without ``quote`` (the sender is not an active subscriber) the question and its subject are
    left out: anyone can type any address into a form, and the acknowledgement must not carry
    their text or links into a stranger's inbox from the business's own domain."""
    return enquiry_context(
        settings,
        name=enquiry.name if quote else "",
        email=enquiry.email,
        subject=enquiry.subject if quote else "",
        body=enquiry.body if quote else "",
        answer_by=answer_by(enquiry.created_at, settings.enquiry_answer_h),
    )


@dataclass
class _Lease:
    """This worker's hold on one enquiry's ``kind`` mail: the expiry it last wrote."""

    kind: str
    enquiry_id: int
    until: dt.datetime


class EnquiryLoop(PollingLoop):
    """Sends acknowledgements, answers and the digest; one unit is one pass over what is due."""

    name = "enquiries"

    def __init__(self, rt: Runtime, transport: Transport) -> None:
        super().__init__(rt.outbox_wake, rt.settings.worker_poll_s)
        self.rt = rt
        self.transport = transport
        self._next_digest_check_s = 0.0

    async def run_once(self) -> int:
        done = await self.send_acks() + await self.send_answers()
        now_s = time.monotonic()
        if now_s >= self._next_digest_check_s:  # the digest's own schedule is in days
            self._next_digest_check_s = now_s + DIGEST_CHECK_S
            done += await self.send_digest()
        return done

    def _due(self, kind: str, now: dt.datetime) -> ColumnElement[bool]:
        """An enquiry whose ``kind`` mail ("ack" or "answer") is due now: waiting and past its
        backoff, or claimed by a worker whose claim has lapsed (it stopped mid-send)."""
        state, at = getattr(Enquiry, f"{kind}_state"), getattr(Enquiry, f"{kind}_at")
        return or_(and_(state == "due", or_(at.is_(None), at <= now)), and_(state == "sending", at <= now))

    async def _claim(self, kind: str, enquiry_id: int) -> _Lease | None:
        """Lease one enquiry's ``kind`` mail to this worker for ``lease_s``; None if it is not
        due (another worker holds it, or it waits for a retry). A worker that dies holding it
        leaves it to the next worker once the lease lapses: the mail is late, never lost."""
        now = self.rt.clock.now()
        lease = _Lease(kind, enquiry_id, now + dt.timedelta(seconds=self.rt.settings.lease_s))
        async with self.rt.db.transaction() as session:
            result = await session.execute(
                update(Enquiry)
                .where(Enquiry.id == enquiry_id, self._due(kind, now))
                .values({f"{kind}_state": "sending", f"{kind}_at": lease.until})
            )
        return lease if result.rowcount else None  # type: ignore[attr-defined]

    async def _send_leased(self, lease: _Lease, mail: Mail) -> str:
        """``_send`` while the lease is renewed every third of it, so a slow server does not
        let another worker take the mail and send it again."""
        done = asyncio.Event()
        renewing = asyncio.create_task(self._renew(lease, done))
        try:
            return await self._send(mail)
        finally:
            done.set()  # not cancelled: a renewal in flight completes and is recorded
            await renewing

    async def _renew(self, lease: _Lease, done: asyncio.Event) -> None:
        lease_s = self.rt.settings.lease_s
        state, at = getattr(Enquiry, f"{lease.kind}_state"), getattr(Enquiry, f"{lease.kind}_at")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), lease_s / 3)
            if done.is_set():
                return
            until = self.rt.clock.now() + dt.timedelta(seconds=lease_s)
            try:
                async with self.rt.db.transaction() as session:
                    result = await session.execute(
                        update(Enquiry)
                        .where(Enquiry.id == lease.enquiry_id, state == "sending", at == lease.until)
                        .values({at: until})
                    )
            except Exception:  # the next renewal (or the lease's slack) covers a blip
                log.exception("enquiry %s: could not renew the lease", lease.enquiry_id)
                continue
            if not result.rowcount:  # type: ignore[attr-defined]
                return
            lease.until = until

    async def _finish(
        self, lease: _Lease, enquiry: Enquiry, outcome: str, attempts: int, since: dt.datetime, most: int | None = None
    ) -> None:
        """Record a send's outcome while still holding the lease; a deferred one waits for its
        backoff (as a message's does), and fails after ``most`` attempts or the message
        lifetime."""
        rt = self.rt
        kind = lease.kind
        now = rt.clock.now()
        retry_at = None
        if outcome == "due":
            retry_at = next_attempt(
                attempts,
                now,
                since,
                jitter=random.random(),
                lifetime_s=rt.settings.message_lifetime_s,
                first_s=rt.settings.retry_first_s,
            )
            if retry_at is None or (most is not None and attempts >= most):
                outcome, retry_at = "failed", None
        values: dict[str, Any] = {f"{kind}_state": outcome, f"{kind}_attempts": attempts, f"{kind}_at": retry_at}
        if kind == "ack":
            values["acknowledged_at"] = now if outcome == "sent" else None
        async with rt.db.transaction() as session:
            result = await session.execute(
                update(Enquiry)
                .where(
                    Enquiry.id == enquiry.id,
                    getattr(Enquiry, f"{kind}_state") == "sending",
                    getattr(Enquiry, f"{kind}_at") == lease.until,
                )
                .values(values)
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            log.warning(
                "enquiry %s: the %s lease was lost before its outcome (%s) was recorded", enquiry.id, kind, outcome
            )

    async def _send(self, mail: Mail) -> str:
        try:
            await self.transport.send(mail.envelope, signed_mail(self.rt.settings, mail))
        except TemporaryDeliveryError as exc:
            log.warning("enquiry mail to %s deferred: %s", mail.to_email, exc.message)
            return "due"
        except (PermanentDeliveryError, ValidationError) as exc:
            log.warning("enquiry mail to %s failed: %s", mail.to_email, exc.message)
            return "failed"
        return "sent"

    async def send_acks(self) -> int:
        rt = self.rt
        async with rt.db.read() as session:
            due = list(
                (
                    await session.execute(
                        select(Enquiry).where(self._due("ack", rt.clock.now())).order_by(Enquiry.id).limit(20)
                    )
                ).scalars()
            )
            template = await newest_template(session, "enquiry-ack")
            subscriber_ids = {e.subscriber_id for e in due if e.subscriber_id}
            active = set(
                (
                    await session.execute(
                        select(Subscriber.id).where(Subscriber.id.in_(subscriber_ids), Subscriber.status == "active")
                    )
                ).scalars()
            )
        for enquiry in due:
            lease = await self._claim("ack", enquiry.id)
            if lease is None:
                continue
            try:
                if template is None:
                    raise TemplateError("no template named 'enquiry-ack'")
                quote = enquiry.subscriber_id in active
                mail = await self.ack_mail(enquiry, template.subject, template.html, template.text, quote=quote)
                outcome = await self._send_leased(lease, mail)
            except TemplateError as exc:
                log.error("enquiry %s: acknowledgement not rendered: %s", enquiry.id, exc.message)
                outcome = "failed"
            await self._finish(
                lease, enquiry, outcome, enquiry.ack_attempts + 1, enquiry.created_at, most=MAX_ACK_ATTEMPTS
            )
        return len(due)

    async def ack_mail(
        self, enquiry: Enquiry, subject: str, body: str, text: str | None, *, quote: bool = True
    ) -> Mail:
        rt = self.rt
        context = ack_context(rt.settings, enquiry, quote=quote)
        rendered = await rt.renderer.render(subject, body, text, context)  # no footer, links untracked
        return self._mail(
            enquiry, rendered.subject, rendered.html, rendered.text, to_name=enquiry.name if quote else ""
        )

    def _mail(self, enquiry: Enquiry, subject: str, body: str, text: str, *, to_name: str | None = None) -> Mail:
        s = self.rt.settings
        return Mail(
            from_name=s.from_name,
            from_email=s.from_email,
            to_name=enquiry.name if to_name is None else to_name,
            to_email=enquiry.email,
            subject=subject,
            html=body,
            text=text,
            message_id=new_message_id(s.sender_domain),
            date=self.rt.clock.now(),
            extra_headers=(("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")),
        )

    async def send_answers(self) -> int:
        rt = self.rt
        async with rt.db.read() as session:
            due = list(
                (
                    await session.execute(
                        select(Enquiry).where(self._due("answer", rt.clock.now())).order_by(Enquiry.id).limit(20)
                    )
                ).scalars()
            )
        for enquiry in due:
            lease = await self._claim("answer", enquiry.id)
            if lease is None:
                continue
            answer = enquiry.answer or ""
            quoted = "\n".join("> " + line for line in enquiry.body.splitlines())
            text = f"{answer}\n\nYou asked:\n{quoted}\n\n-- \n{rt.settings.from_name}\n"
            body = (
                f'<p style="white-space:pre-wrap">{html.escape(answer)}</p>'
                f'<p>You asked:</p><blockquote style="white-space:pre-wrap">'
                f"{html.escape(enquiry.body)}</blockquote><p>{html.escape(rt.settings.from_name)}</p>"
            )
            subject = "Re: " + (enquiry.subject or "your question")
            mail = self._mail(enquiry, subject, body, text)
            # An answer is written by a person, not a robot: no Auto-Submitted header.
            mail = dataclasses.replace(mail, extra_headers=())
            outcome = await self._send_leased(lease, mail)
            await self._finish(
                lease, enquiry, outcome, enquiry.answer_attempts + 1, enquiry.answered_at or enquiry.created_at
            )
        return len(due)

    async def send_digest(self) -> int:
        """Mail the admin the enquiries open longer than ``enquiry_digest_after_s``, at most once
        per ``enquiry_digest_every_s``."""
        rt = self.rt
        s = rt.settings
        now = rt.clock.now()
        old = now - dt.timedelta(seconds=s.enquiry_digest_after_s)
        recent = now - dt.timedelta(seconds=s.enquiry_digest_every_s)
        async with rt.db.read() as session:
            waiting = list(
                (
                    await session.execute(
                        select(Enquiry)
                        .where(Enquiry.state == "open", Enquiry.created_at <= old)
                        .order_by(Enquiry.created_at, Enquiry.id)
                        .limit(200)
                    )
                ).scalars()
            )
        if not waiting or not any(e.digested_at is None or e.digested_at <= recent for e in waiting):
            return 0
        mail = digest_mail(
            waiting, now, s.from_name, s.from_email, s.enquiry_digest_to, s.base_url, new_message_id(s.sender_domain)
        )
        if await self._send(mail) != "sent":
            return 0
        async with rt.db.transaction() as session:
            await session.execute(
                update(Enquiry)
                .where(
                    Enquiry.id.in_([e.id for e in waiting]),
                    or_(Enquiry.digested_at.is_(None), Enquiry.digested_at <= now),
                )
                .values(digested_at=now)
            )
        return 1


def digest_mail(
    waiting: list[Enquiry],
    now: dt.datetime,
    from_name: str,
    from_email: str,
    to_email: str,
    base_url: str,
    message_id: str,
) -> Mail:
    def age(e: Enquiry) -> str:
        hours = int((now - e.created_at).total_seconds() // 3600)
        return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h"

    lines = [f"{len(waiting)} enquiries are waiting for an answer, oldest first:", ""]
    rows = []
    for e in waiting:
        first = e.body.splitlines()[0][:120] if e.body else ""
        lines.append(f"#{e.id}  {age(e)}  {e.email}  {e.subject or first}")
        rows.append(
            f"<tr><td>#{e.id}</td><td>{age(e)}</td><td>{html.escape(e.email)}</td>"
            f"<td>{html.escape(e.subject or first)}</td></tr>"
        )
    lines += ["", f"Answer or close them: {base_url}/api/v1/enquiries"]
    body = f"<p>{len(waiting)} enquiries are waiting for an answer, oldest first:</p><table>{''.join(rows)}</table>"
    return Mail(
        from_name=from_name,
        from_email=from_email,
        to_name="",
        to_email=to_email,
        subject=f"{len(waiting)} enquiries waiting for an answer",
        html=body,
        text="\n".join(lines) + "\n",
        message_id=message_id,
        date=now,
        extra_headers=(("Auto-Submitted", "auto-generated"),),
    )
