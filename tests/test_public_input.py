"""Bad input at the public edges: a clear 4xx, nothing stored, nothing sent."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from responder.models import ConsentRecord, Message, Subscriber

from .conftest import App, confirm_path


async def counts(app: App) -> tuple[int, int, int]:
    async with app.rt.db.read() as session:
        return tuple(
            [  # type: ignore[return-value]
                (await session.execute(select(func.count()).select_from(model))).scalar_one()
                for model in (Subscriber, Message, ConsentRecord)
            ]
        )


BAD = [
    ({"email": "not-an-address"}, "email"),
    ({"email": ""}, "email"),
    ({"name": "Ada"}, "email"),
    ({"email": "a" * 250 + "@example.com"}, "email"),
    ({"email": "ada@example.com\r\nBcc: victim@example.org"}, "email"),
    ({"email": "ada@example.com", "name": "Ada\r\nBcc: victim@example.org"}, "name"),
    ({"email": "ada@example.com", "name": "Ada\nBcc: victim@example.org"}, "name"),
    ({"email": "ada@example.com", "name": "x" * 201}, "name"),
    ({"email": "ada@example.com", "form": "../../etc"}, "form"),
]


@pytest.mark.parametrize(("data", "field"), BAD)
async def test_bad_subscribe_json_changes_nothing(app: App, data: dict, field: str) -> None:  # type: ignore[type-arg]
    resp = await app.client.post("/subscribe", json=data)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["field"] == field and body["error"]["message"]
    assert await counts(app) == (0, 0, 0)


@pytest.mark.parametrize(("data", "field"), BAD[:6])
async def test_bad_subscribe_form_shows_a_page(app: App, data: dict, field: str) -> None:  # type: ignore[type-arg]
    resp = await app.client.post("/subscribe", data=data, allow_redirects=False)
    assert resp.status == 400
    assert resp.content_type == "text/html"
    assert "Location" not in resp.headers
    assert await counts(app) == (0, 0, 0)


async def test_header_injection_in_name_never_reaches_anyone(app: App) -> None:
    await app.client.post("/subscribe", data={"email": "ada@example.com", "name": "Ada\r\nBcc: victim@example.org"})
    await app.client.post("/subscribe", data={"email": "bob@example.com", "name": "Bob"})
    await app.smtp.wait_for(1)
    for received in app.smtp.received:
        assert received.rcpt_tos == ["bob@example.com"]
        assert b"victim" not in received.data


async def test_oversized_body_is_refused_before_it_is_read(app: App) -> None:
    big = json.dumps({"email": "ada@example.com", "name": "x" * 70_000})
    resp = await app.client.post("/subscribe", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await counts(app) == (0, 0, 0)


async def test_malformed_json_is_a_400(app: App) -> None:
    resp = await app.client.post("/subscribe", data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await counts(app) == (0, 0, 0)


async def test_honeypot_answers_like_success_and_stores_nothing(app: App) -> None:
    resp = await app.client.post(
        "/subscribe", data={"email": "bot@example.com", "hp_website": "http://spam"}, allow_redirects=False
    )
    assert resp.status == 303
    assert await counts(app) == (0, 0, 0)


async def test_active_address_gets_the_same_answer_and_no_mail(app: App) -> None:
    first = await app.client.post("/subscribe", json={"email": "ada@example.com"})
    [confirmation] = await app.smtp.wait_for(1)
    assert (await app.client.post(confirm_path(confirmation))).status == 200
    await app.smtp.wait_for(2)
    again = await app.client.post("/subscribe", json={"email": "ada@example.com"})
    assert (again.status, await again.json()) == (first.status, await first.json())
    async with app.rt.db.read() as session:
        confirms = (
            await session.execute(select(func.count()).select_from(Message).where(Message.kind == "confirm"))
        ).scalar_one()
    assert confirms == 1


async def test_pending_address_gets_one_confirmation_per_window(app: App) -> None:
    for _ in range(3):
        resp = await app.client.post("/subscribe", json={"email": "ada@example.com"})
        assert resp.status == 202
    app.clock.advance(11 * 60)
    await app.client.post("/subscribe", json={"email": "ada@example.com"})
    await app.smtp.wait_for(2)
    async with app.rt.db.read() as session:
        confirms = (
            await session.execute(select(func.count()).select_from(Message).where(Message.kind == "confirm"))
        ).scalar_one()
        consents = (await session.execute(select(ConsentRecord))).scalars().all()
    assert confirms == 2
    assert len(consents) == 4 and consents[0].ip == "127.0.0.1"


@pytest.mark.parametrize(
    "path",
    [
        "/confirm/forged",
        "/c/forged",
        "/unsubscribe/forged",
        "/preferences/forged",
        "/v/forged",
    ],
)
async def test_forged_tokens_are_404_without_location(app: App, path: str) -> None:
    resp = await app.client.get(path, allow_redirects=False)
    assert resp.status == 404
    assert "Location" not in resp.headers


async def test_forged_unsubscribe_post_changes_nothing(app: App) -> None:
    resp = await app.client.post("/unsubscribe/forged", data="List-Unsubscribe=One-Click")
    assert resp.status == 404


async def test_open_pixel_answers_even_for_unknown_tokens(app: App) -> None:
    resp = await app.client.get("/o/forged")
    assert resp.status == 200 and resp.content_type == "image/gif"
    assert len(await resp.read()) == 43
    assert "no-store" in resp.headers["Cache-Control"]


async def test_click_token_to_a_non_http_target_never_redirects(app: App) -> None:
    for target in ("javascript:alert(1)", "data:text/html,x", "ftp://x.example.com/"):
        token = app.rt.tokens.click(1, target)
        resp = await app.client.get(f"/c/{token}", allow_redirects=False)
        assert resp.status == 404 and "Location" not in resp.headers


async def test_expired_confirmation_link_offers_a_new_one(app: App) -> None:
    await app.client.post("/subscribe", json={"email": "ada@example.com"})
    [confirmation] = await app.smtp.wait_for(1)
    app.clock.advance(days=8)
    resp = await app.client.get(confirm_path(confirmation))
    assert resp.status == 410
    assert "expired" in (await resp.text()).lower()
    async with app.rt.db.read() as session:
        assert (await session.execute(select(Subscriber.status))).scalar_one() == "pending"


async def test_preferences_page_shows_status_and_level(app: App) -> None:
    await app.client.post("/subscribe", json={"email": "ada@example.com"})
    [confirmation] = await app.smtp.wait_for(1)
    await app.client.post(confirm_path(confirmation))
    async with app.rt.db.read() as session:
        sid = (await session.execute(select(Subscriber.id))).scalar_one()
    resp = await app.client.get(f"/preferences/{app.rt.tokens.unsubscribe(sid)}")
    assert resp.status == 200
    page = await resp.text()
    assert "ada@example.com" in page and "active" in page and "Welcome" in page
