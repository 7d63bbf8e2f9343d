"""In Chromium (issue 17, point 7): a reader subscribes on the hosted form and the admin sees
the consent record with the page it was given on; the complaint governor holds a layer's mail to
Gmail, the dashboard says so with the figures, and the admin's Resume sends the held mail.
Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from playwright.async_api import BrowserContext, expect
from sqlalchemy import select

from responder.funnel import governor
from responder.models import Event, GovernorState, Layer, Message, Subscriber
from responder.runtime import Runtime

from .admin_fixtures import make_subscriber
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import SmtpSink
from .delivery_fixtures import message
from .test_admin_browser import sign_in
from .test_governor import _newsletter


async def settled(rt: Runtime, pk: int) -> Message:
    deadline = time.monotonic() + 60  # a loaded CI machine
    while True:
        row = await message(rt, pk)
        if row.state not in ("queued", "sending"):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"message {pk} is still {row.state}")
        await asyncio.sleep(0.02)


async def test_consent_page_and_governor_in_the_admin_ui(
    chromium: BrowserContext,  # noqa: F811
    live: LiveServer,  # noqa: F811
    smtp: SmtpSink,
) -> None:
    rt = live.rt
    # A reader signs up on the hosted form.
    reader = await chromium.new_page()
    await reader.goto(live.url + "/subscribe/default?utm_source=fair")
    await reader.fill("input[name=email]", "ada@example.com")
    await reader.click("button[type=submit]")
    await reader.wait_for_url(live.url + "/subscribe/default/thanks")

    # A week of mail to Gmail readers in layer 1, and 2 complaints in 150: 1.3 %.
    now = rt.clock.now()
    readers = [f"g{i}@gmail.com" for i in range(150)]
    ids = [await make_subscriber(rt, address) for address in readers]
    async with rt.db.transaction() as session:
        session.add_all(
            Event(subscriber_id=sid, type="sent", created_at=now - dt.timedelta(hours=30), data={}) for sid in ids
        )
        session.add_all(
            Event(subscriber_id=sid, type="complaint", created_at=now - dt.timedelta(hours=2), data={})
            for sid in ids[:2]
        )
        for sub in (await session.execute(select(Subscriber).where(Subscriber.id.in_(ids[:2])))).scalars():
            sub.status = "complained"
    await governor.run(rt.db, rt.settings, now)
    async with rt.db.read() as session:
        layer1 = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        state = await session.get(GovernorState, (layer1.id, "gmail"))
    assert state is not None and state.level == "paused"

    # The next newsletter to them is held by the server's delivery worker.
    [pk] = await _newsletter(live, {1: readers[2:3]}, "offer")  # type: ignore[arg-type]
    held = await settled(rt, pk)
    assert held.state == "deferred" and (held.last_error or "").startswith(governor.HELD)
    page, problems = await sign_in(chromium, live)
    banner = page.locator(f"#governed-{layer1.id}-gmail")
    await expect(banner).to_contain_text("held by the complaint governor")
    await expect(banner).to_contain_text("2 complaints in 150 mails")
    await expect(page.locator(f"#governor-{layer1.id}-gmail")).to_contain_text("held")
    await expect(page.locator("#bounces")).to_contain_text("Bounce rate")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "dashboard-governor.png"), full_page=True)
    await banner.locator("button").click()
    await page.wait_for_url(live.url + "/admin/#governor")
    await expect(page.locator(f"#governed-{layer1.id}-gmail")).to_have_count(0)
    await expect(page.locator(f"#governor-{layer1.id}-gmail")).to_contain_text("resumed by ada")

    await smtp.wait_for(1, readers[2], timeout_s=60)
    assert (await settled(rt, pk)).state == "sent"

    # The consent record names the page the form was on, without its query.
    async with rt.db.read() as session:
        ada = (await session.execute(select(Subscriber).where(Subscriber.email == "ada@example.com"))).scalar_one()
    await page.goto(f"{live.url}/admin/subscribers/{ada.id}")
    await expect(page.locator("#consent")).to_contain_text(live.url + "/subscribe/default")
    await expect(page.locator("#consent")).not_to_contain_text("utm_source")
    await page.screenshot(path=str(SCREENSHOTS / "subscriber-consent.png"), full_page=True)
    assert problems == []
