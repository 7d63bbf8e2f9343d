"""The admin web UI over HTTP: sign-in, cookie flags, CSRF and cross-origin refusal, escaping,
the Content-Security-Policy, and the pages' content."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from responder.funnel.events import record_event
from responder.models import AdminSession, Message, Step, Subscriber
from responder.web.admin.auth import THROTTLE
from responder.web.admin.throttle import MAX_FAILURES, WINDOW_S, SignInThrottle

from .admin_fixtures import CSRF_FIELD, PASSWORD, make_subscriber, signed_in
from .conftest import App


async def test_pages_need_a_session(app: App) -> None:
    resp = await app.client.get("/admin/subscribers", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
    resp = await app.client.post("/admin/subscribers/1/layer", data={"position": "2"}, allow_redirects=False)
    assert resp.status == 403


async def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    form = await app.client.get("/admin/login")
    token = CSRF_FIELD.search(await form.text()).group(1)  # type: ignore[union-attr]
    resp = await app.client.post(
        "/admin/login",
        allow_redirects=False,
        data={"username": "ada", "password": PASSWORD, "csrf": token},
        headers={"Cookie": f"responder_login_csrf={token}"},
    )
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" in cookie  # the base URL is https
    resp = await browser.get("/admin/")
    assert resp.status == 200 and "Subscribers per layer" in await resp.text()
    resp = await browser.post("/admin/logout", {})
    assert resp.status == 303
    assert (await browser.get("/admin/")).status == 303
    async with app.rt.db.read() as session:
        assert len((await session.execute(select(AdminSession))).scalars().all()) == 1


async def test_wrong_password_and_login_without_its_token_are_refused(app: App) -> None:
    await signed_in(app.rt, app.client)
    form = await app.client.get("/admin/login")
    token = CSRF_FIELD.search(await form.text()).group(1)  # type: ignore[union-attr]
    resp = await app.client.post(
        "/admin/login",
        data={"username": "ada", "password": "wrong password!", "csrf": token},
        headers={"Cookie": f"responder_login_csrf={token}"},
    )
    assert resp.status == 401 and "Wrong username or password" in await resp.text()
    resp = await app.client.post(
        "/admin/login",
        data={"username": "ada", "password": PASSWORD, "csrf": "forged"},
        headers={"Cookie": f"responder_login_csrf={token}"},
    )
    assert resp.status == 403


async def test_state_changes_need_the_token_and_the_same_origin(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    subscriber_id = await make_subscriber(app.rt, "grace@example.com")
    path = f"/admin/subscribers/{subscriber_id}/layer"
    refused = [
        await browser.post(path, {"position": "3"}, csrf=False),
        await browser.post(path, {"position": "3", "csrf": "not-the-token"}, csrf=False),
        await browser.post(path, {"position": "3"}, headers={"Origin": "https://evil.example"}),
        await browser.post(path, {"position": "3"}, headers={"Sec-Fetch-Site": "cross-site"}),
        await browser.post(path, {"position": "3"}, headers={"Origin": "null"}),
    ]
    assert [r.status for r in refused] == [403] * 5
    assert "cross-origin request refused" in await refused[2].text()
    async with app.rt.db.read() as session:
        assert (await session.get(Subscriber, subscriber_id)).layer_id == 1  # type: ignore[union-attr]
    resp = await browser.post(
        path, {"position": "3"}, headers={"Origin": "https://news.example.com", "Sec-Fetch-Site": "same-origin"}
    )
    assert resp.status == 303
    async with app.rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None and subscriber.layer_id == 3


async def test_hostile_names_are_escaped_and_scripts_only_from_self(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    hostile = "<script>alert(1)</script>"
    subscriber_id = await make_subscriber(app.rt, "mallory@example.com", name=hostile)
    for path in ("/admin/subscribers", f"/admin/subscribers/{subscriber_id}", "/admin/subscribers?q=%3Cscript%3E"):
        resp = await browser.get(path)
        html = await resp.text()
        assert resp.status == 200
        assert hostile not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp


async def test_every_page_renders(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    await make_subscriber(app.rt, "lin@example.com", name="Lin", layer=2, tags=["preferred"])
    expected = {
        "/admin/": "Moves per week",
        "/admin/subscribers": "lin@example.com",
        "/admin/layers": "Promotion rule",
        "/admin/settings": "_domainkey.acme.example.com",
        "/admin/imports/new": "consent_source",
    }
    for path, text in expected.items():
        resp = await browser.get(path)
        assert resp.status == 200, path
        assert text in await resp.text(), path
    js = await app.client.get("/admin/static/admin.js")
    assert js.status == 200 and "followImport" in await js.text()


async def test_tag_preferred_and_move_from_the_detail_page(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    subscriber_id = await make_subscriber(app.rt, "ken@example.com", name="Ken")
    resp = await browser.post(f"/admin/subscribers/{subscriber_id}/preferred", {"on": "1"})
    assert resp.status == 303
    page = await (await browser.get(f"/admin/subscribers/{subscriber_id}")).text()
    assert "Remove preferred" in page
    resp = await browser.post(
        f"/admin/subscribers/{subscriber_id}/layer", {"position": "2", "reason": "bought the starter kit"}
    )
    assert resp.headers["Location"].endswith("notice=moved-2")
    page = await (await browser.get(resp.headers["Location"])).text()
    assert "Moved to layer 2" in page and "admin: bought the starter kit" in page
    async with app.rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None and subscriber.tags == ["preferred"]


async def test_sessions_expire(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    app.clock.advance(app.rt.settings.admin_session_s - 1)
    assert (await browser.get("/admin/settings")).status == 200
    app.clock.advance(2)
    resp = await browser.get("/admin/settings")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"


async def test_tokens_are_created_and_revoked_from_settings(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    resp = await browser.post("/admin/settings/tokens", {"name": "shop", "scope": "read"})
    page = await resp.text()
    assert resp.status == 200 and "shown again" in page
    secret = page.split('<code class="secret">')[1].split("</code>")[0]
    assert (await app.client.get("/api/v1/layers", headers={"Authorization": f"Bearer {secret}"})).status == 200
    resp = await browser.post("/admin/settings/tokens/shop/revoke", {})
    assert resp.status == 303
    assert (await app.client.get("/api/v1/layers", headers={"Authorization": f"Bearer {secret}"})).status == 401


async def test_repeated_wrong_passwords_lock_the_username_for_a_while(app: App) -> None:
    await signed_in(app.rt, app.client)
    form = await app.client.get("/admin/login")
    token = CSRF_FIELD.search(await form.text()).group(1)  # type: ignore[union-attr]

    async def attempt(password: str) -> int:
        resp = await app.client.post(
            "/admin/login",
            allow_redirects=False,
            data={"username": "ada", "password": password, "csrf": token},
            headers={"Cookie": f"responder_login_csrf={token}"},
        )
        return resp.status

    throttle = app.client.app[THROTTLE]
    for _ in range(MAX_FAILURES - 1):  # as if guessed before
        throttle.failed("ADA", app.clock.now())
    assert await attempt("one guess too many") == 401
    assert await attempt(PASSWORD) == 429
    app.clock.advance(WINDOW_S + 1)
    assert await attempt(PASSWORD) == 303


@pytest.mark.parametrize(
    ("failures", "ago_s", "wait_s"),
    [
        (9, 0, 0),
        (10, 0, 900),
        (10, 300, 600),
        (10, 900, 0),
        (25, 100, 800),
    ],
)
def test_throttle_window(failures: int, ago_s: int, wait_s: int) -> None:
    throttle = SignInThrottle()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for _ in range(failures):
        throttle.failed("ada", start)
    assert throttle.wait_s("Ada", start + dt.timedelta(seconds=ago_s)) == wait_s
    throttle.succeeded("ada")
    assert throttle.wait_s("ada", start) == 0


async def test_sequences_page_shows_each_steps_figures(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    now = app.clock.now()
    ids = [await make_subscriber(app.rt, f"s{i}@example.com") for i in range(4)]
    async with app.rt.db.transaction() as session:
        step = (await session.execute(select(Step).order_by(Step.id).limit(1))).scalar_one()
        for i, subscriber_id in enumerate(ids):
            subscriber = await session.get(Subscriber, subscriber_id)
            assert subscriber is not None
            message = Message(
                subscriber_id=subscriber.id,
                kind="step",
                step_id=step.id,
                template_name=step.template_name,
                state="sent",
                attempts=1,
                next_attempt_at=now,
                message_id=f"<m{i}@example.com>",
                created_at=now,
                sent_at=now,
            )
            session.add(message)
            await session.flush()
            if i < 2:  # two people open, one of them twice and clicks
                await record_event(session, subscriber, "open", now, message_id=message.id)
            if i == 0:
                await record_event(session, subscriber, "open", now, message_id=message.id)
                await record_event(session, subscriber, "click", now, message_id=message.id)
            if i == 3:  # a scanner's fetch is not a person
                await record_event(session, subscriber, "click", now, message_id=message.id, machine=True)
    page = await (await browser.get("/admin/sequences")).text()
    row = page.split(f'<li id="step-{step.id}">')[1].split("</li>")[0]
    assert "Sent 4 · opened by people 2 (50%) · clicked by people 1 (25%)" in row
