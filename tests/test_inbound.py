"""The inbound SMTP server inside the app: DSN bounces (hard and soft), ARF complaints, mailto
unsubscribes, human replies as ``reply`` events, automatic replies kept as machine replies that
never promote nor open an enquiry (one verdict, ``auto_reply``, on every path), and mail for
anyone else refused at RCPT."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiosmtplib
import pytest
from sqlalchemy import select

from responder.audience.enquiries import EnquiryIn, open_enquiry
from responder.core.inbound import auto_reply, classify
from responder.models import Enquiry, Event, LayerHistory, Message

from .conftest import App, free_port, running_app
from .delivery_fixtures import message, queue_newsletter, subscriber

DSN = """\
From: MAILER-DAEMON@mx.example.org
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B
Content-Type: text/rfc822-headers

Message-ID: {message_id}
Subject: hello

--B--
"""

ARF = """\
From: fbl@isp.example.net
To: {to}
Subject: Abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="A"

--A
Content-Type: text/plain

This is an abuse report.
--A
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: isp-fbl/1.0
Version: 1

--A
Content-Type: message/rfc822

From: news@acme.example.com
Message-ID: {message_id}
Subject: hello

body
--A--
"""


def plain(to: str, subject: str, body: str, **headers: str) -> str:
    extra = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    return f"From: Ann <ann@example.org>\nTo: {to}\nSubject: {subject}\n{extra}\n{body}\n"


@pytest.fixture
async def inbound_app(database_url, smtp, clock):  # type: ignore[no-untyped-def]
    port = free_port()
    async with running_app(database_url, smtp, clock, RESPONDER_INBOUND=f"127.0.0.1:{port}") as running:
        running.inbound_port = port  # type: ignore[attr-defined]
        yield running


async def deliver(app: App, sender: str, rcpt: str, text: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.inbound_port)  # type: ignore[attr-defined]
    async with client:
        await client.sendmail(sender, [rcpt], text.replace("\n", "\r\n").encode())


async def sent_to(app: App, address: str):  # type: ignore[no-untyped-def]
    [pk] = await queue_newsletter(app.rt, [address])
    [got] = await app.smtp.wait_for(1, address)
    for _ in range(500):  # and its outcome recorded
        if (await message(app.rt, pk)).state == "sent":
            break
        await asyncio.sleep(0.01)
    return pk, got


async def events(app: App, type_: str) -> list[Event]:
    async with app.rt.db.read() as session:
        return list((await session.execute(select(Event).where(Event.type == type_))).scalars())


async def test_hard_dsn_bounces_and_suppresses(inbound_app: App) -> None:
    pk, got = await sent_to(inbound_app, "ann@example.org")
    row: Message = await message(inbound_app.rt, pk)
    await deliver(
        inbound_app,
        "",
        got.mail_from,
        DSN.format(
            to=got.mail_from,
            rcpt="ann@example.org",
            action="failed",
            status="5.1.1",
            diagnostic="550 5.1.1 user unknown",
            message_id=row.message_id,
        ),
    )
    assert (await subscriber(inbound_app.rt, "ann@example.org")).status == "bounced"
    assert (await message(inbound_app.rt, pk)).state == "bounced"
    [bounce] = await events(inbound_app, "bounce")
    assert bounce.message_id == pk and bounce.data["hard"] is True and bounce.data["source"] == "dsn"


async def test_soft_dsn_is_counted_only(inbound_app: App) -> None:
    _, got = await sent_to(inbound_app, "bea@example.org")
    await deliver(
        inbound_app,
        "",
        got.mail_from,
        DSN.format(
            to=got.mail_from,
            rcpt="bea@example.org",
            action="delayed",
            status="4.4.1",
            diagnostic="451 4.4.1 no answer",
            message_id="<x@y>",
        ),
    )
    assert (await subscriber(inbound_app.rt, "bea@example.org")).status == "active"
    [bounce] = await events(inbound_app, "bounce")
    assert bounce.data == {
        "hard": False,
        "kind": "temporary",
        "status": "4.4.1",
        "source": "dsn",
        "reply": "4.4.1 smtp; 451 4.4.1 no answer",
    }


async def test_arf_complaint_stops_all_mail(inbound_app: App) -> None:
    _, got = await sent_to(inbound_app, "cat@example.org")
    await deliver(
        inbound_app,
        "fbl@isp.example.net",
        got.mail_from,
        ARF.format(to=got.mail_from, message_id=got.message["Message-ID"]),
    )
    cat = await subscriber(inbound_app.rt, "cat@example.org")
    assert cat.status == "complained" and cat.unsubscribed_at is not None
    [complaint] = await events(inbound_app, "complaint")
    assert complaint.data["feedback_type"] == "abuse"


async def test_mailto_unsubscribe(inbound_app: App) -> None:
    _, got = await sent_to(inbound_app, "dee@example.org")
    header = got.message["List-Unsubscribe"]
    mailto = header.split("<mailto:")[1].split(">")[0]
    address = mailto.split("?")[0]
    await deliver(inbound_app, "dee@example.org", address, plain(address, "unsubscribe", ""))
    assert (await subscriber(inbound_app.rt, "dee@example.org")).status == "unsubscribed"
    [event] = await events(inbound_app, "unsubscribe")
    assert event.data == {"via": "mailto"}


async def test_human_reply_is_a_reply_event_and_auto_replies_are_not(inbound_app: App) -> None:
    pk, got = await sent_to(inbound_app, "eli@example.org")
    reply_to = got.message["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("reply+")
    await deliver(
        inbound_app,
        "eli@example.org",
        reply_to,
        plain(reply_to, "Out of office", "I am away until Monday.", Auto_Submitted="auto-replied"),
    )
    await deliver(
        inbound_app, "eli@example.org", got.mail_from, plain(got.mail_from, "Away", "Away.", X_Autoreply="yes")
    )
    await deliver(inbound_app, "", reply_to, plain(reply_to, "Vacation", "gone"))
    automatic = await events(inbound_app, "reply")
    assert [(e.machine, e.data["auto_reply"]) for e in automatic] == [
        (True, "auto-submitted"),
        (True, "x-autoreply"),
        (True, "null sender"),
    ]
    await deliver(
        inbound_app,
        "eli@example.org",
        reply_to,
        plain(reply_to, "Re: hello", "Thanks, this helped. How do I start?", In_Reply_To=got.message["Message-ID"]),
    )
    [reply] = [e for e in await events(inbound_app, "reply") if not e.machine]
    eli = await subscriber(inbound_app.rt, "eli@example.org")
    assert (reply.subscriber_id, reply.message_id, reply.machine) == (eli.id, pk, False)
    assert reply.data["subject"] == "Re: hello" and "How do I start?" in reply.data["snippet"]

    # The reply is followed up: an open enquiry linked to subscriber and message, no second
    # promoting event, and an automatic acknowledgement that never loops.
    async with inbound_app.rt.db.read() as session:
        [enquiry] = (await session.execute(select(Enquiry))).scalars().all()
    assert (enquiry.subscriber_id, enquiry.message_id, enquiry.source) == (eli.id, pk, "reply")
    assert enquiry.state == "open" and "How do I start?" in enquiry.body
    assert await events(inbound_app, "enquiry") == []
    for _ in range(250):
        acks = [r for r in inbound_app.smtp.to("eli@example.org") if r.message["Auto-Submitted"] == "auto-replied"]
        if acks:
            break
        await asyncio.sleep(0.02)
    [ack] = acks
    assert "How do I start?" in ack.message.get_body(("plain",)).get_content()


async def test_mail_for_other_or_forged_addresses_is_refused(inbound_app: App) -> None:
    _, got = await sent_to(inbound_app, "fox@example.org")
    forged = got.mail_from.replace("bounces+", "reply+")
    for rcpt in ("news@acme.example.com", forged, "postmaster@elsewhere.example"):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await deliver(inbound_app, "x@example.org", rcpt, plain(rcpt, "hi", "hi"))
        assert refused.value.recipients[0].code == 550


OUT_OF_OFFICE = {"Subject": "Automatic reply: Welcome to Acme", "X-Auto-Response-Suppress": "All"}


async def test_an_out_of_office_reply_without_auto_submitted_neither_promotes_nor_opens_an_enquiry(
    inbound_app: App,
) -> None:
    """Exchange's automatic replies carry ``X-Auto-Response-Suppress`` and an "Automatic
    reply:" subject but no ``Auto-Submitted``. The default rule promotes on any reply: this one
    is a machine reply, the subscriber stays where they are, and no enquiry is opened (the
    enquiry queue asks the same verdict)."""
    pk, got = await sent_to(inbound_app, "gus@example.org")
    reply_to = got.message["Reply-To"].addresses[0].addr_spec
    inbound_app.clock.advance(60)  # a reply after entering the layer promotes: a person's would
    await deliver(
        inbound_app,
        "gus@example.org",
        reply_to,
        plain(
            reply_to,
            OUT_OF_OFFICE["Subject"],
            "I am out of the office until 12 January.",
            X_Auto_Response_Suppress="All",
            In_Reply_To=got.message["Message-ID"],
        ),
    )
    [reply] = await events(inbound_app, "reply")
    assert (reply.message_id, reply.machine, reply.data["auto_reply"]) == (pk, True, "x-auto-response-suppress")
    gus = await subscriber(inbound_app.rt, "gus@example.org")
    async with inbound_app.rt.db.read() as session:
        assert (await session.execute(select(LayerHistory))).first() is None
        assert (await session.execute(select(Enquiry))).first() is None
    assert gus.last_human_at is None
    enquiry = EnquiryIn(
        email="gus@example.org", body="I am out of the office.", source="reply", subscriber_id=gus.id, message_id=pk
    )
    assert await open_enquiry(inbound_app.rt, replace(enquiry, headers=OUT_OF_OFFICE)) is None
    await deliver(inbound_app, "gus@example.org", reply_to, plain(reply_to, "Re: Welcome to Acme", "Thanks!"))
    async with inbound_app.rt.db.read() as session:
        [move] = (await session.execute(select(LayerHistory))).scalars().all()  # a person's reply does
        [opened] = (await session.execute(select(Enquiry))).scalars().all()
    assert move.subscriber_id == gus.id and opened.subject == "Re: Welcome to Acme"


@pytest.mark.parametrize(
    ("fields", "sender", "reason"),
    [
        ({"Subject": "Re: hello"}, "ann@example.org", ""),
        ({"Auto-Submitted": "no"}, "ann@example.org", ""),
        ({"Auto-Submitted": "auto-replied"}, "ann@example.org", "auto-submitted"),
        ({"auto-submitted": "Auto-Generated"}, "ann@example.org", "auto-submitted"),
        ({"Precedence": "bulk"}, None, "precedence"),
        ({"Precedence": "list"}, None, "precedence"),
        ({"Precedence": "auto_reply"}, None, "precedence"),
        ({"X-Auto-Response-Suppress": "All"}, None, "x-auto-response-suppress"),
        ({"X-Autoreply": "yes"}, None, "x-autoreply"),
        ({"X-Autorespond": "yes"}, None, "x-autorespond"),
        ({"List-Id": "<news.example.com>"}, None, "list-id"),
        ({"List-Unsubscribe": "<mailto:u@example.com>"}, None, "list-unsubscribe"),
        ({}, "", "null sender"),
        ({}, "<>", "null sender"),
        ({"Return-Path": "<>"}, None, "null sender"),
        ({"Content-Type": "multipart/report; report-type=disposition-notification"}, None, "report"),
        ({}, "MAILER-DAEMON@example.com", "robot address"),
        ({}, "noreply@example.com", "robot address"),
        ({}, "bounces+123@example.com", "robot address"),
        ({"From": "Shop <no-reply@shop.example>"}, "x@shop.example", "robot address"),
        ({"Subject": "Automatic reply: Welcome"}, None, "subject"),
        ({"Subject": "AutoReply: Welcome"}, None, "subject"),
        ({"Subject": "Auto: Welcome"}, None, "subject"),
        ({"Subject": "Out of Office: Welcome"}, None, "subject"),
        ({"Subject": "[Auto-Reply] Welcome"}, None, "subject"),
        ({"Subject": "Abwesenheitsnotiz: Willkommen"}, None, "subject"),
        ({"Subject": "Automatische Antwort: Willkommen"}, None, "subject"),
        ({"Subject": "Réponse automatique : Bienvenue"}, None, "subject"),
        ({"Subject": "=?utf-8?q?R=C3=A9ponse_automatique_:_Bienvenue?="}, None, "subject"),
        ({"Subject": "Respuesta automática: Bienvenido"}, None, "subject"),
        ({"Subject": "Risposta automatica: Benvenuto"}, None, "subject"),
        ({"Subject": "Automatisch antwoord: Welkom"}, None, "subject"),
        ({"Subject": "Autosvar: Välkommen"}, None, "subject"),
        ({"Subject": "Odpowiedź automatyczna: Witamy"}, None, "subject"),
        ({"Subject": "Автоматический ответ: Добро пожаловать"}, None, "subject"),
        ({"Subject": "自動応答: ようこそ"}, None, "subject"),
        ({"Subject": "Re: Out of office plans"}, None, ""),  # a person writing about one
        ({"Subject": "Re: Automatic reply settings"}, None, ""),
    ],
)
def test_auto_reply_verdict(fields: dict[str, str], sender: str | None, reason: str) -> None:
    assert auto_reply(fields, sender) == reason
    if sender is not None and "Return-Path" not in fields:  # the same verdict from the raw mail
        headers = "".join(f"{name}: {value}\n" for name, value in fields.items())
        data = f"From: a@b.example\nTo: r@x.example\n{headers}\nbody\n".encode()
        if "From" in fields:
            data = data.replace(b"From: a@b.example\n", b"", 1)
        report = classify(data, sender=sender)
        assert (report.kind, report.auto_reason) == (("auto", reason) if reason else ("human", ""))


def test_dsn_and_arf_parsing() -> None:
    report = classify(
        DSN.format(
            to="t",
            rcpt="a@b.example",
            action="failed",
            status="5.1.1",
            diagnostic="550 no such user",
            message_id="<m@x>",
        ).encode()
    )
    assert report.kind == "dsn" and report.hard and report.original_message_id == "<m@x>"
    for status, diagnostic in (("5.2.2", "552 mailbox full"), ("5.7.1", "554 blocked using zen.spamhaus.org")):
        dsn = DSN.format(
            to="t", rcpt="a@b.example", action="failed", status=status, diagnostic=diagnostic, message_id=""
        )
        assert not classify(dsn.encode()).hard  # a full mailbox, a blocklist: not the address's fault
    assert report.recipients[0].address == "a@b.example"
    arf = classify(ARF.format(to="t", message_id="<n@x>").encode())
    assert (arf.kind, arf.feedback_type, arf.original_message_id) == ("arf", "abuse", "<n@x>")
