"""The templates page over HTTP: upload through the form, refusal shown beside the form with
nothing stored, the preview served for a sandboxed frame, a test send to a real SMTP server."""

from __future__ import annotations

from aiohttp import FormData
from sqlalchemy import func, select

from responder.models import Template

from .admin_fixtures import signed_in
from .conftest import App

MJML = """<mjml><mj-body><mj-section><mj-column>
<mj-text>Hello {{ subscriber.first_name or 'friend' }}, spring is here.</mj-text>
</mj-column></mj-section></mj-body></mjml>"""


def upload_form(body: str, subject: str, name: str = "spring-news", csrf: str = "") -> FormData:
    form = FormData()
    if csrf:
        form.add_field("csrf", csrf)  # first, as the page's form sends it
    form.add_field("name", name)
    form.add_field("subject", subject)
    form.add_field("purpose", "newsletter")
    form.add_field("file", body.encode(), filename="spring.mjml", content_type="text/plain")
    return form


async def test_upload_preview_and_test_send(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    resp = await app.client.post(
        "/admin/templates",
        headers=browser.headers,
        data=upload_form(MJML, "Spring for {{ subscriber.first_name }}", csrf=browser.csrf),
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/admin/templates/spring-news?notice=v1"
    page = await (await browser.get(resp.headers["Location"])).text()
    assert "Stored as version 1" in page and 'sandbox src="/admin/templates/spring-news/preview.html"' in page

    preview = await browser.get("/admin/templates/spring-news/preview.html")
    assert "spring is here" in await preview.text()
    csp = preview.headers["Content-Security-Policy"]
    assert "sandbox" in csp and "script-src" not in csp and "frame-ancestors 'self'" in csp

    resp = await browser.post("/admin/templates/spring-news/test", {"email": "me@example.com"})
    assert resp.status == 303
    [mail] = await app.smtp.wait_for(1, "me@example.com")
    assert mail.message["Subject"].startswith("[Test] Spring for ")
    assert "Test mail sent to me@example.com" in await (await browser.get(resp.headers["Location"])).text()

    resp = await browser.post("/admin/templates/spring-news/test", {"email": "nope"})
    assert resp.status == 400 and "not sent" in await resp.text()


async def test_a_broken_template_is_refused_beside_the_form(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    resp = await app.client.post(
        "/admin/templates",
        headers=browser.headers,
        data=upload_form(MJML.replace("first_name or", "first_name |"), "Kept <subject>", csrf=browser.csrf),
        allow_redirects=False,
    )
    assert resp.status == 422
    page = await resp.text()
    assert 'id="upload-error"' in page and 'value="Kept &lt;subject&gt;"' in page
    async with app.rt.db.read() as session:
        assert (
            await session.execute(select(func.count()).select_from(Template).where(Template.name == "spring-news"))
        ).scalar_one() == 0
    # Without the page's token the upload is refused before it is read.
    resp = await app.client.post(
        "/admin/templates", headers=browser.headers, data=upload_form(MJML, "x"), allow_redirects=False
    )
    assert resp.status == 403


async def test_an_upload_needs_its_token_in_the_form_never_in_the_address(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/templates")).text()
    assert "csrf=" not in page  # the form's address carries no token
    for path, form in (
        (f"/admin/templates?csrf={browser.csrf}", upload_form(MJML, "Hi")),  # in the address: refused
        ("/admin/templates", upload_form(MJML, "Hi", csrf="forged")),
        ("/admin/templates", upload_form(MJML, "Hi")),
    ):
        resp = await app.client.post(path, headers=browser.headers, data=form, allow_redirects=False)
        assert resp.status == 403, path
    async with app.rt.db.read() as session:
        assert (
            await session.execute(select(func.count()).select_from(Template).where(Template.name == "spring-news"))
        ).scalar_one() == 0
