"""The SMTP transport's own behaviour: AUTH, reused lanes checked after idling, and the send limits
(per-domain concurrency, global rate) that the worker puts around it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from responder.delivery.mime import Envelope
from responder.delivery.ratelimit import SendLimits
from responder.delivery.transport import SmtpTransport
from responder.errors import TemporaryDeliveryError
from responder.settings import parse_smtp_url

from .conftest import RecordingHandler, free_port


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = auth_data.login == b"mailer" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def auth_server():  # type: ignore[no-untyped-def]
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=authenticator)
    controller.start()
    yield handler, port
    controller.stop()


async def test_auth_from_the_url(auth_server) -> None:  # type: ignore[no-untyped-def]
    handler, port = auth_server
    envelope = Envelope("bounces+1-a@acme.example.com", ("a@example.org",))
    good = SmtpTransport(parse_smtp_url(f"smtp://mailer:s3cret@127.0.0.1:{port}"), lanes=2,
                         timeout_s=5)
    for _ in range(3):
        await good.send(envelope, b"Subject: hi\r\n\r\nhi\r\n")
    await good.close()
    assert len(handler.received) == 3
    assert handler.received[0].mail_from == "bounces+1-a@acme.example.com"
    bad = SmtpTransport(parse_smtp_url(f"smtp://mailer:wrong@127.0.0.1:{port}"), lanes=1,
                        timeout_s=5)
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
