"""Every admin page is usable on a phone (issue 19, point 8): at 375 px wide no page scrolls
sideways (wide tables scroll inside their own box), in real Chromium, with data on the pages."""

from __future__ import annotations

from playwright.async_api import BrowserContext
from sqlalchemy import select

from responder.models import Newsletter, Sequence, Step, Subscriber

from .admin_fixtures import make_subscriber
from .browser_fixtures import LiveServer, chromium, live  # noqa: F401
from .test_admin_browser import sign_in

PAGES = [
    "/admin/",
    "/admin/subscribers",
    "/admin/subscribers/new",
    "/admin/imports/new",
    "/admin/layers",
    "/admin/layers/2/rule",
    "/admin/sequences",
    "/admin/templates",
    "/admin/templates/layer1-welcome",
    "/admin/newsletters",
    "/admin/enquiries",
    "/admin/referrals",
    "/admin/webhooks",
    "/admin/settings",
]


async def test_no_admin_page_scrolls_sideways_at_375_px(
    chromium: BrowserContext,  # noqa: F811
    live: LiveServer,  # noqa: F811
) -> None:
    sid = await make_subscriber(live.rt, "a.very.long.address.for.a.narrow.screen@example.com", name="Ada Lovelace")
    page, problems = await sign_in(chromium, live)
    await page.set_viewport_size({"width": 375, "height": 800})
    async with live.rt.db.read() as session:
        sequence = (await session.execute(select(Sequence).order_by(Sequence.id))).scalars().first()
        step = (await session.execute(select(Step).order_by(Step.id))).scalars().first()
        newsletter = (await session.execute(select(Newsletter))).scalars().first()
        assert (await session.get(Subscriber, sid)) is not None
    extra = [f"/admin/subscribers/{sid}"]
    if sequence is not None and step is not None:
        extra += [f"/admin/sequences/{sequence.id}/steps/{step.id}", f"/admin/steps/{step.id}/variants"]
    if newsletter is not None:
        extra.append(f"/admin/newsletters/{newsletter.id}")
    wide = []
    for path in PAGES + extra:
        response = await page.goto(live.url + path)
        assert response is not None and response.status == 200, path
        width = await page.evaluate("document.documentElement.scrollWidth")
        if width > 375:
            wide.append((path, width))
    assert wide == [], wide
    assert problems == []
