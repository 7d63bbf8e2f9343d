"""An SMTP fault at each stage of a delivery, and the state each message ends in (issue 18,
point 9): nothing is lost, a temporary fault is retried and then sent, and only a refusal of
the recipient itself suppresses the address."""

from __future__ import annotations

import email
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller

from responder.clock import FakeClock
from responder.delivery.dkim import dns_record, generate_key, private_pem
from responder.delivery.transport import NO_SMTPUTF8

from ..conftest import RecordingHandler, SmtpSink, free_port
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


@dataclass
class MailCommands(RecordingHandler):
    """Also keeps each MAIL command's address and parameters (SMTPUTF8, SIZE)."""

    mails: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.mails.append((address, list(options)))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


@contextmanager
def relay(*, smtputf8: bool) -> Iterator[tuple[SmtpSink, MailCommands]]:
    """A real aiosmtpd server whose EHLO offers SMTPUTF8 or not."""
    handler = MailCommands()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        yield SmtpSink(handler, port), handler
    finally:
        controller.stop()


async def test_international_addresses_go_by_smtputf8(database_url: str, clock: FakeClock, tmp_path: Path) -> None:
    """A non-ASCII local part goes with SMTPUTF8 (RFC 6531) to a relay offering it: UTF-8 in
    the envelope and in To (RFC 6532), DKIM-signed over those bytes. ASCII mail beside it is
    sent as ever, without the parameter; an internationalised domain travels in IDNA."""
    key = generate_key("ed25519")
    (tmp_path / "k.pem").write_bytes(private_pem(key))
    dkim_env = {"RESPONDER_DKIM_SELECTOR": "s1", "RESPONDER_DKIM_KEY_FILE": str(tmp_path / "k.pem")}
    with relay(smtputf8=True) as (smtp, handler):
        async with runtime_for(database_url, smtp.url, clock, **dkim_env) as rt, worker_for(rt) as worker:
            pks = await queue_newsletter(rt, ["üser@t.example", "ann@example.org", "jörg@exämple.com"])
            await worker.run_once()
            assert [(await message(rt, pk)).state for pk in pks] == ["sent"] * 3
        [utf8] = smtp.to("üser@t.example")
        [ascii_] = smtp.to("ann@example.org")
        [both] = smtp.to("jörg@xn--exmple-cua.com")
        options = {address: opts for address, opts in handler.mails}
        assert "SMTPUTF8" in options[utf8.mail_from] and "SMTPUTF8" in options[both.mail_from]
        assert "SMTPUTF8" not in options[ascii_.mail_from] and utf8.mail_from.isascii()  # VERP: a row id, no address
        parsed = email.message_from_string(utf8.data.decode("utf-8"), policy=policy.default)
        assert parsed["To"].addresses[0].addr_spec == "üser@t.example"
        assert "To: Reader 0 <üser@t.example>\r\n".encode() in utf8.data
        assert ascii_.data.isascii() and b"To: Reader 1 <ann@example.org>\r\n" in ascii_.data
        for got in (utf8, ascii_, both):
            assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: dns_record(key).encode())


async def test_international_addresses_fail_at_once_without_smtputf8(database_url: str, clock: FakeClock) -> None:
    """A relay without SMTPUTF8 gets no command for a non-ASCII local part: the message fails at
    once with the reason, and is not claimed again when its lease runs out. An internationalised
    domain needs no SMTPUTF8 (IDNA) and goes."""
    with relay(smtputf8=False) as (smtp, handler):
        async with (
            runtime_for(database_url, smtp.url, clock, RESPONDER_LEASE_S="10") as rt,
            worker_for(rt) as worker,
        ):
            [idn, utf8] = await queue_newsletter(rt, ["c1r@exämple.com", "üser@t.example"])
            await worker.run_once()
            [got] = smtp.received
            assert got.rcpt_tos == ["c1r@xn--exmple-cua.com"] and "c1r@xn--exmple-cua.com" in got.message["To"]
            assert (await message(rt, idn)).state == "sent"
            row = await message(rt, utf8)
            assert row.state == "failed" and row.last_error == NO_SMTPUTF8
            assert len(handler.mails) == 1  # none for it
            clock.advance(seconds=60)  # past the lease: nothing is claimed again
            await worker.run_once()
            assert (await message(rt, utf8)).attempts == row.attempts and len(smtp.received) == 1
            assert (await subscriber(rt, "üser@t.example")).status == "active"  # not the address's fault
