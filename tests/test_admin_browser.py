"""The admin UI in a real browser: sign in, move a subscriber, import with a live progress bar,
a hostile name stays text, a cross-origin form post is refused. Screenshots of the main pages
go to test-artifacts/screenshots/."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page, expect
from sqlalchemy import select

from responder.models import Layer, Subscriber
from responder.web.admin.users import create_user

from .admin_fixtures import PASSWORD, make_subscriber
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import SmtpSink, free_port

HOSTILE = "<script>alert(1)</script>"


async def sign_in(browser: BrowserContext, live: LiveServer) -> tuple[Page, list[str]]:  # noqa: F811
    await create_user(live.rt, "ada", PASSWORD)
    page = await browser.new_page()
    problems: list[str] = []

    def console(msg) -> None:  # type: ignore[no-untyped-def]
        # A previewed mail's remote fonts are blocked by the preview's policy on purpose.
        if msg.type == "error" and not msg.location.get("url", "").endswith("/preview.html"):
            problems.append(msg.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    await page.goto(live.url + "/admin/")
    await expect(page).to_have_url(live.url + "/admin/login")
    await page.fill("#username", "ada")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Dashboard")
    return page, problems


async def layer_of(live: LiveServer, subscriber_id: int) -> int:  # noqa: F811
    async with live.rt.db.read() as session:
        return (
            await session.execute(
                select(Layer.position)
                .join(Subscriber, Subscriber.layer_id == Layer.id)
                .where(Subscriber.id == subscriber_id)
            )
        ).scalar_one()


async def test_sign_in_move_a_subscriber_and_screenshot_the_pages(
    chromium: BrowserContext, live: LiveServer, request: pytest.FixtureRequest
) -> None:  # noqa: F811
    ids = [await make_subscriber(live.rt, f"p{i}@example.com", name=f"Person {i}", layer=1 + i % 3) for i in range(6)]
    page, problems = await sign_in(chromium, live)
    await expect(page.locator("#funnel svg")).to_be_visible()
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)

    await page.click("nav >> text=Subscribers")
    await page.fill("input[name=q]", "Person 3")
    await page.click("form[role=search] button")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await page.screenshot(path=str(shots / "subscribers.png"), full_page=True)
    await page.click("text=p3@example.com")
    await expect(page.locator("#current-layer")).to_contain_text("1 ·")
    await page.select_option("#position", "4")
    await page.fill("#reason", "asked for the method guide")
    await page.click("#move-layer button")
    await expect(page.locator(".notice")).to_have_text("Moved to layer 4.")
    await expect(page.locator("#current-layer")).to_contain_text("4 ·")
    await expect(page.locator("#timeline")).to_contain_text("asked for the method guide")
    await page.screenshot(path=str(shots / "subscriber.png"), full_page=True)
    assert await layer_of(live, ids[3]) == 4

    for name, path in (("layers", "/admin/layers"), ("settings", "/admin/settings"), ("dashboard", "/admin/")):
        await page.goto(live.url + path)
        await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert problems == []


async def test_import_shows_progress_then_the_report(
    chromium: BrowserContext,
    live: LiveServer,  # noqa: F811
    tmp_path,
    request,
) -> None:  # type: ignore[no-untyped-def]
    page, problems = await sign_in(chromium, live)
    data = tmp_path / "people.csv"
    data.write_text("email,name\n" + "".join(f"n{i}@example.com,N{i}\n" for i in range(300)) + "nonsense,Bad\n")
    await page.goto(live.url + "/admin/imports/new")
    await page.fill("#consent_source", "spring fair")
    await expect(page.locator("input[name=enroll][value=none]")).to_be_checked()  # mails nobody by default
    await page.check("input[name=enroll][value=next]")
    await page.fill("#spread", "5d")
    await page.set_input_files("#file", str(data))
    await page.click("#import-form button")
    await expect(page.locator("#import-state")).to_have_text("done")
    await expect(page.locator("#import-imported")).to_have_text("300")
    await expect(page.locator("#import-they-get")).to_contain_text("from its second step on")
    await expect(page.locator("#import-they-get")).to_contain_text("spread evenly over 5d")
    await expect(page.locator("table")).to_contain_text("nonsense")
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "import.png"), full_page=True)
    assert problems == []


async def test_hostile_name_is_text_and_cross_origin_post_is_refused(
    chromium: BrowserContext, live: LiveServer
) -> None:  # noqa: F811
    subscriber_id = await make_subscriber(live.rt, "mallory@example.com", name=HOSTILE)
    page, problems = await sign_in(chromium, live)
    await page.goto(f"{live.url}/admin/subscribers/{subscriber_id}")
    await expect(page.locator("#subscriber-name")).to_have_text(HOSTILE)
    await page.goto(f"{live.url}/admin/subscribers")
    await expect(page.locator("td.name")).to_have_text(HOSTILE)
    assert problems == []  # no alert() dialog, no script error

    # Another site (localhost is not 127.0.0.1) posts a form at the admin UI, in the same
    # browser that is signed in.
    evil = web.Application()

    async def attack(_request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=(
                f'<form method="post" action="{live.url}/admin/subscribers/{subscriber_id}/layer">'
                '<input name="position" value="5"><button id="go">win a prize</button></form>'
            ),
        )

    evil.router.add_get("/", attack)
    port = free_port()
    server = TestServer(evil, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await page.goto(f"http://localhost:{port}/")
        async with page.expect_navigation():
            await page.click("#go")
        assert "cross-origin request refused" in await page.content()
    finally:
        await server.close()
    assert await layer_of(live, subscriber_id) == 1


async def test_upload_an_mjml_template_see_its_previews_and_send_a_test(
    chromium: BrowserContext,
    live: LiveServer,
    smtp: SmtpSink,
    tmp_path,  # noqa: F811
    request,
) -> None:  # type: ignore[no-untyped-def]
    page, problems = await sign_in(chromium, live)
    source = tmp_path / "autumn.mjml"
    source.write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>"
        "Hello {{ subscriber.first_name or 'friend' }}, autumn offers inside."
        '</mj-text><mj-button href="{{ sender.website }}/autumn">See them</mj-button>'
        "</mj-column></mj-section></mj-body></mjml>"
    )
    await page.click("nav >> text=Templates")
    # A template that does not compile: the error beside the form, and no token in the address.
    broken = tmp_path / "broken.mjml"
    broken.write_text("<mjml><mj-body>{{ subscriber.first_name | }}</mj-body></mjml>")
    await page.fill("#t-subject", "Autumn for {{ subscriber.first_name }}")
    await page.set_input_files("#t-file", str(broken))
    await page.click("#upload-form button")
    await expect(page.locator("#upload-error")).to_be_visible()
    assert "csrf" not in page.url
    problems[:] = [p for p in problems if "status of 422" not in p]  # Chromium logs the refusal itself
    await page.fill("#t-name", "autumn")
    await page.fill("#t-subject", "Autumn for {{ subscriber.first_name }}")
    await page.set_input_files("#t-file", str(source))
    await page.click("#upload-form button")
    await expect(page.locator("#template-notice")).to_have_text("Stored as version 1.")
    assert "csrf" not in page.url
    await expect(page.locator("h1")).to_contain_text("autumn")
    for frame_id, width in (("#preview-desktop", 640), ("#preview-phone", 375)):
        frame = page.frame_locator(frame_id)
        await expect(frame.locator("body")).to_contain_text("autumn offers inside")
        box = await page.locator(frame_id).bounding_box()
        assert box is not None and abs(box["width"] - width) <= 2
    assert await page.locator("#preview-desktop").get_attribute("sandbox") == ""
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "template.png"), full_page=True)

    await page.fill("#test-form input[name=email]", "owner@example.com")
    await page.click("#test-form button")
    await expect(page.locator("#template-notice")).to_have_text("Test mail sent to owner@example.com.")
    [mail] = await smtp.wait_for(1, "owner@example.com")
    assert mail.message["Subject"].startswith("[Test] Autumn for ")
    await page.goto(live.url + "/admin/templates")
    await expect(page.locator("#template-list")).to_contain_text("autumn")
    await page.screenshot(path=str(shots / "templates.png"), full_page=True)
    assert problems == []
