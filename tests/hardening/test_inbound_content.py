"""Inbound mail is never refused for what it says (issue 18, point 5): an oversize subject, an
encoded CR LF in it, control characters in the body or bytes that are not UTF-8 are cleaned and
recorded, with one reply event and one enquiry; the same mail delivered twice (same
``Message-ID``) is recorded once."""

from __future__ import annotations

import asyncio

import aiosmtplib
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from responder.core.inbound import classify, one_line, plain_text
from responder.models import Enquiry, Event, InboundMail

from ..test_inbound import deliver, inbound_app, sent_to  # noqa: F401  (fixture)


def reply_bytes(to: str, subject: str, body: bytes, message_id: str = "<r1@example.org>") -> bytes:
    head = f"From: Ann <ann@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
    head += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    return head.encode() + body + b"\r\n"


async def send(app, rcpt: str, data: bytes) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.inbound_port)
    async with client:
        errors, message = await client.sendmail("ann@example.org", [rcpt], data)
    assert errors == {}
    return 250, message


async def counts(app) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    async with app.rt.db.read() as session:
        replies = (await session.execute(select(func.count()).select_from(Event).where(Event.type == "reply"))).scalar()
        enquiries = (await session.execute(select(func.count()).select_from(Enquiry))).scalar()
    return int(replies or 0), int(enquiries or 0)


async def test_odd_replies_are_cleaned_not_refused_and_a_redelivery_counts_once(inbound_app) -> None:  # type: ignore[no-untyped-def]
    _, got = await sent_to(inbound_app, "ann@example.org")
    reply_to = got.message["Reply-To"].addresses[0].addr_spec
    cases = [
        ("Re: " + "long " * 80, b"a long subject", "<long@example.org>"),
        ("=?utf-8?q?Re=3A_hi=0D=0AX-Injected:_1?=", b"an encoded CR LF", "<crlf@example.org>"),
        ("Re: controls", b"bell \x07 start \x01 del \x7f done", "<ctl@example.org>"),
        ("Re: bytes", b"latin \xe9\xff not utf-8", "<bytes@example.org>"),
    ]
    for subject, body, message_id in cases:
        await send(inbound_app, reply_to, reply_bytes(reply_to, subject, body, message_id))
    assert await counts(inbound_app) == (4, 4)
    async with inbound_app.rt.db.read() as session:
        enquiries = (await session.execute(select(Enquiry).order_by(Enquiry.id))).scalars().all()
    subjects = [e.subject for e in enquiries]
    assert len(subjects[0]) == 200 and subjects[0].startswith("Re: long long")
    assert subjects[1] == "Re: hi X-Injected: 1"  # decoded, the line break a space
    assert all("\r" not in s and "\n" not in s for s in subjects)
    assert enquiries[2].body == "bell  start  del  done"
    assert "latin" in enquiries[3].body and "\x00" not in enquiries[3].body

    # The same mail again (a sender's retry after a lost 250): recorded once.
    again = reply_bytes(reply_to, "Re: controls", b"bell \x07 start", "<ctl@example.org>")
    await send(inbound_app, reply_to, again)
    assert await counts(inbound_app) == (4, 4)

    # What is remembered to spot copies goes after 30 days, with the scheduler's hourly sweep.
    inbound_app.clock.advance(days=31)
    inbound_app.rt.wake_scheduler()
    for _ in range(250):
        async with inbound_app.rt.db.read() as session:
            left = (await session.execute(select(func.count()).select_from(InboundMail))).scalar()
        if left == 0:
            break
        await asyncio.sleep(0.02)
    assert left == 0


def test_classify_cleans_what_it_reports() -> None:
    raw = reply_bytes("reply+x@t.example", "=?utf-8?b?" + "SGk=" + "?= \u0085there", b"body\x00\x1b[31m red")
    report = classify(raw, sender="ann@example.org")
    assert report.kind == "human" and report.subject == "Hi there" and report.message_id == "<r1@example.org>"
    assert report.text.strip() == "body[31m red"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_cleaned_text_is_safe_whatever_came(value: str) -> None:
    line = one_line(value)
    assert len(line) <= 200 and line == line.strip()
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in line)
    text = plain_text(value)
    assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\r" not in text


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_the_parser_never_raises_on_bytes(data: bytes) -> None:
    report = classify(b"Subject: x\r\n" + data, sender="a@b.example")
    assert report.kind in ("human", "auto", "dsn", "arf")
