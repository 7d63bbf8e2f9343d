"""Layers through the admin API: 4..7 validation, create, rename, reorder, remove with moves
recorded, manual moves, rules as JSON, and the OpenAPI description of every route."""

from __future__ import annotations

from sqlalchemy import select

from responder.models import LayerHistory, Subscriber

from .conftest import App
from .funnel_fixtures import make_subscriber


async def layers(app: App) -> list[dict]:  # type: ignore[type-arg]
    resp = await app.client.get("/api/v1/layers", headers=app.auth)
    assert resp.status == 200
    return (await resp.json())["layers"]


async def test_layer_crud_with_validation(app: App) -> None:
    client, auth = app.client, app.auth
    assert [layer["label"] for layer in await layers(app)] == ["Welcome", "Member", "Expert", "Partner", "Premier"]
    resp = await client.post(
        "/api/v1/layers",
        headers=auth,
        json={
            "name": "Ambassador",
            "label": "Ambassador",
            "position": 6,
            "rule": {"promote": {"on_any": ["referral"]}, "demote": {"inactive_for": "60d"}},
        },
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/api/v1/layers", headers=auth, json={"name": "Curious", "label": "Curious", "position": 1}
    )
    assert resp.status == 201
    names = [layer["name"] for layer in await layers(app)]
    assert names[0] == "Curious" and names[-1] == "Ambassador" and len(names) == 7
    resp = await client.post("/api/v1/layers", headers=auth, json={"name": "X", "label": "X"})
    assert resp.status == 400
    assert "at most 7" in (await resp.json())["error"]["message"]

    # Bad rules are refused with the part named, and change nothing.
    resp = await client.patch("/api/v1/layers/2", headers=auth, json={"rule": {"promote": {"on_any": ["sent"]}}})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "rule"
    resp = await client.patch("/api/v1/layers/2", headers=auth, json={"name": "Newcomer", "label": "Welcome aboard"})
    assert resp.status == 200
    assert (await layers(app))[1]["name"] == "Newcomer"
    resp = await client.patch("/api/v1/layers/3", headers=auth, json={"name": "Newcomer"})
    assert resp.status == 400

    # Reorder: swap 3 and 4.
    before = await layers(app)
    resp = await client.post("/api/v1/layers/order", headers=auth, json={"order": [1, 2, 4, 3, 5, 6, 7]})
    assert resp.status == 200
    after = await layers(app)
    assert [after[2]["id"], after[3]["id"]] == [before[3]["id"], before[2]["id"]]
    resp = await client.post("/api/v1/layers/order", headers=auth, json={"order": [1, 1, 2]})
    assert resp.status == 400

    # Remove: requires move_to; subscribers move with a recorded history row.
    ada = await make_subscriber(app.rt, "ada@example.com", layer=1)
    resp = await client.delete("/api/v1/layers/1", headers=auth)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "move_to"
    resp = await client.delete("/api/v1/layers/1?move_to=2", headers=auth)
    assert resp.status == 200 and (await resp.json())["moved"] == 1
    for position in (6, 5):
        resp = await client.delete(f"/api/v1/layers/{position}?move_to=1", headers=auth)
        assert resp.status == 200
    assert [layer["position"] for layer in await layers(app)] == [1, 2, 3, 4]
    resp = await client.post(
        "/api/v1/layers",
        headers=auth,
        json={  # a removed name is free
            "name": "Curious",
            "label": "Curious",
        },
    )
    assert resp.status == 201
    resp = await client.delete("/api/v1/layers/5?move_to=1", headers=auth)
    assert resp.status == 200
    resp = await client.delete("/api/v1/layers/4?move_to=1", headers=auth)
    assert resp.status == 400 and "at least 4" in (await resp.json())["error"]["message"]
    async with app.rt.db.read() as session:
        [move] = (
            (
                await session.execute(
                    select(LayerHistory).where(LayerHistory.subscriber_id == ada.id, LayerHistory.kind == "move")
                )
            )
            .scalars()
            .all()
        )
        assert "removed" in move.reason
        subscriber = await session.get(Subscriber, ada.id)
        assert subscriber.layer_id == move.to_layer_id  # type: ignore[union-attr]

    resp = await client.get("/api/v1/layer-history", headers=auth)
    moves = (await resp.json())["moves"]
    # As it was then: ada entered layer 1 and moved to layer 2, which is at position 1 now.
    entered, moved = (m for m in moves if m["subscriber_id"] == ada.id)
    assert (entered["kind"], entered["from_layer"], entered["to_layer"]) == ("enter", None, 1)
    assert (moved["kind"], moved["from_layer"], moved["to_layer"]) == ("move", 1, 2)
    assert (moved["from_name"], moved["to_name"]) == ("Curious", "Newcomer")  # its name then, not "(removed …)"
    assert moved["to_layer_id"] == move.to_layer_id


async def test_manual_move_hands_off_and_is_recorded(app: App) -> None:
    bob = await make_subscriber(app.rt, "bob@example.com")
    await app.smtp.wait_for(1, "bob@example.com")
    resp = await app.client.post(
        f"/api/v1/subscribers/{bob.id}/layer", headers=app.auth, json={"position": 4, "reason": "met at the conference"}
    )
    assert resp.status == 200 and (await resp.json())["layer"]["position"] == 4
    [_, layer4] = await app.smtp.wait_for(2, "bob@example.com")
    assert layer4.message["Subject"]
    resp = await app.client.get(f"/api/v1/subscribers/{bob.id}", headers=app.auth)
    body = await resp.json()
    assert [e["state"] for e in body["enrollments"]] == ["handed_off", "active"]
    assert body["layer_history"][-1]["reason"] == "admin: met at the conference"
    resp = await app.client.post(f"/api/v1/subscribers/{bob.id}/layer", headers=app.auth, json={"position": 9})
    assert resp.status == 400
    resp = await app.client.put(f"/api/v1/subscribers/{bob.id}/preferred", headers=app.auth, json={"preferred": True})
    assert (await resp.json())["tags"] == ["preferred"]


async def test_every_funnel_route_is_described(app: App) -> None:
    resp = await app.client.get("/api/v1/openapi.json")
    paths = (await resp.json())["paths"]
    for path, method in [
        ("/api/v1/layers", "post"),
        ("/api/v1/layers/{position}", "patch"),
        ("/api/v1/layers/{position}", "delete"),
        ("/api/v1/layers/order", "post"),
        ("/api/v1/sequences", "post"),
        ("/api/v1/newsletters", "post"),
        ("/api/v1/newsletters/{id}/pause", "post"),
        ("/api/v1/webhooks", "post"),
        ("/api/v1/stats", "get"),
        ("/api/v1/layer-history", "get"),
    ]:
        assert method in paths[path], (path, method)
    resp = await app.client.post("/api/v1/layers", json={"name": "x", "label": "x"})
    assert resp.status == 401


async def test_sequences_over_http(app: App) -> None:
    client, auth = app.client, app.auth
    resp = await client.post(
        "/api/v1/sequences",
        headers=auth,
        json={
            "name": "After the course",
            "trigger": "purchase",
            "product": "course",
            "steps": [
                {
                    "delay": "1d",
                    "template": "layer3-sample",
                    "purpose": "offer",
                    "send_window": {"days": "mon-fri", "start": "09:00", "end": "17:00"},
                    "condition": {"require_tags": ["preferred"]},
                }
            ],
        },
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["steps"][0]["delay"] == "1d" and created["product"] == "course"
    for bad, field in [
        ({"trigger": "birthday"}, "trigger"),
        ({"trigger": "enquiry", "product": "x"}, "product"),
        ({"trigger": "enquiry", "steps": [{"template": "t", "purpose": "hype"}]}, "purpose"),
        ({"trigger": "enquiry", "steps": [{"template": "t", "purpose": "offer", "delay": "soon"}]}, None),
        (
            {"trigger": "enquiry", "steps": [{"template": "t", "purpose": "offer", "send_window": {"start": "9"}}]},
            "send_window",
        ),
    ]:
        resp = await client.post("/api/v1/sequences", headers=auth, json={"name": f"bad {field}", **bad})
        assert resp.status == 400, bad
        if field:
            assert (await resp.json())["error"]["field"] == field
    resp = await client.get("/api/v1/sequences", headers=auth)
    names = [s["name"] for s in (await resp.json())["sequences"]]
    assert "After the course" in names and not any(n.startswith("bad") for n in names)
    resp = await client.post(
        f"/api/v1/sequences/{created['id']}/steps",
        headers=auth,
        json={"delay": "3d", "template": "layer5-referral", "purpose": "referral"},
    )
    assert resp.status == 201 and (await resp.json())["position"] == 2
    step_id = (await resp.json())["id"]
    resp = await client.patch(f"/api/v1/sequences/{created['id']}/steps/{step_id}", headers=auth, json={"delay": "2d"})
    assert (await resp.json())["delay"] == "2d"
    resp = await client.delete(f"/api/v1/sequences/{created['id']}/steps/{step_id}", headers=auth)
    assert resp.status == 200
