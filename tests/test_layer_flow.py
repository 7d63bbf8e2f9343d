"""Funnel flow through the real server: every way into a layer counts for conversion, sunsets
and revivals are in the layer history with their reasons, and removing a layer rewrites no
past newsletter or weekly figure."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from responder.cli import main

from .admin_fixtures import make_subscriber as placed
from .admin_fixtures import signed_in
from .conftest import App
from .funnel_fixtures import make_subscriber
from .test_import import wait_for_job


async def get(app: App, path: str) -> Any:
    resp = await app.client.get(path, headers=app.auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def move(app: App, subscriber_id: int, position: int) -> None:
    resp = await app.client.post(
        f"/api/v1/subscribers/{subscriber_id}/layer", json={"position": position}, headers=app.auth
    )
    assert resp.status == 200, await resp.text()


async def history(app: App, subscriber_id: int) -> list[dict[str, Any]]:
    return [m for m in (await get(app, "/api/v1/layer-history"))["moves"] if m["subscriber_id"] == subscriber_id]


async def wait_until(check: Any, what: str, timeout_s: float = 10) -> Any:
    """Poll ``check()`` (real time: background loops do the work) until it returns something."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (found := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"waited in vain for {what}")
        await asyncio.sleep(0.02)
    return found


async def test_imported_subscribers_count_as_entering_their_layer(app: App, capsys) -> None:  # type: ignore[no-untyped-def]
    csv = "email,layer\n" + "".join(f"a{i}@example.com,1\n" for i in range(3)) + "c0@example.com,3\nc1@example.com,3\n"
    resp = await app.client.post(
        "/api/v1/imports?consent_source=fair", data=csv, headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 202, await resp.text()
    assert (await wait_for_job(app, (await resp.json())["id"]))["imported"] == 5
    ids = {s["email"]: s["id"] for s in (await get(app, "/api/v1/subscribers"))["subscribers"]}
    entered = await history(app, ids["c0@example.com"])
    assert [(m["kind"], m["to_layer"], m["to_name"], m["reason"]) for m in entered] == [
        ("enter", 3, "Mastery", "imported")
    ]
    app.clock.advance(days=2)
    for i in range(3):
        await move(app, ids[f"a{i}@example.com"], 2)
    app.clock.advance(days=1)
    await move(app, ids["c0@example.com"], 4)

    stats = await get(app, "/api/v1/stats")
    layers = {layer["position"]: layer for layer in stats["layers"]}
    # All three imported into layer 1 moved up; one of the two imported into layer 3 did.
    assert (layers[1]["entered"], layers[1]["moved_up"], layers[1]["conversion_to_next"]) == (3, 3, 1.0)
    assert layers[1]["median_days_in_layer"] == 2.0
    assert (layers[2]["entered"], layers[2]["conversion_to_next"]) == (3, 0.0)
    assert (layers[3]["entered"], layers[3]["moved_up"], layers[3]["conversion_to_next"]) == (2, 1, 0.5)
    assert (layers[4]["entered"], layers[4]["conversion_to_next"]) == (1, 0.0)
    assert layers[5]["conversion_to_next"] is None  # the top layer has no next
    assert sum(week["up"] for week in stats["moves_per_week"]) == 4
    dashboard = await get(app, "/api/v1/dashboard")
    assert [layer["conversion_to_next"] for layer in dashboard["layers"]] == [1.0, 0.0, 0.5, 0.0, None]
    assert [layer["entered"] for layer in dashboard["layers"]] == [3, 3, 2, 1, 0]
    page = await (await (await signed_in(app.rt, app.client)).get("/admin/")).text()
    assert "Conversion to the next layer" in page and "100.0% of 3" in page and "50.0% of 2" in page

    # A period that starts after the import: only the moves entered layers in it.
    since = (app.clock.now() - dt.timedelta(days=2)).isoformat()
    resp = await app.client.get("/api/v1/stats", params={"since": since}, headers=app.auth)
    recent = {layer["position"]: layer for layer in (await resp.json())["layers"]}
    assert [recent[p]["entered"] for p in range(1, 6)] == [0, 3, 0, 1, 0]
    assert recent[1]["conversion_to_next"] is None
    for bad in ("yesterday", "2026-13-01", "2026-02-01T10:00:00", (app.clock.now() + dt.timedelta(days=1)).isoformat()):
        resp = await app.client.get("/api/v1/stats", params={"since": bad}, headers=app.auth)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "since", bad

    url = app.rt.settings.database_url
    assert await asyncio.to_thread(main, ["stats", "--database-url", url]) == 0
    rows = {line[:2]: line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()}
    assert "100.0%" in rows["1."] and "50.0%" in rows["3."]
    assert await asyncio.to_thread(main, ["stats", "--since", "someday", "--database-url", url]) == 1
    assert "since" in capsys.readouterr().err


async def test_sunset_and_revival_are_in_the_layer_history(app: App) -> None:
    resp = await app.client.patch(
        "/api/v1/layers/1",
        json={"rule": {"promote": {"on_any": ["purchase"]}, "sunset": {"inactive_for": "90d"}}},
        headers=app.auth,
    )
    assert resp.status == 200, await resp.text()
    sam = await make_subscriber(app.rt, "sam@example.com")
    await app.smtp.wait_for(1, "sam@example.com")
    app.clock.advance(days=91)
    app.rt.wake_scheduler()

    async def sunset_row() -> list[dict[str, Any]]:
        return [m for m in await history(app, sam.id) if m["kind"] == "sunset"]

    [sunset] = await wait_until(sunset_row, "the sweep to sunset sam")
    assert (sunset["from_layer"], sunset["to_layer"], sunset["to_name"]) == (1, 1, "New customer")
    assert sunset["reason"] == "sunset: no human event for 91 days"  # the silence, exactly
    body = await get(app, f"/api/v1/subscribers/{sam.id}")
    assert body["status"] == "sunset"
    stats = await get(app, "/api/v1/stats")
    churn = stats["layers"][0]["churn"]
    assert (churn["sunset"], churn["churned"], churn["in_layer"], churn["rate"]) == (1, 1, 1, 1.0)
    dashboard = await get(app, "/api/v1/dashboard")
    assert dashboard["layers"][0]["left"]["sunset"] == 1 and dashboard["layers"][0]["churn_rate"] == 1.0

    app.clock.advance(days=9)
    resp = await app.client.post("/api/v1/events", json={"email": "sam@example.com", "type": "reply"}, headers=app.auth)
    assert resp.status == 201, await resp.text()
    rows = await history(app, sam.id)
    assert [m["kind"] for m in rows] == ["enter", "sunset", "revive"]
    assert rows[-1]["reason"] == "revived: reply after no human event for 100 days"
    assert rows[-1]["to_layer"] == 1
    body = await get(app, f"/api/v1/subscribers/{sam.id}")
    assert body["status"] == "active"
    assert [h["kind"] for h in body["layer_history"]] == ["enter", "sunset", "revive"]
    timeline = (await get(app, f"/api/v1/subscribers/{sam.id}/timeline"))["items"]
    summaries = [item["summary"] for item in timeline if item["kind"] == "layer"]
    assert summaries[:2] == [
        "revive layer 1 (New customer): revived: reply after no human event for 100 days",
        "sunset layer 1 (New customer): sunset: no human event for 91 days",
    ]
    # Revived, sam entered layer 1 again: a second stay there.
    assert (await get(app, "/api/v1/stats"))["layers"][0]["entered"] == 2
    since = (app.clock.now() - dt.timedelta(days=1)).isoformat()
    resp = await app.client.get("/api/v1/stats", params={"since": since}, headers=app.auth)
    assert (await resp.json())["layers"][0]["entered"] == 1


async def test_removing_a_layer_changes_no_past_newsletter_or_figure(app: App) -> None:
    ann = await placed(app.rt, "ann@example.com", layer=2)
    bob = await placed(app.rt, "bob@example.com", layer=3)
    resp = await app.client.post(
        "/api/v1/newsletters",
        json={"name": "Spring", "template": "layer2-quick-wins", "layers": [2, 3], "send_now": True},
        headers=app.auth,
    )
    assert resp.status == 201, await resp.text()
    newsletter_id = (await resp.json())["id"]
    await app.smtp.wait_for(1, "ann@example.com")
    await app.smtp.wait_for(1, "bob@example.com")

    async def sent() -> bool:
        return (await get(app, f"/api/v1/newsletters/{newsletter_id}"))["state"] == "sent"

    await wait_until(sent, "the newsletter to finish")
    app.clock.advance(days=7)
    await move(app, ann, 3)
    app.clock.advance(days=7)
    await move(app, ann, 4)
    await move(app, bob, 4)  # layer 3 is empty now
    app.clock.advance(days=1)

    async def figures() -> dict[str, Any]:
        stats = await get(app, "/api/v1/stats")
        dashboard = await get(app, "/api/v1/dashboard")
        return {
            "weekly": stats["moves_per_week"],
            "dashboard_weekly": dashboard["moves"],
            "layers": {
                layer["name"]: (layer["entered"], layer["moved_up"], layer["median_days_in_layer"])
                for layer in stats["layers"]
            },
            "newsletter": (await get(app, f"/api/v1/newsletters/{newsletter_id}"))["layers"],
            "history": (await get(app, "/api/v1/layer-history"))["moves"],
        }

    before = await figures()
    assert [(w["up"], w["down"]) for w in before["dashboard_weekly"][-3:]] == [(0, 0), (1, 0), (2, 0)]
    assert [(e["position"], e["name"]) for e in before["newsletter"]] == [
        (2, "Adoption of basic products and services"),
        (3, "Mastery"),
    ]
    resp = await app.client.delete("/api/v1/layers/3?move_to=2", headers=app.auth)
    assert resp.status == 200 and (await resp.json())["moved"] == 0
    after = await figures()
    assert after["weekly"] == before["weekly"]
    assert after["dashboard_weekly"] == before["dashboard_weekly"]
    assert after["newsletter"] == before["newsletter"]
    assert after["history"] == before["history"]
    del before["layers"]["Mastery"]
    assert after["layers"] == before["layers"]
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get(f"/admin/newsletters/{newsletter_id}")).text()
    assert "2 · Adoption of basic products and services, 3 · Mastery" in page

    # A newsletter composed now names the layers as they are now.
    resp = await app.client.post(
        "/api/v1/newsletters",
        json={"name": "Later", "template": "layer2-quick-wins", "layers": [3]},
        headers=app.auth,
    )
    assert [(e["position"], e["name"]) for e in (await resp.json())["layers"]] == [(3, "Adoption of methods")]
