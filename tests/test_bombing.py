"""No subscription bombing, no reflection (issue 17, point 4): the limits count mailboxes, not
spellings, and live in the database, so a restart does not reset them; the enquiry form mails a
stranger one acknowledgement a day, without their text."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from responder.audience.limits import client_key, mailbox_key
from responder.clock import FakeClock
from responder.models import Subscriber
from responder.web.public.pow import solve

from .conftest import SmtpSink, running_app
from .conftest import forms_file as make_forms_file
from .public_fixtures import make_subscriber

LOOSE = {  # the in-memory per-IP and per-address limits out of the way: the mailbox limit shows
    "RESPONDER_SUBSCRIBE_PER_IP_PER_HOUR": "1000",
    "RESPONDER_SUBSCRIBE_PER_ADDRESS_PER_HOUR": "1000",
}
SPAM = "CHEAP PILLS http://spam.example/buy"


def test_a_mailbox_is_one_whatever_the_spelling() -> None:
    assert mailbox_key("Victim+1@Example.com") == mailbox_key("victim+zz@example.com") == "victim@example.com"
    assert mailbox_key("j.doe@gmail.com") == mailbox_key("JDoe+news@googlemail.com") == "jdoe@gmail.com"
    assert mailbox_key("j.doe@example.com") != mailbox_key("jdoe@example.com")  # dots matter elsewhere


async def confirmations(smtp: SmtpSink, expected: int) -> int:
    """How many confirmations arrived: waits for ``expected``, then a moment for any extra."""
    await smtp.wait_for(expected)
    await asyncio.sleep(0.5)
    return len(smtp.received)


def loose_env(tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"RESPONDER_FORMS_FILE": make_forms_file(tmp_path), **LOOSE}


async def test_plus_addresses_and_a_restart_do_not_multiply_confirmations(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env = loose_env(tmp_path)
    async with running_app(database_url, smtp, clock, **env) as app:
        for number in range(15):
            resp = await app.client.post(
                "/subscribe", json={"email": f"victim+{number}@example.com", "form": "landing"}
            )
            assert resp.status == 202  # the same answer every time: nothing to enumerate
        for spelling in ("j.doe@gmail.com", "jdoe@googlemail.com", "j.d.o.e+x@gmail.com", "jdoe+y@gmail.com"):
            assert (await app.client.post("/subscribe", json={"email": spelling, "form": "landing"})).status == 202
        app.rt.wake_outbox()
        first = await confirmations(smtp, 6)
    async with running_app(database_url, smtp, clock, **env) as app:  # a restart
        for number in range(15, 30):
            await app.client.post("/subscribe", json={"email": f"victim+{number}@example.com", "form": "landing"})
        app.rt.wake_outbox()
        total = await confirmations(smtp, 6)
    victim = sum(1 for got in smtp.received if got.rcpt_tos[0].startswith("victim"))
    assert victim == 3 and total == first == 6  # confirm_per_day (3) per mailbox, 30 posts, a restart


async def test_an_enquiry_acknowledges_a_stranger_once_a_day_without_their_text(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env = loose_env(tmp_path)
    async with running_app(database_url, smtp, clock, **env) as app:
        for _ in range(50):
            resp = await app.client.post(
                "/enquiry", json={"email": "stranger@example.net", "name": SPAM, "subject": SPAM, "question": SPAM}
            )
            assert resp.status == 202
        [ack] = await smtp.wait_for(1, "stranger@example.net")
        await asyncio.sleep(0.5)
        assert len(smtp.to("stranger@example.net")) == 1
        for part in (ack.message["Subject"], ack.data.decode(errors="replace")):
            assert "PILLS" not in part and "spam.example" not in part
        # A subscriber's acknowledgement still repeats the question.
        await make_subscriber(app, "member@example.com")
        await app.client.post("/enquiry", json={"email": "member@example.com", "question": "Do you ship to Norway?"})
        [mine] = await smtp.wait_for(1, "member@example.com")
        assert "Norway" in mine.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_the_enquiry_form_asks_the_same_proof_of_work(papp) -> None:  # type: ignore[no-untyped-def]
    body = {"email": "q@example.com", "question": "Hi?", "form": "guarded"}
    resp = await papp.client.post("/enquiry", json=body)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "pow_nonce"
    challenge = await (await papp.client.get("/subscribe/guarded/challenge")).json()
    proof = {"pow_challenge": challenge["challenge"], "pow_nonce": solve(challenge["challenge"], challenge["bits"])}
    assert (await papp.client.post("/enquiry", json={**body, **proof})).status == 202
    await papp.smtp.wait_for(1, "q@example.com")


def test_a_client_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")


async def test_the_per_ip_limit_holds_across_a_restart(sqlite_url: str, smtp: SmtpSink, clock: FakeClock) -> None:
    """Three subscribe and enquiry posts an hour from one address: the fourth is refused, and
    still refused by a new process on the same database (its in-memory limiter knows nothing)."""
    env = {"RESPONDER_SUBSCRIBE_PER_IP_PER_HOUR": "3", "RESPONDER_SUBSCRIBE_PER_ADDRESS_PER_HOUR": "1000"}
    async with running_app(sqlite_url, smtp, clock, **env) as app:
        for i in range(2):
            resp = await app.client.post("/subscribe", json={"email": f"p{i}@example.org"})
            assert resp.status == 202, await resp.text()
        resp = await app.client.post("/enquiry", json={"email": "q@example.org", "question": "Price?"})
        assert resp.status == 202, await resp.text()
    async with running_app(sqlite_url, smtp, clock, **env) as app:
        resp = await app.client.post("/subscribe", json={"email": "p9@example.org"})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        resp = await app.client.post("/enquiry", json={"email": "q9@example.org", "question": "Price?"})
        assert resp.status == 429
        async with app.rt.db.read() as session:
            emails = set((await session.execute(select(Subscriber.email))).scalars())
        assert emails == {"p0@example.org", "p1@example.org"}  # the refused post stored nothing
        clock.advance(hours=1)
        resp = await app.client.post("/subscribe", json={"email": "p9@example.org"})
        assert resp.status == 202
