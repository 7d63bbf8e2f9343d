"""The double opt-in link: opening it (GET, HEAD, a mail scanner, a prefetch) only shows a page
with a button; the button's POST confirms, once, and the consent record holds that POST's
address and agent. A cross-origin POST is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from responder.clock import FakeClock
from responder.models import ConsentRecord, Enrollment, Event, Message, Subscriber

from .conftest import App, SmtpSink, confirm_path, running_app

SCANNERS = [
    "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mimecast URL Protect",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17126; Pro)",
    "",
]
PREFETCHES = [{"Sec-Purpose": "prefetch"}, {"Sec-Purpose": "prefetch;prerender"}, {"Purpose": "prefetch"}]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
async def proxied(database_url: str, smtp: SmtpSink, clock: FakeClock) -> AsyncIterator[App]:
    """The server behind a trusted proxy, so each request can come from its own address."""
    async with running_app(database_url, smtp, clock, RESPONDER_TRUSTED_PROXIES="127.0.0.1") as running:
        yield running


async def pending_link(app: App, email: str = "ada@example.com") -> str:
    resp = await app.client.post("/subscribe", json={"email": email})
    assert resp.status == 202
    [confirmation] = await app.smtp.wait_for(1, email)
    return confirm_path(confirmation)


async def state(app: App) -> tuple[str, int, int, int, int]:
    """Status, enrollments, confirm consent rows, confirm events, outbox rows."""
    async with app.rt.db.read() as session:
        status = (await session.execute(select(Subscriber.status))).scalar_one()

        async def count(model: type, *where: object) -> int:
            return (await session.execute(select(func.count()).select_from(model).where(*where))).scalar_one()  # type: ignore[arg-type]

        return (
            status,
            await count(Enrollment),
            await count(ConsentRecord, ConsentRecord.action == "confirm"),
            await count(Event, Event.type == "confirm"),
            await count(Message),
        )


async def test_opening_the_link_never_confirms(app: App) -> None:
    link = await pending_link(app)
    for agent in SCANNERS:
        head = await app.client.head(link, headers={"User-Agent": agent})
        assert head.status == 200 and await head.read() == b""
        resp = await app.client.get(link, headers={"User-Agent": agent})
        page = await resp.text()
        assert resp.status == 200 and "Confirm my subscription" in page
        assert f'<form method="post" action="{link}">' in page
    for headers in PREFETCHES:
        resp = await app.client.get(link, headers={**headers, "User-Agent": BROWSER})
        assert resp.status == 200
    # The page's own headers let its button post with a real Origin under the site's policy.
    assert "form-action 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert resp.headers["Cache-Control"] == "no-store"
    assert await state(app) == ("pending", 0, 0, 0, 1)  # no enrollment, nothing queued but the confirmation


async def test_the_button_confirms_and_the_consent_holds_its_request(proxied: App) -> None:
    app = proxied
    link = await pending_link(app)
    scanner = {"User-Agent": SCANNERS[0], "X-Forwarded-For": "203.0.113.9"}
    assert (await app.client.get(link, headers=scanner)).status == 200
    assert (await app.client.head(link, headers=scanner)).status == 200
    app.clock.advance(120)
    resp = await app.client.post(link, data={}, headers={"User-Agent": BROWSER, "X-Forwarded-For": "198.51.100.7"})
    assert resp.status == 200 and "Welcome aboard" in await resp.text()
    [welcome] = (await app.smtp.wait_for(2, "ada@example.com"))[1:]
    assert welcome.message["Subject"] == "Welcome to Acme & Sons"
    async with app.rt.db.read() as session:
        subscriber = (await session.execute(select(Subscriber))).scalar_one()
        [consent] = (
            (await session.execute(select(ConsentRecord).where(ConsentRecord.action == "confirm"))).scalars().all()
        )
        [event] = (await session.execute(select(Event).where(Event.type == "confirm"))).scalars().all()
    assert subscriber.status == "active" and subscriber.confirmed_at == app.clock.now()
    assert (consent.ip, consent.user_agent, consent.created_at) == ("198.51.100.7", BROWSER, app.clock.now())
    assert (event.ip, event.user_agent) == ("198.51.100.7", BROWSER)
    # Opened again later, the link says so and offers no button.
    resp = await app.client.get(link)
    page = await resp.text()
    assert "Already confirmed" in page and "<form" not in page


async def test_a_second_press_confirms_nothing_more(app: App) -> None:
    link = await pending_link(app)
    assert "Welcome aboard" in await (await app.client.post(link)).text()
    await app.smtp.wait_for(2, "ada@example.com")
    resp = await app.client.post(link)
    assert resp.status == 200 and "Already confirmed" in await resp.text()
    assert len(app.smtp.received) == 2
    assert await state(app) == ("active", 1, 1, 1, 2)


async def test_two_presses_at_once_confirm_once(app: App) -> None:
    link = await pending_link(app)
    answers = await asyncio.gather(app.client.post(link), app.client.post(link))
    titles = sorted(
        "Welcome aboard" if "Welcome aboard" in text else "Already confirmed"
        for text in [await answer.text() for answer in answers]
    )
    assert titles == ["Already confirmed", "Welcome aboard"]
    await app.smtp.wait_for(2, "ada@example.com")
    assert len(app.smtp.received) == 2
    assert await state(app) == ("active", 1, 1, 1, 2)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://landing.example.com"},
    ],
)
async def test_a_cross_origin_post_is_refused(app: App, headers: dict[str, str]) -> None:
    link = await pending_link(app)
    resp = await app.client.post(link, headers=headers)
    assert resp.status == 403 and "cross-origin request refused" in await resp.text()
    assert await state(app) == ("pending", 0, 0, 0, 1)
    resp = await app.client.post(link, headers={"Origin": "https://news.example.com", "Sec-Fetch-Site": "same-origin"})
    assert resp.status == 200 and (await state(app))[:4] == ("active", 1, 1, 1)


async def test_an_expired_or_forged_link_changes_nothing(app: App) -> None:
    link = await pending_link(app)
    forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    for method in ("GET", "HEAD", "POST"):
        assert (await app.client.request(method, forged)).status == 404
    app.clock.advance(days=8)
    for method in ("GET", "POST"):
        resp = await app.client.request(method, link)
        assert resp.status == 410 and "Send me a new link" in await resp.text()
    assert await state(app) == ("pending", 0, 0, 0, 1)
