"""Admin API skeleton, OpenAPI, health and metrics."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from responder.models import Subscriber

from .conftest import App, confirm_path


async def active_subscriber(app: App, email: str = "ada@example.com") -> int:
    await app.client.post("/subscribe", json={"email": email, "name": "Ada"})
    [confirmation] = await app.smtp.wait_for(1, email)
    assert (await app.client.post(confirm_path(confirmation))).status == 200
    async with app.rt.db.read() as session:
        return (await session.execute(select(Subscriber.id).where(Subscriber.email == email))).scalar_one()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer "}],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/layers"), ("GET", "/api/v1/subscribers/1"), ("POST", "/api/v1/events")]
)
async def test_api_needs_the_bearer_token(app: App, headers: dict, method: str, path: str) -> None:  # type: ignore[type-arg]
    resp = await app.client.request(method, path, headers=headers, json={})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_layers_with_counts(app: App) -> None:
    await active_subscriber(app)
    resp = await app.client.get("/api/v1/layers", headers=app.auth)
    layers = (await resp.json())["layers"]
    assert [x["position"] for x in layers] == [1, 2, 3, 4, 5]
    assert layers[0]["name"] == "New customer" and layers[4]["label"] == "Premier"
    assert [x["subscribers"] for x in layers] == [1, 0, 0, 0, 0]


async def test_subscriber_detail_and_unknown(app: App) -> None:
    sid = await active_subscriber(app)
    body = await (await app.client.get(f"/api/v1/subscribers/{sid}", headers=app.auth)).json()
    assert body["email"] == "ada@example.com" and body["status"] == "active"
    assert body["layer"]["position"] == 1
    for bad in ("999999", "abc", "-1"):
        resp = await app.client.get(f"/api/v1/subscribers/{bad}", headers=app.auth)
        assert resp.status == 404


async def test_purchase_promotes_at_once_and_the_next_layer_mails(app: App) -> None:
    sid = await active_subscriber(app)
    await app.smtp.wait_for(2, "ada@example.com")  # confirmation + layer 1 welcome
    app.clock.advance(60)
    resp = await app.client.post(
        "/api/v1/events",
        headers=app.auth,
        json={"email": "ADA@example.com", "type": "purchase", "data": {"product": "starter kit", "value": 49}},
    )
    assert resp.status == 201
    assert (await resp.json())["promoted_to"] == 2
    third = (await app.smtp.wait_for(3, "ada@example.com"))[2]
    assert third.message["Subject"] == "Getting the most from what you already have"
    body = await (await app.client.get(f"/api/v1/subscribers/{sid}", headers=app.auth)).json()
    assert [(h["kind"], h["reason"]) for h in body["layer_history"]] == [
        ("enter", "confirmed the subscription"),
        ("move", "purchase in layer 1"),
    ]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"email": "nobody@example.com", "type": "purchase"}, 404),
        ({"email": "ada@example.com", "type": "open"}, 400),
        ({"email": "not an address", "type": "purchase"}, 400),
        ({"email": "ada@example.com", "type": "purchase", "data": [1]}, 400),
    ],
)
async def test_bad_events(app: App, payload: dict, status: int) -> None:  # type: ignore[type-arg]
    await active_subscriber(app)
    resp = await app.client.post("/api/v1/events", headers=app.auth, json=payload)
    assert resp.status == status
    assert "message" in (await resp.json())["error"]


async def test_openapi_document_lists_the_routes(app: App) -> None:
    doc = await (await app.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/layers", "/api/v1/subscribers/{id}", "/api/v1/events"} <= set(doc["paths"])


async def test_healthz_and_metrics(app: App) -> None:
    resp = await app.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    await active_subscriber(app)
    await app.smtp.wait_for(2)
    for _ in range(50):  # the sent state is written just after the SMTP server accepts
        text = await (await app.client.get("/metrics")).text()
        if 'responder_messages{state="sent"} 2.0' in text:
            break
        await app.rt.db.ping()
    assert 'responder_messages{state="sent"} 2.0' in text
    assert 'responder_events{machine="false",type="confirm"} 1.0' in text
    assert 'responder_subscribers{status="active"} 1.0' in text


async def test_healthz_fails_when_the_database_is_gone(app: App, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from responder.db import Database

    good = app.rt.db
    app.rt.db = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        resp = await app.client.get("/healthz")
        assert resp.status == 503
    finally:
        await app.rt.close()
        app.rt.db = good
