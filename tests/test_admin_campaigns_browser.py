"""The newsletters and enquiries pages in a real browser: a newsletter for layer 2 reaches 100%
while the SMTP server receives exactly the layer-2 subscribers; an answered enquiry is mailed and
leaves the open queue. Screenshots go to test-artifacts/screenshots/sqlite/."""

from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext, expect

from responder.audience.enquiries import EnquiryIn, open_enquiry

from .admin_fixtures import make_subscriber
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import SmtpSink
from .test_admin_browser import sign_in

# Browser tests run on SQLite only; the pages' database work is covered on both elsewhere.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_newsletter_for_layer_2_reaches_100_percent(
    chromium: BrowserContext,
    live: LiveServer,
    smtp: SmtpSink,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    layer2 = set()
    for layer in (1, 2, 3):
        for i in range(3):
            email = f"l{layer}-{i}@example.com"
            await make_subscriber(live.rt, email, name=f"L{layer} {i}", layer=layer)
            if layer == 2:
                layer2.add(email)
    page, problems = await sign_in(chromium, live)
    await page.click("nav >> text=Newsletters")
    await expect(page.locator("h1")).to_have_text("Newsletters")
    await page.fill("#n-name", "Quick wins for layer 2")
    await page.select_option("#n-template", "layer2-quick-wins")
    # The picker shows subjects as people read them, not as Jinja.
    assert "{{" not in (await page.locator("#n-template").inner_text())
    offered = await page.locator("#n-template option").evaluate_all("options => options.map(o => o.value)")
    assert "layer2-quick-wins" in offered and not {"base", "unsubscribed", "confirm", "enquiry-ack"} & set(offered)
    await expect(page.locator("input[name=when][value=draft]")).to_be_checked()  # nothing goes by default
    await expect(page.locator("#n-audience")).to_have_text("Choose at least one layer.")
    await page.check("#n-layers input[value='2']")
    await expect(page.locator("#n-audience")).to_have_text("Reaches 3 active subscribers now.")
    await page.check("#n-layers input[value='3']")
    await expect(page.locator("#n-audience")).to_have_text("Reaches 6 active subscribers now.")
    await page.uncheck("#n-layers input[value='3']")
    await expect(page.locator("#n-audience")).to_have_text("Reaches 3 active subscribers now.")
    await page.check("input[name=when][value=now]")
    await page.click("#compose-form button")
    # Nothing is sent before the page naming the count is confirmed.
    await expect(page.locator("#confirm-count")).to_have_text("3")
    await expect(page.locator("#confirm-when")).to_have_text("now")
    assert len(smtp.received) == 0
    await page.click("#confirm-form button")

    await expect(page.locator("#nl-pct")).to_have_text("100%")
    await expect(page.locator("#nl-state")).to_have_text("sent")
    await expect(page.locator("#nl-sent")).to_have_text("3")
    await expect(page.locator("#nl-total")).to_have_text("3")
    assert await page.locator("#nl-progress").get_attribute("max") == "3"
    received = await smtp.wait_for(3)
    assert {r.rcpt_tos[0] for r in received} == layer2 and len(smtp.received) == 3
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "newsletter.png"), full_page=True)
    await page.click("text=← Newsletters")
    await expect(page.locator("#newsletter-list")).to_contain_text("Quick wins for layer 2")
    await page.screenshot(path=str(shots / "newsletters.png"), full_page=True)
    assert len(smtp.received) == 3
    assert problems == []


async def test_answer_an_enquiry_it_is_mailed_and_leaves_the_queue(
    chromium: BrowserContext,
    live: LiveServer,
    smtp: SmtpSink,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    first = await open_enquiry(
        live.rt,
        EnquiryIn(
            email="ann@example.com",
            name="Ann",
            subject="Annual plan?",
            body="Do you offer an annual plan?\nWe are a team of five.",
        ),
    )
    live.rt.clock.advance(120)  # type: ignore[attr-defined]
    second = await open_enquiry(live.rt, EnquiryIn(email="bo@example.com", body="Invoices?"))
    await smtp.wait_for(2)  # both acknowledged
    page, problems = await sign_in(chromium, live)
    await page.click("nav >> text=Enquiries")
    cards = page.locator("section.enquiry")
    await expect(cards).to_have_count(2)
    assert await cards.nth(0).get_attribute("id") == f"enquiry-{first}"  # oldest first
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "enquiries.png"), full_page=True)

    card = page.locator(f"#enquiry-{first}")
    await card.locator("textarea").fill("Yes: 10 months for the price of 12.\nSee you soon.")
    await card.locator(".answer-form button").click()
    await expect(page.locator("#enquiry-notice")).to_contain_text(f"enquiry {first}")
    await expect(cards).to_have_count(1)
    await expect(page.locator(f"#enquiry-{second}")).to_be_visible()
    [_, answer] = await smtp.wait_for(2, "ann@example.com")
    assert answer.message["Subject"] == "Re: Annual plan?"
    assert "10 months for the price of 12" in answer.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    await page.locator(f"#enquiry-{second} .close-form button").click()
    await expect(page.locator("#enquiries-empty")).to_be_visible()
    await page.click("text=Answered")
    await expect(page.locator(f"#enquiry-{first}")).to_contain_text("10 months")
    assert len(smtp.to("bo@example.com")) == 1  # the acknowledgement only
    assert problems == []
