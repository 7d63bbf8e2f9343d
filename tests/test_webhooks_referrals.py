"""Outgoing webhooks against a real aiohttp receiver (signature, retries with backoff, delivery
log) and referral links from ``/r/{token}`` to a credited referrer."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from responder.funnel.referrals import referral_url
from responder.models import Event, Subscriber, WebhookDelivery

from .admin_fixtures import signed_in
from .conftest import App
from .funnel_fixtures import make_subscriber

SECRET = "whsec-test"


@dataclass
class Receiver:
    server: TestServer
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    state: dict[str, Receiver] = {}

    async def hook(request: web.Request) -> web.Response:
        r = state["r"]
        if r.fail_first > 0:
            r.fail_first -= 1
            return web.Response(status=503)
        r.got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    state["r"] = Receiver(server)
    try:
        yield state["r"]
    finally:
        await server.close()


async def wait_until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_webhooks_signed_retried_and_logged(app: App, receiver: Receiver) -> None:
    import hashlib
    import hmac

    receiver.fail_first = 1
    resp = await app.client.post(
        "/api/v1/webhooks",
        headers=app.auth,
        json={"url": receiver.url, "secret": SECRET, "events": ["purchase", "layer_changed"]},
    )
    assert resp.status == 201
    hook_id = (await resp.json())["id"]
    resp = await app.client.post("/api/v1/webhooks", headers=app.auth, json={"url": "ftp://x", "events": ["purchase"]})
    assert resp.status == 400
    ada = await make_subscriber(app.rt, "ada@example.com")
    app.clock.advance(60)
    resp = await app.client.post(
        "/api/v1/events",
        headers=app.auth,
        json={"email": "ada@example.com", "type": "purchase", "data": {"value": 49, "product": "book"}},
    )
    assert resp.status == 201 and (await resp.json())["promoted_to"] == 2
    app.rt.wake_webhooks()

    async def first_failed() -> bool:
        async with app.rt.db.read() as session:
            rows = (await session.execute(select(WebhookDelivery))).scalars().all()
        return len(rows) == 2 and any(r.attempts == 1 and r.last_status == 503 for r in rows)

    await wait_until(first_failed)
    app.clock.advance(31)  # the first retry is due 30 s later
    app.rt.wake_webhooks()

    async def both() -> bool:
        return len(receiver.got) == 2

    await wait_until(both)
    bodies = {}
    for headers, body in receiver.got:
        expected = (
            "sha256="
            + hmac.new(
                SECRET.encode(), f"{headers['X-Responder-Timestamp']}.".encode() + body, hashlib.sha256
            ).hexdigest()
        )
        assert headers["X-Responder-Signature"] == expected
        bodies[headers["X-Responder-Event"]] = json.loads(body)
    assert bodies["purchase"]["data"]["data"] == {"value": 49, "product": "book"}
    assert bodies["layer_changed"]["data"]["from_layer"] == 1
    assert bodies["layer_changed"]["data"]["to_layer"] == 2
    assert bodies["layer_changed"]["data"]["subscriber"]["id"] == ada.id

    async def logged() -> bool:
        resp = await app.client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=app.auth)
        rows = (await resp.json())["deliveries"]
        return sorted(r["state"] for r in rows) == ["delivered", "delivered"]

    await wait_until(logged)
    resp = await app.client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=app.auth)
    attempts = sorted(r["attempts"] for r in (await resp.json())["deliveries"])
    assert attempts[-1] == 2  # the one that met the 503 was retried once


async def test_referral_link_credits_the_referrer_on_confirm(app: App) -> None:
    client = app.client
    ref = await make_subscriber(app.rt, "ref@example.com", layer=4)
    app.clock.advance(60)
    link = referral_url(app.rt, ref.id)
    resp = await client.get(app.path(link), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/subscribe/default"
    resp = await client.get("/r/forged-token", allow_redirects=False)
    assert resp.status == 404
    # The cookie set by the link travels with the form post.
    resp = await client.post("/subscribe", data={"email": "new@example.com"}, allow_redirects=False)
    assert resp.status == 303
    [confirmation] = await app.smtp.wait_for(1, "new@example.com")
    text = confirmation.message.get_body(("plain",)).get_content()
    confirm_url = re.search(r"https://news\.example\.com/confirm/[\w.\-]+", text)
    assert confirm_url
    async with app.rt.db.read() as session:
        assert (
            not (await session.execute(select(Event).where(Event.subscriber_id == ref.id, Event.type == "referral")))
            .scalars()
            .all()
        )
    resp = await client.post(app.path(confirm_url.group(0)))
    assert resp.status == 200
    async with app.rt.db.read() as session:
        [credit] = (
            (await session.execute(select(Event).where(Event.subscriber_id == ref.id, Event.type == "referral")))
            .scalars()
            .all()
        )
        new = (await session.execute(select(Subscriber).where(Subscriber.email == "new@example.com"))).scalar_one()
        assert credit.data["referred_id"] == new.id and new.referred_by_id == ref.id


async def test_every_funnel_event_reaches_the_log(app: App) -> None:
    from responder.funnel.events import record_event
    from responder.models import Webhook

    async with app.rt.db.transaction() as session:
        session.add(
            Webhook(
                url="http://127.0.0.1:9/unreachable",
                secret="s",
                events=["enquiry", "referral", "unsubscribed", "purchase"],
                active=True,
                created_at=app.clock.now(),
            )
        )
    kim = await make_subscriber(app.rt, "kim@example.com")
    for type_ in ("enquiry", "referral", "purchase", "unsubscribe", "open"):
        app.clock.advance(60)
        async with app.rt.db.transaction() as session:
            subscriber = await session.get(Subscriber, kim.id)
            await record_event(session, subscriber, type_, app.clock.now())  # type: ignore[arg-type]
    async with app.rt.db.read() as session:
        events = sorted((await session.execute(select(WebhookDelivery.event))).scalars())
    assert events == ["enquiry", "purchase", "referral", "unsubscribed"]

    async def retried() -> bool:  # the unreachable URL: failed attempts logged, retry planned
        async with app.rt.db.read() as session:
            rows = (await session.execute(select(WebhookDelivery))).scalars().all()
        return all(r.attempts >= 1 and r.state == "pending" and r.last_error for r in rows)

    app.rt.wake_webhooks()
    await wait_until(retried)


async def test_the_admin_pages_show_endpoints_failures_and_who_brought_whom(app: App, receiver: Receiver) -> None:
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/webhooks")).text()
    assert "No endpoints yet" in page
    resp = await browser.post("/admin/webhooks", {"url": "ftp://nowhere", "events": "purchase"})
    assert resp.status == 400 and "absolute http or https URL" in await resp.text()
    resp = await browser.post("/admin/webhooks", {"url": receiver.url, "events": "purchase"})
    added = await resp.text()
    assert resp.status == 201 and 'id="webhook-secret"' in added
    receiver.fail_first = 1
    await make_subscriber(app.rt, "ada@example.com")
    resp = await app.client.post(
        "/api/v1/events", headers=app.auth, json={"email": "ada@example.com", "type": "purchase", "data": {"value": 5}}
    )
    assert resp.status == 201
    app.rt.wake_webhooks()

    async def failed_once() -> bool:
        async with app.rt.db.read() as session:
            return any(d.last_status == 503 for d in (await session.execute(select(WebhookDelivery))).scalars())

    await wait_until(failed_once)
    page = await (await browser.get("/admin/webhooks")).text()
    listed = page[page.index('id="webhook-list"') :]
    assert receiver.url in listed and "503" in listed and "Nothing sent yet" not in page
    assert 'id="webhook-secret"' not in page  # shown once, on the answer to adding it
    hook = re.search(r'action="(/admin/webhooks/\d+/remove)"', page)
    assert hook
    assert (await browser.post(hook.group(1), {})).status == 303
    page = await (await browser.get("/admin/webhooks?notice=removed")).text()
    assert "(removed)" in page

    ben = await make_subscriber(app.rt, "ben@example.com")
    brought = {
        status: await make_subscriber(app.rt, email)
        for email, status in (("cy@example.com", "active"), ("dee@example.com", "pending"))
    }
    async with app.rt.db.transaction() as session:
        for status, referred in brought.items():
            row = await session.get(Subscriber, referred.id)
            assert row is not None
            row.referred_by_id, row.status = ben.id, status
    page = await (await browser.get("/admin/referrals")).text()
    row = page[page.index(f'id="referrer-{ben.id}"') :]
    assert "ben@example.com</a>" in row and "<td>1</td><td>1</td>" in row
    assert "cy@example.com" in page and "dee@example.com" in page
