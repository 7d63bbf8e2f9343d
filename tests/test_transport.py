"""The SMTP transport's own behaviour: AUTH, reused lanes checked after idling, and the send limits
(per-domain concurrency, global rate) that the worker puts around it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.delivery import transport
from responder.delivery.mime import Envelope
from responder.delivery.ratelimit import SendLimits
from responder.delivery.transport import SmtpTransport, in_wire_form, transact
from responder.errors import RelayCannotCarry, TemporaryDeliveryError
from responder.settings import parse_smtp_url

from .conftest import RecordingHandler, free_port


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = auth_data.login == b"mailer" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def auth_server():  # type: ignore[no-untyped-def]
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, auth_require_tls=False, authenticator=authenticator
    )
    controller.start()
    yield handler, port
    controller.stop()


async def test_auth_from_the_url(auth_server) -> None:  # type: ignore[no-untyped-def]
    handler, port = auth_server
    envelope = Envelope("bounces+1-a@acme.example.com", ("a@example.org",))
    good = SmtpTransport(parse_smtp_url(f"smtp://mailer:s3cret@127.0.0.1:{port}"), lanes=2, timeout_s=5)
    for _ in range(3):
        await good.send(envelope, b"Subject: hi\r\n\r\nhi\r\n")
    await good.close()
    assert len(handler.received) == 3
    assert handler.received[0].mail_from == "bounces+1-a@acme.example.com"
    bad = SmtpTransport(parse_smtp_url(f"smtp://mailer:wrong@127.0.0.1:{port}"), lanes=1, timeout_s=5)
    with pytest.raises(TemporaryDeliveryError):  # our configuration, never the recipient's fault
        await bad.send(envelope, b"Subject: hi\r\n\r\nhi\r\n")
    await bad.close()


async def test_domain_concurrency_serialises_one_domain_only() -> None:
    limits = SendLimits(domain_concurrency=1)
    active: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def send(domain: str) -> None:
        async with limits.slot(domain):
            active[domain] = active.get(domain, 0) + 1
            peak[domain] = max(peak.get(domain, 0), active[domain])
            await asyncio.sleep(0.01)
            active[domain] -= 1

    await asyncio.gather(*(send(d) for d in ["gmail.com"] * 4 + ["a.example", "b.example"]))
    assert peak == {"gmail.com": 1, "a.example": 1, "b.example": 1}


async def test_global_rate_spreads_sends_over_the_window() -> None:
    limits = SendLimits(rate_per_s=4)
    started = time.monotonic()
    stamps = []

    async def send() -> None:
        async with limits.slot("example.org"):
            stamps.append(time.monotonic() - started)

    await asyncio.gather(*(send() for _ in range(6)))
    assert sorted(stamps)[3] < 0.2 and sorted(stamps)[4] >= 0.99  # 4 at once, then 1 s later


def test_wire_form_is_crlf_only_and_ends_with_one() -> None:
    assert in_wire_form(b"Subject: a\r\n\r\nbody\r\n.dot\r\n")
    for data in (
        b"Subject: a\n\nbody\n",
        b"Subject: a\r\n\r\nbare\rcr\r\n",
        b"Subject: a\r\n\r\nno end",
        b"Subject: a\r\n\r\nmixed\n\r\n",
        b"Subject: a\r\n\r\n\r\r\n",
    ):
        assert not in_wire_form(data), data


class OptionsHandler(RecordingHandler):
    """Also keeps each transaction's MAIL options (the SIZE the client declared)."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_options: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail_options.append(list(envelope.mail_options))
        return await super().handle_DATA(server, session, envelope)


async def test_transact_matches_aiosmtplib_sendmail_on_the_wire() -> None:
    """The same bytes arrive, with the same SIZE, as through aiosmtplib's own sendmail: lines
    that start with a dot (the first one too), a message out of wire form (sent by sendmail
    itself), and a refused recipient among accepted ones."""
    import aiosmtplib

    handler = OptionsHandler()
    handler.replies["gone@example.org"] = "550 5.1.1 no such user"
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    messages = [
        b"Subject: dots\r\n\r\n.first\r\nmiddle\r\n..two\r\n.\r\nlast\r\n",
        b".Subject: odd header line\r\n\r\nbody\r\n",
        b"Subject: bare\n\nline feeds only\n.dot\n",  # not wire form
    ]
    try:
        for data in messages:
            for send in ("sendmail", "transact"):
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
                await client.connect()
                recipients = ["a@example.org", "gone@example.org"]
                if send == "sendmail":
                    errors, _ = await client.sendmail("b@acme.example.com", recipients, data)
                else:
                    errors = await transact(client, "b@acme.example.com", recipients, data)
                assert list(errors) == ["gone@example.org"] and errors["gone@example.org"].code == 550
                await client.quit()
            by_sendmail, by_transact = handler.received[-2:]
            assert by_transact == by_sendmail
            assert handler.mail_options[-1] == handler.mail_options[-2]
            assert any(option.startswith("SIZE=") for option in handler.mail_options[-1])
        assert handler.received[0].data == messages[0]  # the server undid the stuffing
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await transact(client, "b@acme.example.com", ["gone@example.org"], messages[0])
        await transact(client, "b@acme.example.com", ["a@example.org"], messages[0])  # RSET done
        await client.quit()
        assert handler.received[-1].data == messages[0]
    finally:
        controller.stop()


@pytest.mark.parametrize("offered", [True, False])
async def test_transact_with_smtputf8(offered: bool) -> None:
    """A UTF-8 envelope goes as aiosmtplib's sendmail sends it with SMTPUTF8, when the server
    offers it; otherwise no command is sent, ``RelayCannotCarry``, and the connection goes on."""
    import aiosmtplib

    handler = OptionsHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=offered)
    controller.start()
    data = "To: <üser@t.example>\r\nSubject: hi\r\n\r\nhi\r\n".encode()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        if not offered:
            with pytest.raises(RelayCannotCarry):
                await transact(client, "b@acme.example.com", ["üser@t.example"], data, smtputf8=True)
            assert handler.received == []
            await transact(client, "b@acme.example.com", ["a@example.org"], b"Subject: hi\r\n\r\nhi\r\n")
            assert handler.received[0].rcpt_tos == ["a@example.org"]
        else:
            await client.sendmail("b@acme.example.com", ["üser@t.example"], data, mail_options=["SMTPUTF8"])
            await transact(client, "b@acme.example.com", ["üser@t.example"], data, smtputf8=True)
            by_sendmail, by_transact = handler.received
            assert by_transact == by_sendmail and by_transact.rcpt_tos == ["üser@t.example"]
            assert [o.upper() for o in handler.mail_options[1]] == [o.upper() for o in handler.mail_options[0]]
            assert "SMTPUTF8" in handler.mail_options[1]
        await client.quit()
    finally:
        controller.stop()


@settings(max_examples=500, deadline=None)
@given(st.from_regex(transport._PLAIN_ADDRESS, fullmatch=True))
def test_a_plain_address_is_written_as_aiosmtplib_writes_it(address: str) -> None:
    """MAIL and RCPT skip aiosmtplib's address parser only for addresses it would leave as
    they are inside the angle brackets."""
    from aiosmtplib.email import quote_address

    assert quote_address(address) == f"<{address}>"


async def test_addresses_that_need_quoting_go_through_aiosmtplib() -> None:
    import aiosmtplib

    handler = OptionsHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for recipient in ('"ann smith"@example.org', "o'brien@example.org", "x{y}+z@example.org"):
            await transact(client, "bounce+1-ab@acme.example.com", [recipient], b"Subject: hi\r\n\r\nhi\r\n")
        await client.quit()
    finally:
        controller.stop()
    assert [r.rcpt_tos for r in handler.received] == [
        ['"ann smith"@example.org'],
        ["o'brien@example.org"],
        ["x{y}+z@example.org"],
    ]
    assert {r.mail_from for r in handler.received} == {"bounce+1-ab@acme.example.com"}
