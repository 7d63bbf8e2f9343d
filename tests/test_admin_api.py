"""The admin JSON API: named tokens and scopes, subscriber search with cursor pagination,
timeline, layer moves, tags, events and stats; errors in one shape."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from responder.funnel.events import record_event
from responder.models import Enrollment, Subscriber

from .admin_fixtures import make_subscriber
from .conftest import App


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_named_tokens_have_scopes_and_can_be_revoked(app: App) -> None:
    client = app.client
    resp = await client.post("/api/v1/tokens", json={"name": "shop", "scope": "read"}, headers=app.auth)
    assert resp.status == 201
    read_token = (await resp.json())["token"]
    resp = await client.post("/api/v1/tokens", json={"name": "crm", "scope": "write"}, headers=app.auth)
    write_token = (await resp.json())["token"]

    assert (await client.get("/api/v1/layers", headers=bearer(read_token))).status == 200
    resp = await client.post("/api/v1/tokens", json={"name": "x", "scope": "read"}, headers=bearer(read_token))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    resp = await client.post("/api/v1/tokens", json={"name": "x", "scope": "read"}, headers=bearer(write_token))
    assert resp.status == 201

    listed = await (await client.get("/api/v1/tokens", headers=app.auth)).json()
    assert [(t["name"], t["scope"]) for t in listed["tokens"]] == [("crm", "write"), ("shop", "read"), ("x", "read")]
    assert all("token" not in t for t in listed["tokens"])

    resp = await client.post("/api/v1/tokens", json={"name": "shop", "scope": "read"}, headers=app.auth)
    assert resp.status == 409 and (await resp.json())["error"]["field"] == "name"
    assert (await client.delete("/api/v1/tokens/shop", headers=app.auth)).status == 204
    assert (await client.get("/api/v1/layers", headers=bearer(read_token))).status == 401
    assert (await client.delete("/api/v1/tokens/shop", headers=app.auth)).status == 404
    # The bootstrap token keeps working beside named ones.
    assert (await client.get("/api/v1/tokens", headers=app.auth)).status == 200
    assert (await client.get("/api/v1/tokens", headers=bearer("rsp_guess"))).status == 401


async def test_search_filters_and_cursor_pages(app: App) -> None:
    for i in range(7):
        await make_subscriber(
            app.rt, f"user{i}@example.com", name=f"User {i}", layer=1 + i % 2, tags=["preferred"] if i % 3 == 0 else []
        )
    await make_subscriber(app.rt, "gone@example.com", name="Gone", status="unsubscribed")

    async def emails(query: str) -> list[str]:
        resp = await app.client.get(f"/api/v1/subscribers?{query}", headers=app.auth)
        assert resp.status == 200, await resp.text()
        return [s["email"] for s in (await resp.json())["subscribers"]]

    assert await emails("layer=2") == ["user5@example.com", "user3@example.com", "user1@example.com"]
    assert await emails("tag=preferred") == ["user6@example.com", "user3@example.com", "user0@example.com"]
    assert await emails("status=unsubscribed") == ["gone@example.com"]
    assert await emails("q=USER 4") == ["user4@example.com"]
    assert await emails("q=%25") == []  # a literal '%' matches nothing, not everything

    seen: list[str] = []
    cursor = ""
    while True:
        resp = await app.client.get(f"/api/v1/subscribers?limit=3&cursor={cursor}", headers=app.auth)
        body = await resp.json()
        seen += [s["email"] for s in body["subscribers"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert len(seen) == 8 and len(set(seen)) == 8

    for query, field in (
        ("layer=abc", "layer"),
        ("status=odd", "status"),
        ("cursor=%21%21", "cursor"),
        ("limit=0", "limit"),
        ("tag=a%20b", "tag"),
    ):
        resp = await app.client.get(f"/api/v1/subscribers?{query}", headers=app.auth)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "invalid" and error["field"] == field and error["message"]


async def test_move_layer_tags_and_timeline(app: App) -> None:
    subscriber_id = await make_subscriber(app.rt, "ada@example.com", name="Ada")
    async with app.rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        await record_event(session, subscriber, "open", app.clock.now(), machine=True)
    app.clock.advance(60)

    resp = await app.client.post(
        f"/api/v1/subscribers/{subscriber_id}/layer",
        json={"position": 3, "reason": "bought the course"},
        headers=app.auth,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["layer"]["position"] == 3
    async with app.rt.db.read() as session:
        [enrollment] = (
            (await session.execute(select(Enrollment).where(Enrollment.subscriber_id == subscriber_id))).scalars().all()
        )
        assert enrollment.state == "active"  # layer 3's sequence started

    resp = await app.client.post(f"/api/v1/subscribers/{subscriber_id}/layer", json={"position": 3}, headers=app.auth)
    assert resp.status == 409
    resp = await app.client.post(f"/api/v1/subscribers/{subscriber_id}/layer", json={"position": 42}, headers=app.auth)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "position"
    resp = await app.client.post("/api/v1/subscribers/999999/layer", json={"position": 2}, headers=app.auth)
    assert resp.status == 404

    for _ in range(2):
        resp = await app.client.put(f"/api/v1/subscribers/{subscriber_id}/tags/preferred", headers=app.auth)
        assert (await resp.json())["tags"] == ["preferred"]
    resp = await app.client.delete(f"/api/v1/subscribers/{subscriber_id}/tags/preferred", headers=app.auth)
    assert (await resp.json())["tags"] == []

    resp = await app.client.get(f"/api/v1/subscribers/{subscriber_id}/timeline", headers=app.auth)
    items = (await resp.json())["items"]
    [move, enter] = [item for item in items if item["kind"] == "layer"]
    assert "bought the course" in move["summary"] and move["type"] == "up"
    assert move["summary"].startswith("layer 1 (New customer) → layer 3 (Mastery)")
    assert enter["type"] == "enter" and enter["summary"].startswith("enter layer 1 (New customer)")
    assert items.index(move) < items.index(enter)
    opened = next(item for item in items if item["type"] == "open")
    assert opened["machine"] is True and items.index(move) < items.index(opened)


async def test_events_list_and_stats(app: App) -> None:
    ids = [await make_subscriber(app.rt, f"s{i}@example.com", layer=1 + i % 2) for i in range(4)]
    now = app.clock.now()
    async with app.rt.db.transaction() as session:
        for subscriber_id in ids:
            subscriber = await session.get(Subscriber, subscriber_id)
            assert subscriber is not None
            await record_event(session, subscriber, "sent", now)
            await record_event(session, subscriber, "open", now, machine=subscriber_id == ids[0])
        gone = await session.get(Subscriber, ids[1])
        assert gone is not None
        gone.status = "complained"
        await record_event(session, gone, "complaint", now)

    resp = await app.client.get("/api/v1/events?type=open&machine=true", headers=app.auth)
    events = (await resp.json())["events"]
    assert [e["subscriber_id"] for e in events] == [ids[0]]
    resp = await app.client.get("/api/v1/events?type=nope", headers=app.auth)
    assert resp.status == 400

    app.clock.advance(days=1)
    stats = await (await app.client.get("/api/v1/dashboard", headers=app.auth)).json()
    assert [layer["subscribers"] for layer in stats["layers"]] == [2, 1, 0, 0, 0]
    assert stats["layers"][1]["churned"] == 1 and stats["layers"][1]["churn_rate"] == 0.5
    assert stats["opens"] == {"human": 3, "machine": 1}
    assert stats["sent"] == 4 and stats["complaints"] == 1
    assert stats["complaint_rate"] == 0.25 and stats["complaint_alarm"] is True
    assert len(stats["moves"]) == 8
    assert dt.date.fromisoformat(stats["moves"][-1]["week_start"]).weekday() == 0
