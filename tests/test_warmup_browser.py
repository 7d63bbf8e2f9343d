"""The warm-up section of the Settings page in a real browser at 375 px, with mail held by the
schedule. Screenshot: test-artifacts/screenshots/sqlite/warmup.png."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import BrowserContext, expect

from responder.clock import FakeClock

from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, serving  # noqa: F401
from .conftest import SmtpSink
from .delivery_fixtures import queue_newsletter
from .test_admin_browser import sign_in

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def warming(database_url: str, smtp: SmtpSink) -> AsyncIterator[LiveServer]:
    today = FakeClock().now().date().isoformat()  # the day the server's fake clock starts on
    async with serving(
        database_url, smtp, RESPONDER_WARMUP_START=today, RESPONDER_WARMUP_SCHEDULE="2,20,200"
    ) as server:
        yield server


async def test_the_warmup_section_at_375_px(
    chromium: BrowserContext,  # noqa: F811
    warming: LiveServer,
    smtp: SmtpSink,
    request: pytest.FixtureRequest,
) -> None:
    await queue_newsletter(warming.rt, [f"g{i}@gmail.com" for i in range(5)] + ["o@example.org"])
    await smtp.wait_for(3)
    page, problems = await sign_in(chromium, warming)
    await page.set_viewport_size({"width": 375, "height": 800})
    section = page.locator("#warmup")
    for _ in range(50):
        await page.goto(warming.url + "/admin/settings")
        if "held messages go" in await section.inner_text():
            break
    await expect(section).to_contain_text("Today is day 1 of 3: each provider may get 2 list mails.")
    await expect(section).to_contain_text("3 held messages go at 2026-01-06 00:00 UTC.")
    # The section itself fits (the DKIM table above it scrolls on its own).
    box = await section.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert await section.evaluate("s => s.scrollWidth <= s.clientWidth")
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await section.screenshot(path=str(shots / "warmup.png"))
    assert problems == []
