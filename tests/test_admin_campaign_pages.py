"""The admin newsletters and enquiries pages over HTTP: their content, input errors shown beside
the form, state conflicts, and every state-changing route refused without the CSRF token."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from responder.audience.enquiries import EnquiryIn, open_enquiry
from responder.models import Enquiry, Newsletter

from .admin_fixtures import make_subscriber, signed_in
from .conftest import App


async def newsletter_count(app: App) -> int:
    async with app.rt.db.read() as session:
        return (await session.execute(select(func.count()).select_from(Newsletter))).scalar_one()


async def test_compose_a_draft_then_send_pause_and_cancel(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    resp = await browser.get("/admin/newsletters")
    text = await resp.text()
    assert resp.status == 200 and "No newsletters yet." in text and "layer2-quick-wins" in text
    resp = await browser.post(
        "/admin/newsletters", {"name": "Spring", "template": "layer2-quick-wins", "when": "draft"}
    )
    assert resp.status == 400 and "layers is required" in await resp.text()
    assert await newsletter_count(app) == 0
    resp = await browser.post(
        "/admin/newsletters",
        {"name": "Spring", "template": "layer2-quick-wins", "when": "at", "send_at": "soon", "layers": "2"},
    )
    assert resp.status == 400 and "not a date and time" in await resp.text()
    assert await newsletter_count(app) == 0

    resp = await browser.client.post(
        "/admin/newsletters",
        allow_redirects=False,
        headers=browser.headers,
        data=[
            ("csrf", browser.csrf),
            ("name", "Spring"),
            ("template", "layer2-quick-wins"),
            ("layers", "2"),
            ("layers", "3"),
            ("tags", "preferred, vip"),
            ("when", "draft"),
        ],
    )
    assert resp.status == 303
    path = resp.headers["Location"]
    async with app.rt.db.read() as session:
        news = (await session.execute(select(Newsletter))).scalar_one()
    assert news.state == "draft" and news.tags == ["preferred", "vip"] and len(news.layer_ids) == 2
    text = await (await browser.get(path)).text()
    assert 'id="nl-schedule"' in text and 'id="nl-pause"' not in text and "preferred, vip" in text
    progress = await (await browser.get(path + ".json")).json()
    assert progress["state"] == "draft" and progress["total"] == 0

    assert (await browser.post(f"{path}/resume", {})).status == 409
    resp = await browser.post(f"{path}/pause", {})
    assert resp.status == 409 and "cannot be paused" in await resp.text()
    resp = await browser.post(f"{path}/cancel", {})
    assert resp.status == 303 and resp.headers["Location"] == f"{path}?notice=cancel"
    text = await (await browser.get(f"{path}?notice=cancel")).text()
    assert "Cancelled." in text and 'id="nl-cancel"' not in text


async def test_newsletter_routes_refuse_a_post_without_the_token(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    await make_subscriber(app.rt, "two@example.com", layer=2)
    form = {"name": "Forged", "template": "layer2-quick-wins", "layers": "2", "when": "now"}
    for token in (None, "not-the-token"):
        data = form if token is None else {**form, "csrf": token}
        assert (await browser.post("/admin/newsletters", data, csrf=False)).status == 403
    assert await newsletter_count(app) == 0
    resp = await browser.post("/admin/newsletters", {**form, "when": "draft"})
    news_path = resp.headers["Location"]
    for action in ("schedule", "pause", "resume", "cancel"):
        resp = await browser.post(f"{news_path}/{action}", {}, csrf=False)
        assert resp.status == 403, action
    async with app.rt.db.read() as session:
        assert (await session.execute(select(Newsletter.state))).scalar_one() == "draft"


async def test_enquiries_oldest_first_answer_close_and_the_token(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    ids = []
    for n in range(3):
        ids.append(
            await open_enquiry(
                app.rt, EnquiryIn(email=f"q{n}@example.com", body=f"Question <b>{n}</b>\nsecond line", subject=f"S{n}")
            )
        )
        app.clock.advance(60)
    text = await (await browser.get("/admin/enquiries")).text()
    assert [text.index(f'id="enquiry-{i}"') for i in ids] == sorted(text.index(f'id="enquiry-{i}"') for i in ids)
    assert "Question &lt;b&gt;0&lt;/b&gt;" in text

    for route in ("answer", "close"):
        resp = await browser.post(f"/admin/enquiries/{ids[0]}/{route}", {"answer": "forged"}, csrf=False)
        assert resp.status == 403
    resp = await browser.post(f"/admin/enquiries/{ids[0]}/answer", {"answer": "  "})
    assert resp.status == 400 and "answer must be" in await resp.text()
    async with app.rt.db.read() as session:
        assert {e.state for e in (await session.execute(select(Enquiry))).scalars()} == {"open"}

    resp = await browser.post(f"/admin/enquiries/{ids[0]}/answer", {"answer": "Yes, we do."})
    assert resp.status == 303
    resp = await browser.post(f"/admin/enquiries/{ids[1]}/close", {})
    assert resp.status == 303
    text = await (await browser.get("/admin/enquiries")).text()
    assert f'id="enquiry-{ids[2]}"' in text and f'id="enquiry-{ids[0]}"' not in text
    text = await (await browser.get("/admin/enquiries?state=answered")).text()
    assert f'id="enquiry-{ids[0]}"' in text and "Yes, we do." in text
    [_, answer] = await app.smtp.wait_for(2, "q0@example.com")
    assert "Yes, we do." in answer.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (await browser.post("/admin/enquiries/999/answer", {"answer": "x"})).status == 404


async def test_sending_asks_to_confirm_the_count_and_reads_times_in_the_admins_zone(app: App) -> None:
    """Send now or at a time shows a page naming how many it reaches; only its button sends.
    A time typed in Europe/Berlin is stored as UTC."""
    browser = await signed_in(app.rt, app.client)
    for i in range(4):
        await make_subscriber(app.rt, f"two{i}@example.com", layer=2, tags=["vip"] if i < 3 else [])
    counted = await (await browser.get("/admin/newsletters/audience.json?layers=2&tags=vip")).json()
    assert counted == {"count": 3}
    assert (await (await browser.get("/admin/newsletters/audience.json?layers=9")).json())["count"] is None
    form = {"name": "Winter", "template": "layer2-quick-wins", "layers": "2", "tags": "vip", "when": "now"}
    resp = await browser.post("/admin/newsletters", form)
    text = await resp.text()
    assert resp.status == 200 and 'id="confirm-count">3<' in text and 'id="confirm-when">now<' in text
    assert await newsletter_count(app) == 0  # nothing written, nothing sent yet
    resp = await browser.post("/admin/newsletters", {**form, "confirmed": "yes"})
    assert resp.status == 303
    async with app.rt.db.read() as session:
        [news] = (await session.execute(select(Newsletter))).scalars()
    assert news.state == "scheduled" and news.tags == ["vip"]

    later = {**form, "name": "Later", "when": "at", "send_at": "2030-07-01T09:30", "tz": "Europe/Berlin"}
    text = await (await browser.post("/admin/newsletters", later)).text()
    assert 'id="confirm-when">2030-07-01 09:30<' in text and "(2030-07-01 07:30 UTC)" in text
    assert (await browser.post("/admin/newsletters", {**later, "confirmed": "yes"})).status == 303
    async with app.rt.db.read() as session:
        scheduled = (await session.execute(select(Newsletter).where(Newsletter.name == "Later"))).scalar_one()
    assert scheduled.scheduled_at is not None
    assert scheduled.scheduled_at.astimezone(dt.UTC).isoformat() == "2030-07-01T07:30:00+00:00"
    resp = await browser.post("/admin/newsletters", {**later, "template": "confirm"})
    assert resp.status == 422 and await newsletter_count(app) == 2  # refused before any confirmation
