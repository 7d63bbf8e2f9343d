"""Re-permission before sunset, through real parts: with ``sunset.ask_before`` the sweep mails
each subscriber near their sunset one "do you still want to hear from us?" (received at the SMTP
sink, once per silence); opening its link keeps nobody (scanners open every link), pressing the
page's button keeps them (in Chromium too); the silent one is sunset on time."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from typing import Any

import pytest
from playwright.async_api import BrowserContext, expect
from sqlalchemy import select

from responder.core.promotion import should_ask
from responder.funnel.scheduler import sweep_on_demand
from responder.models import Layer, Message, Subscriber

from .admin_fixtures import make_subscriber
from .browser_fixtures import CHROMIUM, LiveServer, chromium, live  # noqa: F401
from .conftest import App, SmtpSink
from .funnel_fixtures import settle

DAY = dt.timedelta(days=1)
RULE = {"sunset": {"inactive_for": "30d", "ask_before": "7d"}}


async def _subscriber(rt: Any, email: str) -> Subscriber:
    async with rt.db.read() as session:
        return (await session.execute(select(Subscriber).where(Subscriber.email == email))).scalar_one()


async def _silent_from_now(rt: Any, *emails: str) -> None:
    async with rt.db.transaction() as session:
        for email in emails:
            found = (await session.execute(select(Subscriber).where(Subscriber.email == email))).scalar_one()
            found.confirmed_at = found.created_at = rt.clock.now()


async def _sweep(app: App) -> list[dict[str, Any]]:
    resp = await app.client.post("/api/v1/funnel/sweep", headers=app.auth)
    assert resp.status == 200, await resp.text()
    moves: list[dict[str, Any]] = (await resp.json())["moves"]
    return moves


def _keep_link(mail: Any, base: str) -> str:
    text = mail.message.get_body(("plain",)).get_content()
    found = re.search(re.escape(base) + r"/keep/[\w.\-]+", text)
    assert found, text
    return found.group(0)


async def test_the_sweep_asks_once_and_only_the_button_keeps(app: App) -> None:
    resp = await app.client.patch("/api/v1/layers/1", json={"rule": RULE}, headers=app.auth)
    assert resp.status == 200, await resp.text()
    bad = await app.client.patch(
        "/api/v1/layers/1", json={"rule": {"sunset": {"inactive_for": "7d", "ask_before": "14d"}}}, headers=app.auth
    )
    assert bad.status == 400 and "ask_before must be shorter" in (await bad.json())["error"]["message"]
    for email in ("ann@example.com", "bob@example.com"):
        await make_subscriber(app.rt, email)
    await _silent_from_now(app.rt, "ann@example.com", "bob@example.com")

    app.clock.advance(days=22)  # the ask is due after 23 days of silence
    assert await _sweep(app) == []
    await settle(app)
    assert app.smtp.received == []
    app.clock.advance(days=2)
    assert await _sweep(app) == []
    await settle(app)
    asks = await app.smtp.wait_for(2)
    assert all("keep writing to you" in str(m.message["Subject"]) for m in asks)
    app.clock.advance(hours=2)
    await _sweep(app)  # asked once per silence
    await settle(app)
    assert len(app.smtp.received) == 2

    ann = next(m for m in asks if "ann@example.com" in m.rcpt_tos)
    link = app.path(_keep_link(ann, "https://news.example.com"))
    assert (await app.client.head(link)).status == 200  # a scanner's HEAD and GET keep nobody
    page = await app.client.get(link, headers={"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"})
    assert page.status == 200 and 'method="post"' in await page.text()
    assert (await _subscriber(app.rt, "ann@example.com")).last_human_at is None
    forged = await app.client.post(link, headers={"Origin": "https://evil.example"})
    assert forged.status == 403
    pressed = await app.client.post(link, headers={"Origin": "https://news.example.com"})
    assert pressed.status == 200 and "keep writing to you" in await pressed.text()
    kept_at = app.clock.now()
    assert (await _subscriber(app.rt, "ann@example.com")).last_human_at == kept_at
    assert (await app.client.get("/keep/forged-token")).status == 404

    app.clock.advance(days=7)  # 31 days since Bob's silence began
    moves = await _sweep(app)
    bob = await _subscriber(app.rt, "bob@example.com")
    # The app's own scheduler sweeps too and may have been first: either way Bob alone moved.
    assert [(m["subscriber_id"], m["sunset"]) for m in moves] in ([(bob.id, True)], [])
    assert bob.status == "sunset" and (await _subscriber(app.rt, "ann@example.com")).status == "active"
    async with app.rt.db.read() as session:
        kinds = (await session.execute(select(Message.kind))).scalars().all()
    assert sorted(kinds) == ["ask", "ask"]


def test_should_ask() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert not should_ask(RULE, start, None, start + 22 * DAY)
    assert should_ask(RULE, start, None, start + 23 * DAY)
    assert not should_ask(RULE, start, start + 23 * DAY, start + 24 * DAY)  # asked in this silence
    assert should_ask(RULE, start + 2 * DAY, start + DAY, start + 26 * DAY)  # a new silence
    assert not should_ask(RULE, start, None, start + 30 * DAY)  # too late: the sunset is due
    assert not should_ask({"sunset": {"inactive_for": "30d"}}, start, None, start + 29 * DAY)


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is missing")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_pressing_yes_keep_me_in_a_browser_keeps_them(
    chromium: BrowserContext,  # noqa: F811
    live: LiveServer,  # noqa: F811
    smtp: SmtpSink,
) -> None:
    async with live.rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        layer.rule = RULE
    await make_subscriber(live.rt, "cy@example.com")
    await _silent_from_now(live.rt, "cy@example.com")
    live.rt.clock.advance(days=24)  # type: ignore[attr-defined]
    await sweep_on_demand(live.rt.db, live.rt.clock.now(), "example.com")
    live.rt.wake_outbox()
    [mail] = await smtp.wait_for(1, "cy@example.com")
    page = await chromium.new_page()
    await page.goto(_keep_link(mail, live.url))
    await expect(page.locator("h1")).to_have_text("Keep receiving our emails?")
    assert (await _subscriber(live.rt, "cy@example.com")).last_human_at is None
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Thank you")
    assert (await _subscriber(live.rt, "cy@example.com")).last_human_at == live.rt.clock.now()
