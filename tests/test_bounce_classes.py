"""Each kind of refusal from a real SMTP server, and what it does to the message and the address
(``core/bounces.py``): a blocklist never suppresses, a full mailbox suppresses only after
``RESPONDER_SOFT_BOUNCE_LIMIT`` messages, a refused address at once."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import select

from responder.clock import FakeClock
from responder.delivery import outbox
from responder.delivery.worker import pause_domain, paused_domains
from responder.funnel import webhooks
from responder.models import Event, WebhookDelivery

from .admin_fixtures import signed_in
from .conftest import SmtpSink
from .delivery_fixtures import message, queue_newsletter, runtime_for, subscriber, worker_for

BLOCKED = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"


async def bounces(rt, address: str) -> list[dict]:  # type: ignore[no-untyped-def]
    async with rt.db.read() as session:
        sid = (await subscriber(rt, address)).id
        rows = await session.execute(select(Event.data).where(Event.subscriber_id == sid, Event.type == "bounce"))
        return [dict(row) for row in rows.scalars()]


async def test_a_blocklist_refusal_defers_alerts_and_never_suppresses(
    database_url: str, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.handler.replies["kim@example.org"] = BLOCKED
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        async with rt.db.transaction() as session:
            await webhooks.create_webhook(
                session, {"url": "https://hooks.example.com/x", "events": ["delivery.blocked"]}, clock.now()
            )
        [pk, other] = await queue_newsletter(rt, ["kim@example.org", "lee@example.org"])
        with caplog.at_level(logging.WARNING, logger="responder.delivery.worker"):
            await worker.run_once()
        row = await message(rt, pk)
        assert row.state == "deferred" and row.last_error == BLOCKED
        assert (await message(rt, other)).state == "sent"
        assert (await subscriber(rt, "kim@example.org")).status == "active"
        [bounce] = await bounces(rt, "kim@example.org")
        assert (bounce["hard"], bounce["kind"], bounce["status"]) == (False, "policy", "5.7.1")
        assert "not the address" in caplog.text and "example.org" in caplog.text
        async with rt.db.read() as session:
            [hook] = (await session.execute(select(WebhookDelivery))).scalars().all()
        assert hook.event == "delivery.blocked" and hook.payload["data"]["domain"] == "example.org"
        # Off the blocklist, the retry goes.
        del smtp.handler.replies["kim@example.org"]
        clock.advance(hours=1)
        await worker.run_once()
        assert (await message(rt, pk)).state == "sent"


async def test_a_full_mailbox_suppresses_only_after_the_limit(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    smtp.handler.replies["max@example.org"] = "552 5.2.2 Mailbox full"
    async with (
        runtime_for(database_url, smtp.url, clock, RESPONDER_SOFT_BOUNCE_LIMIT="3") as rt,
        worker_for(rt) as worker,
    ):
        statuses = []
        [pk] = await queue_newsletter(rt, ["max@example.org"])
        for number in range(3):  # three different messages meet the full mailbox
            if number:
                async with rt.db.transaction() as session:
                    pk = await outbox.enqueue(
                        session,
                        subscriber_id=(await subscriber(rt, "max@example.org")).id,
                        kind="step",
                        template_name="layer1-welcome",
                        now=clock.now(),
                        domain="acme.example.com",
                    )
            await worker.run_once()
            assert (await message(rt, pk)).state in ("deferred", "bounced")
            statuses.append((await subscriber(rt, "max@example.org")).status)
            clock.advance(days=1)
        assert statuses == ["active", "active", "bounced"]
        kinds = [(b["hard"], b.get("kind")) for b in await bounces(rt, "max@example.org")]
        # Six refusals (each day's retries of the earlier messages too), three messages: the
        # messages are counted, not the tries. The third day's new message goes first (a drip
        # step is claimed ahead of newsletter retries), so its suppression is not the last row.
        assert kinds.count((False, "full")) == 6 and kinds.count((True, None)) == 1


@pytest.mark.parametrize(
    ("reply", "state", "status"),
    [
        ("550 5.1.1 <x>: Recipient address rejected: User unknown", "bounced", "bounced"),
        ("550 5.2.1 The email account that you tried to reach is disabled", "bounced", "bounced"),
        ("552 5.3.4 Message size exceeds fixed maximum message size", "failed", "active"),
        ("550 5.7.26 This mail is unauthenticated", "deferred", "active"),
        ("554 Transaction failed", "failed", "active"),
    ],
)
async def test_each_kind_from_a_real_server(
    database_url: str, smtp: SmtpSink, clock: FakeClock, reply: str, state: str, status: str
) -> None:
    smtp.handler.replies["ann@example.org"] = reply
    async with runtime_for(database_url, smtp.url, clock) as rt, worker_for(rt) as worker:
        [pk] = await queue_newsletter(rt, ["ann@example.org"])
        await worker.run_once()
        assert (await message(rt, pk)).state == state
        assert (await subscriber(rt, "ann@example.org")).status == status


async def test_a_domain_that_keeps_refusing_is_paused_and_the_admin_sees_it(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    people = [f"p{n}@blocked.example" for n in range(3)]
    for address in people:
        smtp.handler.replies[address] = BLOCKED
    env = {"RESPONDER_BLOCKED_PAUSE_AFTER": "2", "RESPONDER_BLOCKED_PAUSE_S": "3600"}
    async with runtime_for(database_url, smtp.url, clock, **env) as rt, worker_for(rt) as worker:
        first = await queue_newsletter(rt, people)
        await worker.run_once()  # three refusals: the domain is paused from the next claim
        assert {(await message(rt, pk)).state for pk in first} == {"deferred"}
        async with rt.db.read() as session:
            [pause] = (await paused_domains(session, clock.now())).values()
        assert pause.domain == "blocked.example" and "spamhaus" in pause.reason
        for address in people:  # off the blocklist already, but the pause holds
            del smtp.handler.replies[address]
        clock.advance(minutes=30)
        async with rt.db.transaction() as session:
            held = await outbox.enqueue(
                session,
                subscriber_id=(await subscriber(rt, people[0])).id,
                kind="step",
                template_name="layer1-welcome",
                now=clock.now(),
                domain="acme.example.com",
            )
        await worker.run_once()
        row = await message(rt, held)
        assert row.state == "deferred" and (row.last_error or "").startswith("blocked.example is paused until")
        assert smtp.received == [] and row.next_attempt_at == pause.until
        assert [(await subscriber(rt, address)).status for address in people] == ["active"] * 3
        clock.advance(minutes=31)  # the pause is over: everything held goes
        await worker.run_once()
        assert {(await message(rt, pk)).state for pk in [*first, held]} == {"sent"}


async def test_the_dashboard_names_a_paused_domain(app) -> None:  # type: ignore[no-untyped-def]
    now = app.clock.now()
    async with app.rt.db.transaction() as session:
        await pause_domain(session, "blocked.example", now + dt.timedelta(hours=1), BLOCKED, now)
        await pause_domain(session, "over.example", now - dt.timedelta(minutes=1), BLOCKED, now)  # ended
    browser = await signed_in(app.rt, app.client)
    html = await (await browser.get("/admin/")).text()
    assert 'id="paused-blocked.example"' in html and "zen.spamhaus.org" in html and "over.example" not in html
