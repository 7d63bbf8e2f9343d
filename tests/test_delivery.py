"""The delivery worker against a real SMTP server and both databases: claims and leases,
outcomes (sent, deferred with backoff, failed after the lifetime, bounced and suppressed),
the headers and envelope of what arrives, DKIM verified by dkimpy, pause and resume, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
from sqlalchemy import select

from responder.app import BACKGROUND
from responder.delivery import outbox
from responder.delivery.dkim import dns_record, generate_key, private_pem
from responder.delivery.verp import addresses_for
from responder.models import Event, Message

from .conftest import App, SmtpSink
from .delivery_fixtures import message, queue_newsletter, runtime_for, subscriber, worker_for


async def test_sent_mail_carries_list_headers_and_verp_envelope(database_url, smtp, clock) -> None:
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        [pk] = await queue_newsletter(rt, ["ann@example.org"])
        assert await worker.run_once() == 1
        [got] = smtp.to("ann@example.org")
        row = await message(rt, pk)
        assert row.state == "sent" and row.attempts == 1 and row.lease_owner is None
        msg = got.message
        assert msg["Message-ID"] == row.message_id
        assert msg["List-Id"] == f"<newsletter{row.newsletter_id}.acme.example.com>"
        assert msg["Feedback-ID"] == f"{row.newsletter_id}:newsletter{row.newsletter_id}:newsletter:acme.example.com"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["MIME-Version"] == "1.0" and msg["Date"]
        assert msg["From"].addresses[0].display_name == "Acme & Sons"
        assert msg["To"].addresses[0].addr_spec == "ann@example.org"
        assert msg.get_content_type() == "multipart/alternative"
        # The envelope sender maps back to this very message.
        tagged = addresses_for("test-secret-key", "acme.example.com").parse(got.mail_from)
        assert tagged is not None and (tagged.kind, tagged.id) == ("bounces", pk)
        async with rt.db.read() as session:
            sent = (await session.execute(select(Event).where(Event.type == "sent"))).scalars().all()
        assert [(e.message_id, e.type) for e in sent] == [(pk, "sent")]


async def test_4xx_defers_with_backoff_and_keeps_message_id(database_url, smtp, clock) -> None:
    smtp.handler.replies["bob@example.org"] = "451 4.3.0 try later"
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        [pk] = await queue_newsletter(rt, ["bob@example.org"])
        assert await worker.run_once() == 1
        row = await message(rt, pk)
        assert row.state == "deferred" and row.attempts == 1 and "451" in (row.last_error or "")
        wait_s = (row.next_attempt_at - clock.now()).total_seconds()
        assert 225 <= wait_s <= 375  # 5 minutes ±25% jitter
        assert await worker.run_once() == 0  # not due yet
        clock.advance(wait_s + 1)
        del smtp.handler.replies["bob@example.org"]
        assert await worker.run_once() == 1
        row2 = await message(rt, pk)
        assert row2.state == "sent" and row2.attempts == 2
        [got] = smtp.to("bob@example.org")
        assert got.message["Message-ID"] == row.message_id


async def test_gives_up_after_the_lifetime(database_url, smtp, clock) -> None:
    smtp.handler.replies["cy@example.org"] = "450 4.2.1 mailbox busy"
    async with (
        runtime_for(database_url, smtp.url, clock, RESPONDER_MESSAGE_LIFETIME_S="3600") as rt,
        worker_for(rt) as worker,
    ):
        [pk] = await queue_newsletter(rt, ["cy@example.org"])
        states = []
        for _ in range(6):
            await worker.run_once()
            row = await message(rt, pk)
            states.append(row.state)
            if row.state == "failed":
                break
            clock.advance((row.next_attempt_at - clock.now()).total_seconds() + 1)
        assert states[0] == "deferred" and states[-1] == "failed"
        assert (await message(rt, pk)).last_error.startswith("gave up: 450")  # type: ignore[union-attr]
        assert (await subscriber(rt, "cy@example.org")).status == "active"


async def test_5xx_bounces_suppresses_and_never_mails_again(database_url, smtp, clock) -> None:
    smtp.handler.replies["dan@example.org"] = "550 5.1.1 no such user"
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        [pk, ok] = await queue_newsletter(rt, ["dan@example.org", "eve@example.org"])
        assert await worker.run_once() == 2
        assert (await message(rt, pk)).state == "bounced"
        assert (await message(rt, ok)).state == "sent"
        dan = await subscriber(rt, "dan@example.org")
        assert dan.status == "bounced"
        async with rt.db.transaction() as session:
            again = await outbox.enqueue(
                session,
                subscriber_id=dan.id,
                kind="step",
                template_name="layer1-welcome",
                now=clock.now(),
                domain="acme.example.com",
            )
        await worker.run_once()
        assert (await message(rt, again)).state == "failed"  # type: ignore[arg-type]
        assert smtp.to("dan@example.org") == []
        async with rt.db.read() as session:
            bounce = (await session.execute(select(Event).where(Event.type == "bounce"))).scalar_one()
        assert bounce.message_id == pk and bounce.data["hard"] is True


async def test_expired_lease_is_reclaimed_and_outcome_written_once(database_url, smtp, clock) -> None:
    async with runtime_for(database_url, smtp.url, clock, RESPONDER_LEASE_S="60") as rt:
        [pk] = await queue_newsletter(rt, ["gus@example.org"])
        assert await outbox.claim(rt.db, owner="dead", now=clock.now(), limit=10, lease_s=60) == [pk]
        assert await outbox.claim(rt.db, owner="other", now=clock.now(), limit=10, lease_s=60) == []
        clock.advance(61)
        async with worker_for(rt) as worker:
            assert await worker.run_once() == 1
        row = await message(rt, pk)
        assert row.state == "sent" and row.attempts == 2
        async with rt.db.transaction() as session:  # the crashed owner's late outcome is refused
            assert not await outbox.finish(session, pk, "dead", state="deferred")
        assert len(smtp.to("gus@example.org")) == 1


async def test_pause_and_resume_from_the_api(app: App) -> None:
    resp = await app.client.post("/api/v1/delivery/pause", json={"reason": "checking copy"}, headers=app.auth)
    body = await resp.json()
    assert resp.status == 200 and body["paused"] is True and body["reason"] == "checking copy"
    [pk] = await queue_newsletter(app.rt, ["hal@example.org"])
    for loop in app.client.app[BACKGROUND]:
        if loop.name == "delivery":
            assert await loop.run_once() == 0
    assert (await message(app.rt, pk)).state == "queued"
    resp = await app.client.post("/api/v1/delivery/resume", headers=app.auth)
    assert (await resp.json())["paused"] is False
    await app.smtp.wait_for(1, "hal@example.org")
    resp = await app.client.get("/api/v1/delivery", headers=app.auth)
    body = await resp.json()
    assert body["paused"] is False
    assert (await app.client.post("/api/v1/delivery/pause", json={"reason": "a\nb"}, headers=app.auth)).status == 400
    assert (await app.client.post("/api/v1/delivery/pause")).status == 401
    paths = (await (await app.client.get("/api/v1/openapi.json")).json())["paths"]
    assert {"/api/v1/delivery", "/api/v1/delivery/pause", "/api/v1/delivery/resume"} <= set(paths)


async def test_metrics_count_outcomes_and_latency(app: App) -> None:
    app.smtp.handler.replies["ivy@example.org"] = "452 4.2.2 over quota"
    await queue_newsletter(app.rt, ["ivy@example.org", "joe@example.org"])
    await app.smtp.wait_for(1, "joe@example.org")
    for _ in range(100):
        text = await (await app.client.get("/metrics")).text()
        if (
            'responder_delivery_outcomes_total{outcome="deferred"} 1.0' in text
            and 'responder_messages{state="deferred"} 1.0' in text
        ):
            break
        await asyncio.sleep(0.02)
    assert 'responder_delivery_outcomes_total{outcome="sent"} 1.0' in text
    assert 'responder_delivery_outcomes_total{outcome="deferred"} 1.0' in text
    assert "responder_send_seconds_count 2.0" in text
    assert 'responder_messages{state="deferred"} 1.0' in text, text


async def test_dkim_signature_verifies_at_the_receiving_server(
    database_url: str, smtp: SmtpSink, clock, tmp_path: Path
) -> None:
    for algorithm in ("rsa", "ed25519"):
        key = generate_key(algorithm)
        key_file = tmp_path / f"{algorithm}.pem"
        key_file.write_bytes(private_pem(key))
        record = dns_record(key).encode()
        async with (
            runtime_for(
                database_url,
                smtp.url,
                clock,
                RESPONDER_DKIM_SELECTOR="s1",
                RESPONDER_DKIM_KEY_FILE=str(key_file),
                RESPONDER_INBOUND="127.0.0.1:1",
            ) as rt,
            worker_for(rt) as worker,
        ):
            address = f"{algorithm}@example.org"
            await queue_newsletter(rt, [address])
            await worker.run_once()
        [got] = smtp.to(address)
        assert got.data.startswith(b"DKIM-Signature: v=1; a=" + (b"rsa" if algorithm == "rsa" else b"ed25519"))
        signed = got.message["DKIM-Signature"]
        for name in (
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "reply-to",
        ):
            assert name in signed.split("h=")[1].split(";")[0].split(":")

        def dns(name: bytes, timeout: int = 5, record: bytes = record) -> bytes:
            assert name == b"s1._domainkey.acme.example.com."
            return record

        assert dkim.verify(got.data, dnsfunc=dns)
        assert not dkim.verify(got.data.replace(b"Subject: ", b"Subject: X"), dnsfunc=dns)


async def test_mail_is_signed_in_a_render_process_and_survives_its_death(
    database_url: str, smtp: SmtpSink, clock, tmp_path: Path
) -> None:
    """The render process renders, assembles and signs; killed between batches, a fresh one
    takes its place and the next mail is signed as well."""
    key = generate_key("rsa")
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(private_pem(key))
    record = dns_record(key).encode()
    env = {"RESPONDER_DKIM_SELECTOR": "s1", "RESPONDER_DKIM_KEY_FILE": str(key_file)}
    async with runtime_for(database_url, smtp.url, clock, RESPONDER_RENDER_PROCESSES="1", **env) as rt:
        async with worker_for(rt) as worker:
            await queue_newsletter(rt, ["first@example.org", "second@example.org"])
            assert await worker.run_once() == 2
            [child] = rt.renderer._idle
            assert child._process is not None and child.jobs == 2  # the child made both mails
            child._process.kill()
            await child._process.wait()
            await queue_newsletter(rt, ["third@example.org"])
            assert await worker.run_once() == 1
            [fresh] = rt.renderer._idle
            assert fresh is not child and fresh.jobs == 1
        async with rt.db.read() as session:
            states = list((await session.execute(select(Message.state))).scalars())
    assert states == ["sent"] * 3
    for address in ("first@example.org", "second@example.org", "third@example.org"):
        [got] = smtp.to(address)
        assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record), address


async def test_concurrent_claims_never_share_a_message(database_url, smtp, clock) -> None:
    async with runtime_for(database_url, smtp.url, clock) as rt:
        queued = await queue_newsletter(rt, [f"p{i}@example.org" for i in range(30)])
        claims = await asyncio.gather(
            *(outbox.claim(rt.db, owner=f"w{n}", now=clock.now(), limit=10, lease_s=60) for n in range(5))
        )
        claimed = [pk for batch in claims for pk in batch]
        assert sorted(claimed) == sorted(queued)  # each once, none twice
        assert all(len(batch) <= 10 for batch in claims)


async def test_each_batch_sends_the_newest_template_version_through_a_full_cache(
    database_url, smtp, clock, monkeypatch
) -> None:
    from responder.delivery import worker as worker_module
    from responder.templating.compile import compile_template
    from responder.templating.store import add_version

    async def upload(name: str, subject: str) -> None:
        compiled = compile_template("<p>{{ subscriber.first_name }}</p>", subject, "html", "text")
        async with rt.db.transaction() as session:
            await add_version(session, name, compiled, "educate", clock.now())

    # Room for one version: every batch that needs two must start the cache over.
    monkeypatch.setattr(worker_module, "TEMPLATE_CACHE", 1)
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        await upload("news-a", "A one")
        await upload("news-b", "B one")
        await queue_newsletter(rt, ["kim@example.org"], template="news-a")
        await queue_newsletter(rt, ["lou@example.org"], template="news-b")
        assert await worker.run_once() == 2
        await upload("news-a", "A two")  # a new version is used by the next claim, not a cached one
        await queue_newsletter(rt, ["max@example.org"], template="news-a")
        await queue_newsletter(rt, ["ned@example.org"], template="news-b")  # its version is kept
        assert await worker.run_once() == 2
    subjects = {
        to: smtp.to(to)[0].message["Subject"]
        for to in ("kim@example.org", "lou@example.org", "max@example.org", "ned@example.org")
    }
    assert subjects == {
        "kim@example.org": "A one",
        "lou@example.org": "B one",
        "max@example.org": "A two",
        "ned@example.org": "B one",
    }


async def test_mail_that_is_not_a_newsletter_is_claimed_ahead_of_a_newsletter_queued_before_it(
    database_url, smtp, clock
) -> None:
    """A confirmation or a drip step queued while a newsletter's rows wait goes with the next
    claim, not after them; the newsletter's rows then go oldest first."""
    async with runtime_for(database_url, smtp.url, clock) as rt:
        news = await queue_newsletter(rt, [f"n{i}@example.org" for i in range(30)])
        clock.advance(60)
        later = []
        async with rt.db.transaction() as session:
            for kind, name in (("step", "layer1-welcome"), ("confirm", "confirm")):
                who = (await session.execute(select(Message.subscriber_id).where(Message.id == news[0]))).scalar_one()
                pk = await outbox.enqueue(
                    session, subscriber_id=who, kind=kind, template_name=name, now=clock.now(), domain="example.org"
                )
                assert pk is not None
                later.append(pk)
        first = await outbox.claim(rt.db, owner="w", now=clock.now(), limit=5, lease_s=60)
        assert first == [*later, *news[:3]]
        assert await outbox.claim(rt.db, owner="w", now=clock.now(), limit=5, lease_s=60) == news[3:8]
