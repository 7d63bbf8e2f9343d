"""Stored XSS (issue 18, point 9): markup planted wherever a subscriber, an enquirer or an admin
can put text (names, attributes, purchases, enquiries, layer labels, newsletter names) is shown
as text on every admin page in a real Chromium: no script runs, no element is injected."""

from __future__ import annotations

from playwright.async_api import BrowserContext

from responder.audience.enquiries import EnquiryIn, open_enquiry
from responder.funnel import newsletters
from responder.funnel.events import record_event
from responder.funnel.layers import update_layer
from responder.models import Subscriber

from ..admin_fixtures import make_subscriber
from ..browser_fixtures import LiveServer, chromium, live  # noqa: F401
from ..test_admin_browser import sign_in

MARK = "window.__xss=(window.__xss||0)+1"
PAYLOADS = [
    f'<img src=x onerror="{MARK}">',
    f"\"><svg onload='{MARK}'>",
    f"</script><script>{MARK}</script>",
    f"javascript:{MARK}",
    "{{ 7*7 }}{% raw %}",
]


async def test_no_payload_runs_on_any_admin_page(chromium: BrowserContext, live: LiveServer) -> None:  # noqa: F811
    rt = live.rt
    ids = []
    for number, payload in enumerate(PAYLOADS):
        ids.append(await make_subscriber(rt, f"x{number}@example.com", name=payload[:200], layer=2))
    async with rt.db.transaction() as session:
        for number, sid in enumerate(ids):
            subscriber = await session.get(Subscriber, sid)
            assert subscriber is not None
            subscriber.attributes = {"company": PAYLOADS[number], PAYLOADS[number][:40]: "x"}
            subscriber.referred_by_id = ids[0] if number else None
            await record_event(
                session, subscriber, "purchase", rt.clock.now(), data={"product": PAYLOADS[number], "value": 5}
            )
        await update_layer(session, 2, {"label": PAYLOADS[0][:60], "description": PAYLOADS[1]})
        news = await newsletters.create(
            session, {"name": PAYLOADS[0][:120], "template": "newsletter", "layers": [2]}, rt.clock.now(), rt.settings
        )
    for payload in PAYLOADS:
        await open_enquiry(rt, EnquiryIn(email="e@example.com", body=payload, name=payload[:100], subject=payload))

    page, problems = await sign_in(chromium, live)
    pages = [
        "/admin/",
        "/admin/subscribers",
        *(f"/admin/subscribers/{sid}" for sid in ids),
        "/admin/enquiries",
        "/admin/layers",
        "/admin/newsletters",
        f"/admin/newsletters/{news.id}",
        "/admin/referrals",
        "/admin/webhooks",
        "/admin/settings",
    ]
    for path in pages:
        resp = await page.goto(live.url + path)
        assert resp is not None and resp.status == 200, path
        await page.wait_for_load_state("load")
        assert await page.evaluate("window.__xss === undefined"), path
        assert await page.locator("svg[onload], img[onerror]").count() == 0, path
    await page.goto(f"{live.url}/admin/subscribers/{ids[0]}")
    assert PAYLOADS[0] in await page.locator("body").inner_text()  # shown, as text
    assert problems == []  # no dialog, no script error, no request for an injected image
