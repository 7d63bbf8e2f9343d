"""An A/B newsletter set up in a real browser: variants and the test share on the compose form,
the confirmation naming the test, the per-variant table and the verdict on the newsletter's page,
and "Send the winner to the rest" reaching every other address once. Screenshot:
test-artifacts/screenshots/sqlite/newsletter-ab.png."""

from __future__ import annotations

from collections import Counter

import pytest
from playwright.async_api import BrowserContext, expect

from .admin_fixtures import make_subscriber
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import SmtpSink
from .test_admin_browser import sign_in

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_an_ab_newsletter_set_up_in_the_browser(
    chromium: BrowserContext,
    live: LiveServer,
    smtp: SmtpSink,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    people = [f"p{i}@example.com" for i in range(8)]
    for email in people:
        await make_subscriber(live.rt, email, layer=2)
    page, problems = await sign_in(chromium, live)
    await page.click("nav >> text=Newsletters")
    await page.fill("#n-name", "Spring A/B")
    await page.select_option("#n-template", "layer2-quick-wins")
    await page.check("#n-layers input[value='2']")
    await page.click("#n-ab summary")
    await page.check("#ab-on")
    await page.fill("#ab-subject-A", "Quick wins, plainly")
    await page.fill("#ab-subject-B", "Three quick wins for you")
    offered = await page.locator("#ab-template-B option").evaluate_all("options => options.map(o => o.value)")
    assert "layer2-how-to" in offered and not [name for name in offered if name.startswith("~")]
    await page.fill("#ab-share", "50")
    await page.fill("#ab-wait", "2h")
    await page.check("input[name=when][value=now]")
    await page.click("#compose-form button[type=submit]")
    await expect(page.locator("#confirm-ab")).to_contain_text("about 50 % of them")
    assert smtp.received == []
    await page.click("#confirm-form button")

    rows = page.locator("#ab-variants tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#ab-variant-B")).to_contain_text("Three quick wins for you")
    await expect(page.locator("#ab-verdict")).to_contain_text("Not enough data yet")
    for _ in range(50):  # the test share goes out, then the newsletter waits for its winner
        await page.reload()
        if "The test mails are queued" in await page.locator("#ab-status").inner_text():
            break
    await expect(page.locator("#ab-status")).to_contain_text("get the winner at")
    tested = len(smtp.received)
    assert 0 < tested < len(people)
    await page.select_option("#ab-winner", "B")
    await page.click("#ab-winner-form button")
    await expect(page.locator("#newsletter-notice")).to_have_text("The winner goes to the rest now.")
    received = await smtp.wait_for(len(people))
    assert Counter(r.rcpt_tos[0] for r in received) == dict.fromkeys(people, 1)
    assert {r.message["Subject"] for r in received[tested:]} == {"Three quick wins for you"}
    for _ in range(50):
        await page.reload()
        if "went to the rest" in await page.locator("#ab-status").inner_text():
            break
    await expect(page.locator("#ab-status")).to_contain_text("Variant B went to the rest of the audience")
    await expect(page.locator("#ab-variant-B .badge")).to_have_text("winner")
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "newsletter-ab.png"), full_page=True)
    assert problems == []
