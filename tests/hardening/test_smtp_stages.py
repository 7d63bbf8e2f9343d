"""An SMTP fault at each stage of a delivery, and the state each message ends in (issue 18,
point 9): nothing is lost, a temporary fault is retried and then sent, and only a refusal of
the recipient itself suppresses the address."""

from __future__ import annotations

import pytest

from responder.clock import FakeClock

from ..conftest import SmtpSink, free_port
from ..delivery_fixtures import message, queue_newsletter, runtime_for, subscriber, worker_for
from ..smtp_faults import fault_server

# (stage, the server's answer there, the message's state after the first try, subscriber status)
STAGES = [
    ("MAIL", "451 4.3.0 sender check failed, try later", "deferred", "active"),
    ("RCPT", "450 4.2.1 mailbox busy", "deferred", "active"),
    ("RCPT", "550 5.1.1 no such user", "bounced", "bounced"),
    ("DATA", "451 4.3.0 local error in processing", "deferred", "active"),
    (".", "451 4.7.1 greylisted, try again in 5 minutes", "deferred", "active"),
    ("MAIL", "550 5.7.1 sender rejected", "deferred", "active"),  # the sender's fault, not the address's
]


@pytest.mark.parametrize(("verb", "reply", "state", "status"), STAGES)
async def test_a_refusal_at_each_stage(
    database_url: str, clock: FakeClock, verb: str, reply: str, state: str, status: str
) -> None:
    async with (
        fault_server(replies={verb: reply}) as server,
        runtime_for(database_url, server.url, clock) as rt,
        worker_for(rt) as worker,
    ):
        [pk] = await queue_newsletter(rt, ["max@example.org"])
        await worker.run_once()
        row = await message(rt, pk)
        assert row.state == state and reply[:3] in (row.last_error or ""), row.last_error
        assert (await subscriber(rt, "max@example.org")).status == status
        assert server.accepted == []
        if state == "deferred":  # the fault passes: the retry sends it, once
            server.replies.clear()
            clock.advance(hours=1)
            await worker.run_once()
            assert (await message(rt, pk)).state == "sent"
            assert server.accepted == [row.message_id.encode()]


@pytest.mark.parametrize("relay", ["closed-port", "unresolvable"])
async def test_an_unreachable_relay_defers_and_loses_nothing(database_url: str, clock: FakeClock, relay: str) -> None:
    url = f"smtp://127.0.0.1:{free_port()}" if relay == "closed-port" else "smtp://relay.nowhere.invalid:25"
    async with runtime_for(database_url, url, clock, RESPONDER_SMTP_TIMEOUT_S="2") as rt, worker_for(rt) as worker:
        pks = await queue_newsletter(rt, ["a@example.org", "b@example.org"])
        await worker.run_once()
        rows = [await message(rt, pk) for pk in pks]
        assert [row.state for row in rows] == ["deferred", "deferred"], [row.last_error for row in rows]
        assert all(row.last_error for row in rows)
        assert (await subscriber(rt, "a@example.org")).status == "active"


async def test_international_addresses_go_or_fail_at_once(database_url: str, smtp: SmtpSink, clock: FakeClock) -> None:
    """An internationalised domain travels in IDNA; a non-ASCII local part (which needs SMTPUTF8)
    fails at once with the reason, and is not claimed again when its lease runs out."""
    async with runtime_for(database_url, smtp.url, clock, RESPONDER_LEASE_S="10") as rt, worker_for(rt) as worker:
        [idn, utf8] = await queue_newsletter(rt, ["c1r@exämple.com", "üser@t.example"])
        await worker.run_once()
        [got] = smtp.received
        assert got.rcpt_tos == ["c1r@xn--exmple-cua.com"] and "c1r@xn--exmple-cua.com" in got.message["To"]
        assert (await message(rt, idn)).state == "sent"
        row = await message(rt, utf8)
        assert row.state == "failed" and "SMTPUTF8" in (row.last_error or "")
        clock.advance(seconds=60)  # past the lease: nothing is claimed again
        await worker.run_once()
        assert (await message(rt, utf8)).attempts == row.attempts and len(smtp.received) == 1
