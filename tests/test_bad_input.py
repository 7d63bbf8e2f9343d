"""Bad input through the real HTTP app: each gets a clear error and changes nothing."""

from __future__ import annotations

import asyncio
import hmac
import re

import pytest
from sqlalchemy import func, select

from responder.clock import FakeClock
from responder.models import Enrollment, Event, Message, Subscriber

from .conftest import App, SmtpSink, running_app, sent_recorded


async def subscribers(app: App) -> int:
    async with app.rt.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Subscriber))).scalar_one())


BAD_FIELDS = [
    {"email": ""},
    {"email": "no-at-sign"},
    {"email": "a@b"},
    {"email": "a" * 250 + "@example.com"},
    {"email": "x@" + "d" * 300 + ".com"},
    {"email": "ada@example.com\r\nBcc: all@example.com"},
    {"email": "ada@exa mple.com"},
    {"email": "ada\u2028@example.com"},
    {"email": ["a@example.com"]},
    {"email": 42},
    {"email": "ada@example.com", "name": "Ada\r\nBcc: x@example.com"},
    {"email": "ada@example.com", "name": "x" * 201},
    {"email": "ada@example.com", "name": {"a": 1}},
    {"email": "ada@example.com", "consent": "c" * 2001},
    {"email": "ada@example.com", "form": "../etc/passwd"},
    {"email": "ada@example.com", "consent_version": "v\n1"},
]


async def test_subscribe_rejects_bad_fields(papp: App) -> None:
    for body in BAD_FIELDS:
        papp.clock.advance(3600)  # a fresh hour: the per-IP limit is not what is tested here
        resp = await papp.client.post("/subscribe", json=body)
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["code"] == "invalid" and error["message"]
        if all(isinstance(v, str) for v in body.values()):
            resp = await papp.client.post("/subscribe", data=body)
            assert resp.status == 400, body
            assert "text/html" in resp.headers["Content-Type"]
    assert await subscribers(papp) == 0


async def test_bad_bodies(papp: App) -> None:
    client = papp.client
    cases = [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"[" * 20_000, "application/json", 400),
        (b'{"email": "a@example.com", "x": NaN}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"email=a%40example.com", "text/plain", 400),
        ("&".join(f"f{i}=x" for i in range(100)).encode(), "application/x-www-form-urlencoded", 400),
        (b"x" * 70_000, "application/x-www-form-urlencoded", 413),
    ]
    for data, content_type, status in cases:
        resp = await client.post(
            "/subscribe", data=data, headers={"Content-Type": content_type, "Accept": "application/json"}
        )
        assert resp.status == status, (data[:20], content_type)
    assert await subscribers(papp) == 0


async def raw_request(app: App, head: bytes, body: bytes = b"", wait_s: float = 3) -> bytes:
    server = app.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head + body)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), wait_s)
    finally:
        writer.close()


async def test_huge_declared_body_is_refused_before_it_is_sent(papp: App) -> None:
    head = (
        b"POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 100000000\r\n\r\n"
    )
    answer = await raw_request(papp, head, b"email=a")
    assert answer.startswith(b"HTTP/1.1 413")


async def test_slow_body_times_out(database_url: str, smtp: SmtpSink, clock: FakeClock) -> None:
    async with running_app(database_url, smtp, clock, RESPONDER_BODY_TIMEOUT_S="0.3") as app:
        head = (
            b"POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
            b"urlencoded\r\nContent-Length: 100\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await raw_request(app, head, b"email=slow%40example.com")
        assert answer.startswith(b"HTTP/1.1 408")
        assert loop.time() - started < 2
        assert await subscribers(app) == 0


async def test_forged_and_altered_confirm_tokens(papp: App) -> None:
    await papp.client.post("/subscribe", json={"email": "ada@example.com"})
    good = papp.rt.tokens.confirm(1)
    altered = good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:]
    for token in ("x", altered, good + "A", papp.rt.tokens.unsubscribe(1), papp.rt.tokens.confirm(999), "." * 500):
        for method in ("GET", "POST"):
            resp = await papp.client.request(method, f"/confirm/{token}")
            assert resp.status == 404, (method, token)
        resp = await papp.client.post(f"/confirm/{token}/renew")
        assert resp.status in (200, 404), token  # a valid signature for a gone id says nothing
    async with papp.rt.db.read() as session:
        assert (await session.execute(select(Subscriber.status))).scalar_one() == "pending"


async def test_token_signatures_are_compared_in_constant_time(papp: App, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    good = papp.rt.tokens.open(1)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    await papp.client.get(f"/o/{forged}")
    await papp.client.get(f"/c/{forged}")
    await papp.client.get(f"/unsubscribe/{forged}")
    assert len(compared) >= 3


async def test_confirm_is_idempotent_and_an_expired_link_offers_a_new_one(papp: App) -> None:
    await papp.client.post("/subscribe", json={"email": "ada@example.com"})
    [first] = await papp.smtp.wait_for(1, "ada@example.com")
    link = re.search(r"/confirm/[\w.\-]+", first.message.get_body(("plain",)).get_content())
    assert link
    # Recorded before the clock moves: eight days on, the send's lease would have run out and
    # the mail been claimed and sent again.
    await sent_recorded(papp.rt, 1)
    papp.clock.advance(days=8)
    for method in ("GET", "POST"):
        resp = await papp.client.request(method, link.group(0))
        page = await resp.text()
        assert resp.status == 410 and "Send me a new link" in page
        assert f'action="{link.group(0)}/renew"' in page
    for _ in range(3):
        resp = await papp.client.post(f"{link.group(0)}/renew")
        assert resp.status == 200
    [_, second] = await papp.smtp.wait_for(2, "ada@example.com")
    async with papp.rt.db.read() as session:
        confirms = (
            await session.execute(select(func.count()).select_from(Message).where(Message.kind == "confirm"))
        ).scalar_one()
    assert confirms == 2  # the renewals are throttled like any confirmation
    fresh = re.search(r"/confirm/[\w.\-]+", second.message.get_body(("plain",)).get_content())
    assert fresh
    for expected in ("Welcome aboard", "Already confirmed"):
        resp = await papp.client.post(fresh.group(0))
        assert resp.status == 200 and expected in await resp.text()
    resp = await papp.client.get(fresh.group(0))
    assert resp.status == 200 and "Already confirmed" in await resp.text() and "<form" not in await resp.text()
    async with papp.rt.db.read() as session:
        enrollments = (await session.execute(select(func.count()).select_from(Enrollment))).scalar_one()
        confirm_events = (
            await session.execute(select(func.count()).select_from(Event).where(Event.type == "confirm"))
        ).scalar_one()
    assert (enrollments, confirm_events) == (1, 1)  # the second press changed nothing


async def test_api_bodies_that_are_not_json_are_400(papp: App) -> None:
    """Nesting past the parser's depth, and NaN or Infinity (Python's parser takes them, JSON
    has no such numbers), are refused like any other bad JSON, never a 500 or a stored NaN."""
    headers = {**papp.auth, "Content-Type": "application/json"}
    for body in (
        b"[" * 100_000,
        b'{"position": 1, "rule": {"preferred": {"purchase_value": NaN}}}',
        b'{"x": -Infinity}',
    ):
        resp = await papp.client.patch("/api/v1/layers/1", data=body, headers=headers)
        assert resp.status in (400, 413), (body[:30], resp.status)
        assert resp.status == 413 or "not valid JSON" in (await resp.json())["error"]["message"]
    layer = await (await papp.client.get("/api/v1/layers", headers=papp.auth)).json()
    assert "NaN" not in str(layer)
