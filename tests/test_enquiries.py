"""Enquiries: the form, the service the inbound reply handler calls, acknowledgements that never
answer robots, the follow-up queue API, the digest, and the human signal for promotion."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from responder.app import start_runtime
from responder.audience.enquiries import MAX_ACK_ATTEMPTS, EnquiryIn, EnquiryLoop, open_enquiry
from responder.audience.enquiry_admin import answer
from responder.clock import FakeClock
from responder.delivery.transport import make_transport
from responder.models import Enquiry, Event
from responder.runtime import Runtime

from .conftest import App, SmtpSink, make_settings
from .public_fixtures import make_subscriber


async def acknowledged(app: App, count: int) -> None:
    """Wait until ``count`` acknowledgements are recorded (just after the SMTP server has them)."""
    for _ in range(500):
        async with app.rt.db.read() as session:
            sent = (await session.execute(select(Enquiry).where(Enquiry.ack_state == "sent"))).all()
        if len(sent) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} acknowledgements recorded")


async def test_form_enquiry_is_acknowledged_with_the_question_quoted(papp: App) -> None:
    await make_subscriber(papp, "ann@example.com")  # a stranger's question is not quoted (test_bombing)
    resp = await papp.client.post(
        "/enquiry",
        allow_redirects=False,
        data={
            "email": "ann@example.com",
            "name": "Ann Smith",
            "subject": "Pricing",
            "question": "Do you ship <script>alert(1)</script> to Norway?\nAnd Iceland?",
        },
    )
    assert resp.status == 303 and resp.headers["Location"] == "/enquiry/thanks"
    [ack] = await papp.smtp.wait_for(1, "ann@example.com")
    msg = ack.message
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "We have your question: Pricing"
    assert "List-Unsubscribe" not in msg
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "Iceland?" in text and "Wednesday 7 January 2026" in text  # 48 h after Mon 5 Jan
    await acknowledged(papp, 1)
    async with papp.rt.db.read() as session:
        enquiry = (await session.execute(select(Enquiry))).scalar_one()
    assert enquiry.ack_state == "sent" and enquiry.source == "form"
    assert enquiry.acknowledged_at is not None


async def test_json_enquiry_and_bad_input(papp: App) -> None:
    resp = await papp.client.post("/enquiry", json={"email": "bo@example.com", "question": "Hi?"})
    assert resp.status == 202
    for body in (
        {"email": "bo@example.com"},
        {"email": "bo@example.com", "question": " "},
        {"email": "not an address", "question": "x"},
        {"email": "bo@example.com", "question": "x" * 10_001},
        {"email": "bo@example.com", "question": "a\x00b"},
        {"email": "bo@example.com", "question": "x", "subject": "a\r\nBcc: c@d"},
        {"email": ["bo@example.com"], "question": "x"},
        {"email": "bo@example.com", "question": {"a": 1}},
    ):
        resp = await papp.client.post("/enquiry", json=body)
        assert resp.status == 400, body
    resp = await papp.client.post(
        "/enquiry", data={"email": "x@example.com", "question": "q", "hp_website": "spam"}, allow_redirects=False
    )
    assert resp.status == 303
    async with papp.rt.db.read() as session:
        assert len((await session.execute(select(Enquiry))).scalars().all()) == 1


async def test_reply_enquiry_is_acknowledged_once_and_never_answers_robots(papp: App) -> None:
    # The inbound server records the reply itself as the human ``reply`` event (see
    # test_inbound); the enquiry opened from it adds no second promoting event.
    subscriber, message = await make_subscriber(papp, "cy@example.com")
    auto = await open_enquiry(
        papp.rt,
        EnquiryIn(
            email="cy@example.com",
            body="I am out of office.",
            source="reply",
            subscriber_id=subscriber,
            message_id=message,
            headers={"Auto-Submitted": "auto-replied", "Subject": "Out of office"},
        ),
    )
    real = await open_enquiry(
        papp.rt,
        EnquiryIn(
            email="cy@example.com",
            name="Cy",
            subject="Re: Welcome",
            body="How do I start?",
            source="reply",
            subscriber_id=subscriber,
            message_id=message,
        ),
    )
    await acknowledged(papp, 1)  # recorded once the SMTP server has it
    [ack] = [r for r in papp.smtp.to("cy@example.com") if r.message["Auto-Submitted"]]
    assert "How do I start?" in ack.message.get_body(("plain",)).get_content()
    async with papp.rt.db.read() as session:
        rows = {e.id: e for e in (await session.execute(select(Enquiry))).scalars()}
        events = (await session.execute(select(Event).where(Event.type == "enquiry"))).scalars().all()
    assert auto is None and list(rows) == [real]  # an automatic reply is never an enquiry
    assert rows[real].ack_state == "sent"
    assert rows[real].message_id == message and rows[real].subscriber_id == subscriber
    assert events == []
    acks = [r for r in papp.smtp.to("cy@example.com") if r.message["Auto-Submitted"]]
    assert len(acks) == 1  # the out-of-office reply got no acknowledgement
    # A form's question typed with a robot's address is kept, but never acknowledged.
    robot = await open_enquiry(papp.rt, EnquiryIn(email="noreply@example.com", body="Prices?"))
    async with papp.rt.db.read() as session:
        kept = await session.get(Enquiry, robot)
    assert kept is not None and kept.ack_state == "skipped"


async def test_follow_up_queue_answer_close_and_digest(papp: App) -> None:
    ids = []
    for n in range(3):
        ids.append(await open_enquiry(papp.rt, EnquiryIn(email=f"q{n}@example.com", body=f"Question {n}")))
        papp.clock.advance(60)
    await papp.smtp.wait_for(3)
    resp = await papp.client.get("/api/v1/enquiries", headers=papp.auth)
    assert [e["id"] for e in (await resp.json())["enquiries"]] == ids  # oldest first
    resp = await papp.client.post(
        f"/api/v1/enquiries/{ids[0]}/answer", headers=papp.auth, json={"answer": "Yes, we do. <b>Really</b>."}
    )
    assert resp.status == 200 and (await resp.json())["state"] == "answered"
    [_, answer] = await papp.smtp.wait_for(2, "q0@example.com")
    assert answer.message["Auto-Submitted"] is None
    assert "Yes, we do." in answer.message.get_body(("plain",)).get_content()
    assert "&lt;b&gt;Really" in answer.message.get_body(("html",)).get_content()
    resp = await papp.client.post(f"/api/v1/enquiries/{ids[0]}/answer", headers=papp.auth, json={"answer": "again"})
    assert resp.status == 400
    for _ in range(2):
        resp = await papp.client.post(f"/api/v1/enquiries/{ids[1]}/close", headers=papp.auth)
        assert resp.status == 200 and (await resp.json())["state"] == "closed"
    assert (await papp.client.post("/api/v1/enquiries/999/close", headers=papp.auth)).status == 404
    assert (await papp.client.get("/api/v1/enquiries?state=bogus", headers=papp.auth)).status == 400
    assert (await papp.client.get("/api/v1/enquiries")).status == 401
    resp = await papp.client.get("/api/v1/enquiries", headers=papp.auth)
    assert [e["id"] for e in (await resp.json())["enquiries"]] == [ids[2]]

    # A day later the one still open goes into the admin digest, once per day.
    loop = EnquiryLoop(papp.rt, _Capture())
    assert await loop.send_digest() == 0
    papp.clock.advance(days=1)
    assert await loop.send_digest() == 1
    [digest] = loop.transport.sent
    assert b"1 enquiries waiting" in digest and b"q2@example.com" in digest
    assert await loop.send_digest() == 0
    papp.clock.advance(days=1, seconds=1)
    assert await loop.send_digest() == 1


class _Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, envelope: object, data: bytes) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        pass


async def _enquiry(rt: Runtime, enquiry_id: int) -> Enquiry:
    async with rt.db.read() as session:
        return await session.get_one(Enquiry, enquiry_id)


async def test_a_mail_claimed_by_a_worker_that_died_is_sent_once_its_lease_lapses(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    """A worker that stops between claiming an acknowledgement (or answer) and recording it
    leaves it to the next worker after ``lease_s``: late, never lost, and not sent twice."""
    rt = (await start_runtime(make_settings(database_url, smtp.url), clock)).runtime
    try:
        first = await open_enquiry(rt, EnquiryIn(email="ann@example.com", body="Hello?"))
        dead = EnquiryLoop(rt, make_transport(rt.settings))
        assert await dead._claim("ack", first)  # ... and it is killed here
        live = EnquiryLoop(rt, make_transport(rt.settings))
        assert not await live._claim("ack", first)
        await live.send_acks()
        clock.advance(rt.settings.lease_s - 1)
        await live.send_acks()
        assert smtp.received == [] and (await _enquiry(rt, first)).ack_state == "sending"
        clock.advance(2)
        await live.send_acks()
        [ack] = await smtp.wait_for(1, "ann@example.com")
        row = await _enquiry(rt, first)
        assert (row.ack_state, row.ack_attempts, row.ack_at) == ("sent", 1, None)
        assert row.acknowledged_at == clock.now()

        await answer(rt, first, "Hello to you.")
        assert await dead._claim("answer", first)
        clock.advance(rt.settings.lease_s + 1)
        await live.send_answers()
        await live.send_acks()
        await smtp.wait_for(2, "ann@example.com")
        row = await _enquiry(rt, first)
        assert (row.answer_state, row.answer_attempts, row.answer_at) == ("sent", 1, None)
        await live.send_answers()
        assert len(smtp.received) == 2

        # A worker whose lease lapsed mid-send cannot overwrite what the next one recorded.
        second = await open_enquiry(rt, EnquiryIn(email="bob@example.com", body="Me too?"))
        slow = await dead._claim("ack", second)
        assert slow is not None
        clock.advance(rt.settings.lease_s + 1)
        await live.send_acks()
        await smtp.wait_for(1, "bob@example.com")
        row = await _enquiry(rt, second)
        await dead._finish(slow, row, "due", 1, row.created_at)  # its late 451
        row = await _enquiry(rt, second)
        assert (row.ack_state, row.ack_attempts, row.ack_at) == ("sent", 1, None)
        await live.transport.close()
        await dead.transport.close()
    finally:
        await rt.close()


async def test_a_deferred_mail_waits_for_its_backoff_and_gives_up_in_the_end(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    """A 4xx from the server is retried after the delivery backoff (minutes, not every poll);
    an acknowledgement gives up after MAX_ACK_ATTEMPTS, an answer after the message lifetime."""
    rt = (await start_runtime(make_settings(database_url, smtp.url), clock)).runtime
    loop = EnquiryLoop(rt, make_transport(rt.settings))
    smtp.handler.replies["ann@example.com"] = "451 4.7.1 greylisted, try again later"
    smtp.handler.replies["bob@example.com"] = "451 4.7.1 greylisted, try again later"
    try:
        ann = await open_enquiry(rt, EnquiryIn(email="ann@example.com", body="Hello?"))
        bob = await open_enquiry(rt, EnquiryIn(email="bob@example.com", body="And me?"))
        assert await loop.send_acks() == 2
        row = await _enquiry(rt, ann)
        assert (row.ack_state, row.ack_attempts) == ("due", 1)
        assert row.ack_at is not None
        assert 225 <= (row.ack_at - clock.now()).total_seconds() <= 375
        assert await loop.send_acks() == 0  # not again at the next poll
        clock.advance(400)
        del smtp.handler.replies["ann@example.com"]
        assert await loop.send_acks() == 2
        await smtp.wait_for(1, "ann@example.com")
        assert (await _enquiry(rt, ann)).ack_state == "sent"
        for _ in range(MAX_ACK_ATTEMPTS):
            clock.advance(hours=5)
            await loop.send_acks()
        row = await _enquiry(rt, bob)
        assert (row.ack_state, row.ack_attempts, row.ack_at) == ("failed", MAX_ACK_ATTEMPTS, None)

        await answer(rt, bob, "We do.")
        await loop.send_answers()
        row = await _enquiry(rt, bob)
        assert (row.answer_state, row.answer_attempts) == ("due", 1)
        for _ in range(40):  # 5 days at most 4 hours apart
            clock.advance(hours=5)
            await loop.send_answers()
        row = await _enquiry(rt, bob)
        assert row.answer_state == "failed" and row.answer_at is None
        assert smtp.to("bob@example.com") == []
        await loop.transport.close()
    finally:
        await rt.close()
