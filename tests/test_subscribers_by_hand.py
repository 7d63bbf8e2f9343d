"""Subscribers an admin handles by hand: one added with its consent source (API and admin page,
checked as an import row is, nothing stored on a bad field or a known address), sunset
subscribers found by the status filter, and a timeline with one line per mail."""

from __future__ import annotations

from sqlalchemy import func, select

from responder.models import ConsentRecord, Enrollment, Subscriber

from .admin_fixtures import make_subscriber, signed_in
from .conftest import App
from .funnel_fixtures import settle


async def _count(app: App) -> int:
    async with app.rt.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Subscriber))).scalar_one())


async def test_add_one_subscriber_over_the_api(app: App) -> None:
    body = {"email": "Ada@Example.com", "name": "Ada", "layer": 2, "tags": ["vip"], "consent_source": "shop counter"}
    resp = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
    assert resp.status == 201, await resp.text()
    added = await resp.json()
    assert (added["email"], added["status"], added["tags"]) == ("ada@example.com", "active", ["vip"])
    async with app.rt.db.read() as session:
        consent = (
            await session.execute(select(ConsentRecord).where(ConsentRecord.subscriber_id == added["id"]))
        ).scalar_one()
        enrolled = (await session.execute(select(func.count()).select_from(Enrollment))).scalar_one()
    assert (consent.action, consent.form) == ("admin", "shop counter")
    assert enrolled == 0  # by default: their layer's newsletters, no sequence mail

    again = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
    assert again.status == 409 and "already a subscriber" in (await again.json())["error"]["message"]
    for bad, field in (
        ({**body, "email": "not-an-address"}, "email"),
        ({**body, "email": "b@example.com", "consent_source": ""}, "consent_source"),
        ({**body, "email": "b@example.com", "layer": 9}, "layer"),
        ({**body, "email": "b@example.com", "name": "Bob\r\nBcc: x@example.com"}, "name"),
        ({**body, "email": "b@example.com", "enroll": "always"}, "enroll"),
        ({**body, "email": "b@example.com", "tags": [{}]}, "tags"),
    ):
        resp = await app.client.post("/api/v1/subscribers", json=bad, headers=app.auth)
        assert resp.status == 400, (field, await resp.text())
    assert await _count(app) == 1

    started = await app.client.post(
        "/api/v1/subscribers",
        json={"email": "cy@example.com", "consent_source": "fair", "enroll": "start"},
        headers=app.auth,
    )
    assert started.status == 201
    await settle(app)
    [welcome] = await app.smtp.wait_for(1, "cy@example.com")
    assert "Welcome" in welcome.message["Subject"]


async def test_the_admin_adds_one_filters_sunset_and_reads_one_line_per_mail(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/subscribers/new")).text()
    assert 'id="add-form"' in page and "Where they agreed" in page
    resp = await browser.post("/admin/subscribers/new", {"email": "bad", "consent_source": "fair", "layer": "1"})
    assert resp.status == 400 and 'aria-invalid="true"' in await resp.text()
    resp = await browser.post(
        "/admin/subscribers/new",
        {
            "email": "eve@example.com",
            "name": "Eve",
            "layer": "1",
            "tags": "vip, local",
            "consent_source": "fair",
            "enroll": "start",
        },
    )
    assert resp.status == 303, await resp.text()
    detail = resp.headers["Location"]
    assert detail.endswith("?notice=added")
    await settle(app)
    await app.smtp.wait_for(1, "eve@example.com")
    page = await (await browser.get(detail)).text()
    assert "Added: active now, consent on record." in page
    assert page.count("layer1-welcome") == 1  # the mail once: its delivery is not listed again as an event
    assert "delivered " in page and "queued " in page

    await make_subscriber(app.rt, "gone@example.com", status="sunset")
    listing = await (await browser.get("/admin/subscribers?status=sunset")).text()
    assert "gone@example.com" in listing and "eve@example.com" not in listing
    assert "<option selected>sunset</option>" in listing
