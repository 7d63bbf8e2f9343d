"""The Sequences page and its step editor: over HTTP, each form (create a triggered sequence, add,
change, move and remove steps), a refused input shown beside its field with nothing changed,
every form refused without the CSRF token, and what an edit does to people already in a
sequence; in real Chromium, a purchase sequence built in the UI whose mails reach an SMTP
server. Screenshots go to test-artifacts/screenshots/sqlite/."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, expect
from sqlalchemy import func, select

from responder.funnel import sequences as sequences_service
from responder.models import Message

from .admin_fixtures import PASSWORD, make_subscriber, signed_in
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import App, SmtpSink
from .funnel_fixtures import make_subscriber as enrolled_subscriber
from .funnel_fixtures import settle, templates_sent
from .test_admin_browser import sign_in

SAMPLE = "A free sample of what comes next"  # layer3-sample's subject
INVITATION = "An invitation, whenever you're ready"  # layer4-invitation's subject


async def sequence_rows(app: App) -> list[dict[str, Any]]:
    async with app.rt.db.read() as session:
        return await sequences_service.list_sequences(session)


async def triggered(app: App, name: str) -> dict[str, Any]:
    return next(s for s in await sequence_rows(app) if s["name"] == name)


async def create_purchase_sequence(browser: Any, name: str = "Course 101 buyers") -> int:
    resp = await browser.post("/admin/sequences", {"name": name, "trigger": "purchase", "product": "course-101"})
    assert resp.status == 303, await resp.text()
    found = re.fullmatch(r"/admin/sequences/(\d+)/steps/new\?saved=created", resp.headers["Location"])
    assert found, resp.headers["Location"]
    return int(found.group(1))


STEP = {"delay": "0s", "template": "layer3-sample", "purpose": "sample"}


async def test_the_page_lists_layers_and_triggered_sequences_with_figures(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    text = await (await browser.get("/admin/sequences")).text()
    for position in range(1, 6):
        assert f'id="layer-{position}"' in text
    assert "layer1-welcome" in text and 'id="triggered-empty"' in text
    assert 'href="/admin/sequences"' in text  # in the menu

    # Someone in layer 1: the welcome goes, the next step waits; the page counts both.
    await enrolled_subscriber(app.rt, "ada@example.com", layer=1)
    app.rt.wake_scheduler()
    await app.smtp.wait_for(1, "ada@example.com")
    await settle(app)
    await wait_sent(app, 1)
    main = await triggered(app, "New customer: main")
    steps = main["steps"]
    text = await (await browser.get("/admin/sequences")).text()
    welcome = section(text, f'id="step-{steps[0]["id"]}"')
    assert "Sent 1 · opened by people 0 (0%)" in welcome and "0 waiting for it" in welcome
    assert "1 waiting for it" in section(text, f'id="step-{steps[1]["id"]}"')
    assert "1 person is in it now" in text

    # A step that was sent cannot be removed: said plainly, nothing changes.
    resp = await browser.post(f"/admin/sequences/{main['id']}/steps/{steps[0]['id']}/remove", {})
    assert resp.status == 409 and "already sent 1 times" in await resp.text()
    assert len((await triggered(app, "New customer: main"))["steps"]) == 3


def section(text: str, marker: str) -> str:
    start = text.index(marker)
    return text[start : text.index("</li>", start)]


async def wait_sent(app: App, count: int) -> None:
    for _ in range(200):
        async with app.rt.db.read() as session:
            sent = (
                await session.execute(select(func.count()).select_from(Message).where(Message.state == "sent"))
            ).scalar_one()
        if sent >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} messages were not marked sent")


async def test_create_add_change_move_and_remove_steps(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    sequence_id = await create_purchase_sequence(browser)
    page = await (await browser.get(f"/admin/sequences/{sequence_id}/steps/new?saved=created")).text()
    assert "Sequence created." in page and "After a purchase of “course-101”" in page
    # The picker offers list mail only: not the confirmation or the acknowledgement.
    assert 'value="layer3-sample"' in page and 'value="confirm"' not in page and 'value="enquiry-ack"' not in page
    assert 'value="base"' not in page and 'value="unsubscribed"' not in page  # the layout, the goodbye
    assert 'id="s-preview" href="/admin/templates/' in page and 'id="step-variants"' in page

    resp = await browser.post(f"/admin/sequences/{sequence_id}/steps", STEP)
    assert resp.status == 303
    assert resp.headers["Location"] == f"/admin/sequences?saved=added&sequence={sequence_id}#sequence-{sequence_id}"
    page = await (await browser.get(resp.headers["Location"].split("#")[0])).text()
    assert 'id="saved-notice"' in page and "people who have finished the sequence do not" in page
    assert "Step 1</strong> · at once · Give a sample of what comes next" in page

    resp = await browser.client.post(
        f"/admin/sequences/{sequence_id}/steps",
        headers=browser.headers,
        allow_redirects=False,
        data=[
            ("csrf", browser.csrf),
            ("delay", "1d"),
            ("template", "layer4-invitation"),
            ("purpose", "offer"),
            *[("days", d) for d in ("mon", "tue", "wed", "thu", "fri")],
            ("start", "09:00"),
            ("end", "17:00"),
            ("skip_if_purchased", "1"),
            ("require_tags", "preferred, vip"),
        ],
    )
    assert resp.status == 303
    first, second = (await triggered(app, "Course 101 buyers"))["steps"]
    assert second["delay"] == "1d" and second["send_window"] == {"days": "mon-fri", "start": "09:00", "end": "17:00"}
    assert second["condition"] == {"skip_if_purchased": True, "require_tags": ["preferred", "vip"]}
    page = await (await browser.get("/admin/sequences")).text()
    assert "1 day after the previous step" in page and "Mon–Fri, 09:00–17:00 their time" in page
    assert "skipped for people who have bought; only for people tagged preferred, vip" in page

    # The editor shows the step as stored and what saving does to people already in it.
    edit = f"/admin/sequences/{sequence_id}/steps/{second['id']}"
    page = await (await browser.get(edit)).text()
    assert 'value="1d"' in page and 'value="mon" checked' in page and 'value="sat" checked' not in page
    assert 'name="skip_if_purchased" value="1" checked' in page and 'value="preferred, vip"' in page
    assert "Nobody gets it twice" in page and "keep the time they were given" in page

    # Refused inputs: the error beside its field, what was typed kept, nothing changed.
    refused = [
        ({"delay": "2 days"}, 400, "delay", "not a duration"),
        ({"delay": "99999w"}, 400, "delay", "at most 3650d"),
        ({"template": "confirm"}, 422, "template", "cannot be sent as a sequence step"),
        ({"template": "nowhere"}, 422, "template", "no template named"),
        ({"start": "17:00", "end": "09:00"}, 400, "send_window", "must be after its start"),
        ({"purpose": "hard-sell"}, 400, "purpose", "purpose must be one of"),
    ]
    for change, status, field, message in refused:
        resp = await browser.post(edit, {**STEP, **change})
        page = await resp.text()
        assert resp.status == status, (change, page)
        shown = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', page)
        assert shown and message in shown.group(1), (change, page)
        assert 'aria-invalid="true"' in page
        assert (await triggered(app, "Course 101 buyers"))["steps"] == [first, second]
    resp = await browser.post(f"/admin/sequences/{sequence_id}/steps", {**STEP, "delay": "soon"})
    assert resp.status == 400 and 'value="soon"' in await resp.text()
    assert len((await triggered(app, "Course 101 buyers"))["steps"]) == 2

    # Change: a new delay, the window and condition cleared.
    resp = await browser.post(edit, {"delay": "2d", "template": "layer4-invitation", "purpose": "offer"})
    assert resp.status == 303 and resp.headers["Location"].endswith(f"#step-{second['id']}")
    page = await (await browser.get(resp.headers["Location"].split("#")[0])).text()
    assert "Step saved." in page and "nobody gets it twice" in page
    changed = (await triggered(app, "Course 101 buyers"))["steps"][1]
    assert (changed["delay"], changed["send_window"], changed["condition"]) == ("2d", None, None)

    # Move the second step up; the first cannot move up.
    resp = await browser.post(f"{edit}/move", {"direction": "up"})
    assert resp.status == 303
    assert [s["template"] for s in (await triggered(app, "Course 101 buyers"))["steps"]] == [
        "layer4-invitation",
        "layer3-sample",
    ]
    page = await (await browser.get(resp.headers["Location"].split("#")[0])).text()
    assert "Step moved." in page
    resp = await browser.post(f"{edit}/move", {"direction": "up"})
    assert resp.status == 400 and "already the first" in await resp.text()
    assert [s["id"] for s in (await triggered(app, "Course 101 buyers"))["steps"]] == [second["id"], first["id"]]

    # Unknown sequences and steps, or a step of another sequence: not found.
    other = await create_purchase_sequence(browser, "Other buyers")
    for path in ("/admin/sequences/999999/steps/new", f"/admin/sequences/{other}/steps/{first['id']}"):
        assert (await browser.get(path)).status == 404, path
    resp = await browser.post(f"/admin/sequences/{other}/steps/{first['id']}/move", {"direction": "down"})
    assert resp.status == 404

    # Remove a step nobody was sent.
    resp = await browser.post(f"/admin/sequences/{sequence_id}/steps/{first['id']}/remove", {})
    assert resp.status == 303
    page = await (await browser.get(resp.headers["Location"].split("#")[0])).text()
    assert "Step removed." in page
    assert [s["id"] for s in (await triggered(app, "Course 101 buyers"))["steps"]] == [second["id"]]


async def test_creating_a_sequence_refuses_bad_input_beside_the_field(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    await create_purchase_sequence(browser)
    before = await sequence_rows(app)
    for form, field, message in (
        ({"name": "Course 101 buyers", "trigger": "purchase"}, "name", "exists already"),
        ({"name": "Thanks", "trigger": "enquiry", "product": "book"}, "product", "purchase sequences only"),
        ({"name": "", "trigger": "referral"}, "name", "name is required"),
    ):
        resp = await browser.post("/admin/sequences", form)
        page = await resp.text()
        assert resp.status == 400
        shown = re.search(rf'<p class="field-error" id="q-{field}-error">([^<]*)</p>', page)
        assert shown and message in shown.group(1), page
    resp = await browser.post("/admin/sequences", {"name": "Odd", "trigger": "birthday"})
    assert resp.status == 400 and "trigger must be one of" in await resp.text()
    assert await sequence_rows(app) == before
    page = await (await browser.get("/admin/sequences")).text()
    assert 'id="triggered-empty"' not in page and "No steps yet" in page


async def test_every_sequence_form_needs_the_csrf_token(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    sequence_id = await create_purchase_sequence(browser)
    resp = await browser.post(f"/admin/sequences/{sequence_id}/steps", STEP)
    assert resp.status == 303
    step_id = (await triggered(app, "Course 101 buyers"))["steps"][0]["id"]
    await browser.post(f"/admin/sequences/{sequence_id}/steps", {**STEP, "delay": "1d"})
    before = await sequence_rows(app)
    forms = [
        ("/admin/sequences", {"name": "Forged", "trigger": "referral"}),
        (f"/admin/sequences/{sequence_id}/steps", STEP),
        (f"/admin/sequences/{sequence_id}/steps/{step_id}", {**STEP, "delay": "5d"}),
        (f"/admin/sequences/{sequence_id}/steps/{step_id}/move", {"direction": "down"}),
        (f"/admin/sequences/{sequence_id}/steps/{step_id}/remove", {}),
    ]
    for path, form in forms:
        for token in (None, "not-the-token"):
            data = form if token is None else {**form, "csrf": token}
            assert (await browser.post(path, data, csrf=False)).status == 403, path
    assert await sequence_rows(app) == before
    # The token is in the forms' hidden fields only, never in a link or a form's address.
    for path in ("/admin/sequences", f"/admin/sequences/{sequence_id}/steps/{step_id}"):
        page = await (await browser.get(path)).text()
        assert "csrf=" not in page
        assert page.count(browser.csrf) == page.count(f'name="csrf" value="{browser.csrf}"') > 0
    step_page = await (await browser.get(f"/admin/sequences/{sequence_id}/steps/{step_id}")).text()
    assert f'href="/admin/steps/{step_id}/variants"' in step_page  # its A/B test
    assert (await browser.get(f"/admin/steps/{step_id}/variants")).status == 200


async def test_a_moved_step_reaches_who_has_not_passed_it_and_nobody_gets_one_twice(app: App) -> None:
    """What the editor promises, as it happens: Xena has had steps 1 and 2, Yves step 1, when
    step 3 is moved above step 2; a step added at the end reaches Yves, not Xena who finished."""
    browser = await signed_in(app.rt, app.client)
    sequence_id = await create_purchase_sequence(browser)
    for delay, template in (("0s", "layer3-sample"), ("1d", "layer4-invitation"), ("1d", "layer3-case-study")):
        resp = await browser.post(
            f"/admin/sequences/{sequence_id}/steps", {"delay": delay, "template": template, "purpose": "educate"}
        )
        assert resp.status == 303
    ids = {}
    for name in ("xena", "yves"):
        ids[name] = await make_subscriber(app.rt, f"{name}@example.com", layer=5)

    async def buy(name: str) -> None:
        resp = await app.client.post(
            "/api/v1/events",
            headers=app.auth,
            json={"email": f"{name}@example.com", "type": "purchase", "data": {"product": "course-101"}},
        )
        assert resp.status == 201
        await settle(app)

    await buy("xena")
    app.clock.advance(days=1)
    await buy("yves")  # Xena's step 2 falls due at the same time
    assert await templates_sent(app.rt, ids["xena"]) == ["layer3-sample", "layer4-invitation"]
    assert await templates_sent(app.rt, ids["yves"]) == ["layer3-sample"]

    case_study = (await triggered(app, "Course 101 buyers"))["steps"][2]["id"]
    browser = await signed_in(app.rt, app.client, "bo")  # a day later: the first sign-in has ended
    resp = await browser.post(f"/admin/sequences/{sequence_id}/steps/{case_study}/move", {"direction": "up"})
    assert resp.status == 303
    app.clock.advance(days=1)
    await settle(app)
    browser = await signed_in(app.rt, app.client, "cy")
    resp = await browser.post(
        f"/admin/sequences/{sequence_id}/steps", {"delay": "1d", "template": "layer5-referral", "purpose": "referral"}
    )
    assert resp.status == 303
    for _ in range(3):
        app.clock.advance(days=1)
        await settle(app)
    assert await templates_sent(app.rt, ids["xena"]) == ["layer3-sample", "layer4-invitation"]
    assert await templates_sent(app.rt, ids["yves"]) == [
        "layer3-sample",
        "layer3-case-study",
        "layer4-invitation",
        "layer5-referral",
    ]


# Browser tests run on SQLite only; the pages' database work is covered on both above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_build_a_purchase_sequence_in_the_browser_and_receive_its_mails(
    chromium: BrowserContext,
    live: LiveServer,
    smtp: SmtpSink,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    page, problems = await sign_in(chromium, live)
    await page.click("nav >> text=Sequences")
    await expect(page.locator("h1")).to_have_text("Sequences")
    await expect(page.locator("#triggered-empty")).to_be_visible()

    await page.fill("#q-name", "Course 101 buyers")
    await expect(page.locator("input[name=trigger][value=purchase]")).to_be_checked()
    await page.fill("#q-product", "course-101")
    await page.click("#new-sequence-form button")
    await expect(page.locator("#saved-notice")).to_contain_text("Sequence created.")
    await expect(page.locator("h1")).to_have_text("A new step for Course 101 buyers")
    await expect(page.locator("#s-delay")).to_have_value("0s")
    await page.select_option("#s-template", "layer3-sample")
    await expect(page.locator("#s-preview")).to_have_attribute("href", "/admin/templates/layer3-sample")
    await page.check("input[name=purpose][value=sample]")
    await page.click("#step-form button[type=submit]")
    await expect(page.locator("#saved-notice")).to_contain_text("Step added at the end.")

    sequence = page.locator(".sequence", has_text="Course 101 buyers")
    await sequence.locator("text=Add a step").click()
    await expect(page.locator("#s-delay")).to_have_value("2d")
    await page.fill("#s-delay", "1 day")  # a slip: refused beside the field, what was typed kept
    await page.select_option("#s-template", "layer4-invitation")
    await page.check("input[name=purpose][value=offer]")
    await page.click("#step-form button[type=submit]")
    await expect(page.locator("#delay-error")).to_contain_text("not a duration")
    await expect(page.locator("#s-template")).to_have_value("layer4-invitation")
    # The refused form's page answered 400, which the console reports; nothing else went wrong.
    assert problems == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    problems.clear()
    await page.fill("#s-delay", "1d")
    await expect(page.locator("#on-enrolled")).to_contain_text("people who have finished the sequence do not")
    await page.set_viewport_size({"width": 375, "height": 800})
    await no_horizontal_scroll(page)
    await page.screenshot(path=str(shots / "sequence-step.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.click("#step-form button[type=submit]")
    await expect(page.locator("#saved-notice")).to_contain_text("Step added at the end.")
    steps = sequence.locator("ol.steps > li")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(0)).to_contain_text("Step 1 · at once · Give a sample of what comes next")
    await expect(steps.nth(1)).to_contain_text("Step 2 · 1 day after the previous step · Make an offer")

    # A purchase of the product, recorded by the shop through the API: its mails arrive.
    await make_subscriber(live.rt, "buyer@example.com", name="Bea Buyer", layer=5)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            live.url + "/api/v1/events",
            headers={"Authorization": f"Bearer {live.rt.settings.admin_token}"},
            json={"email": "buyer@example.com", "type": "purchase", "data": {"product": "course-101", "value": 99}},
        )
        assert resp.status == 201, await resp.text()
    [first] = await smtp.wait_for(1, "buyer@example.com")
    assert first.message["Subject"] == SAMPLE
    live.rt.clock.advance(days=1)  # type: ignore[attr-defined]
    live.rt.wake_scheduler()
    second = (await smtp.wait_for(2, "buyer@example.com"))[1]
    assert second.message["Subject"] == INVITATION
    assert len(smtp.received) == 2

    # A day later the sign-in has ended: sign in again, and read the figures.
    await page.goto(live.url + "/admin/sequences")
    await expect(page).to_have_url(live.url + "/admin/login")
    await page.fill("#username", "ada")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.click("nav >> text=Sequences")
    await expect(steps.nth(0)).to_contain_text("Sent 1")
    await expect(steps.nth(1)).to_contain_text("Sent 1")
    await expect(sequence).to_contain_text("0 people are in it now")
    await page.set_viewport_size({"width": 375, "height": 800})
    await no_horizontal_scroll(page)
    await page.screenshot(path=str(shots / "sequences.png"), full_page=True)
    assert problems == []


async def no_horizontal_scroll(page: Any) -> None:
    widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
