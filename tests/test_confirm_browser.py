"""The double opt-in in a real browser: subscribe on the hosted form, open the link of the
confirmation mail the SMTP server received, see the page, press its button (a same-origin form
post under the page's CSP and the origin check), and layer 1's first mail follows."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.async_api import BrowserContext, expect
from sqlalchemy import select

from responder.models import ConsentRecord, Subscriber

from .browser_fixtures import CHROMIUM, LiveServer, chromium, live  # noqa: F401
from .conftest import SmtpSink

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is missing")


async def status_of(live: LiveServer) -> str:  # noqa: F811
    async with live.rt.db.read() as session:
        return (await session.execute(select(Subscriber.status))).scalar_one()


async def test_open_the_mailed_link_press_the_button_get_the_welcome(
    chromium: BrowserContext,  # noqa: F811
    live: LiveServer,  # noqa: F811
    smtp: SmtpSink,
) -> None:
    page = await chromium.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    await page.goto(live.url + "/subscribe/default")
    await page.fill("input[name=email]", "ada@example.com")
    await page.fill("input[name=name]", "Ada Lovelace")
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Almost there")

    [mail] = await smtp.wait_for(1, "ada@example.com")
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "press the button on the page" in text
    link = re.search(re.escape(live.url) + r"/confirm/[\w.\-]+", text)
    assert link, text

    await page.goto(link.group(0))
    await expect(page.locator("h1")).to_have_text("Confirm your subscription")
    assert await status_of(live) == "pending"  # the browser opening the link confirmed nothing
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Welcome aboard")
    assert await status_of(live) == "active"

    [_, welcome] = await smtp.wait_for(2, "ada@example.com")
    assert welcome.message["Subject"] == "Welcome to Acme & Sons, Ada"
    async with live.rt.db.read() as session:
        consent = (await session.execute(select(ConsentRecord).where(ConsentRecord.action == "confirm"))).scalar_one()
    assert consent.ip == "127.0.0.1" and "HeadlessChrome" in (consent.user_agent or "")

    await page.goto(link.group(0))  # opened again: it says so, no button
    await expect(page.locator("h1")).to_have_text("Already confirmed")
    assert await page.locator("button").count() == 0
    assert problems == []
