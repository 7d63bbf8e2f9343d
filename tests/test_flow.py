"""The whole trust loop through the real HTTP app, a real SMTP server and a real database:
subscribe → confirmation mail → confirm → drip → open → clicks → promotion → layer-2 mail →
unsubscribe → silence. The clock moves; nothing sleeps for the drip delays."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from responder.funnel.scheduler import Scheduler
from responder.models import Event, LayerHistory, Message, Subscriber

from .conftest import App, sent_recorded
from .public_fixtures import flushed

LINK = re.compile(r'href="([^"]+)"')


def html_part(received) -> str:  # type: ignore[no-untyped-def]
    return received.message.get_body(("html",)).get_content()


def text_part(received) -> str:  # type: ignore[no-untyped-def]
    return received.message.get_body(("plain",)).get_content()


async def test_whole_loop(app: App) -> None:
    client, smtp = app.client, app.smtp
    resp = await client.post(
        "/subscribe", data={"email": "Ada@Example.com", "name": "Ada Lovelace"}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/subscribe/default/thanks"

    [confirmation] = await smtp.wait_for(1, "ada@example.com")
    assert "confirm" in confirmation.message["Subject"].lower()
    confirm_url = re.search(r"https://news\.example\.com/confirm/[\w.\-]+", text_part(confirmation))
    assert confirm_url, text_part(confirmation)

    # The link opens a page with a button; only the button's POST confirms.
    resp = await client.get(app.path(confirm_url.group(0)))
    assert resp.status == 200
    assert f'<form method="post" action="{app.path(confirm_url.group(0))}">' in await resp.text()
    resp = await client.post(app.path(confirm_url.group(0)))
    assert resp.status == 200
    assert "Welcome aboard" in await resp.text()

    # Layer 1's first step is due at once: it arrives without moving the clock.
    welcome = (await smtp.wait_for(2, "ada@example.com"))[1]
    await sent_recorded(app.rt, 2)
    msg = welcome.message
    assert msg["Subject"] == "Welcome to Acme & Sons, Ada"
    assert msg["Message-ID"] and msg["Date"]
    assert msg["List-Unsubscribe"].strip().startswith("<https://news.example.com/unsubscribe/")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    html, text = html_part(welcome), text_part(welcome)
    assert "Ada" in html and "{{" not in html and "{%" not in html and "{{" not in text

    view = re.search(r'href="(https://news\.example\.com/v/[^"]+)"', html)
    assert view, "the mail links to its online copy untracked"
    online = await client.get(app.path(view.group(1)))
    assert online.status == 200
    online_html = await online.text()
    assert "Ada" in online_html and "/o/" not in online_html

    pixel = re.search(r'src="(https://news\.example\.com/o/[^"]+)"', html)
    assert pixel
    resp = await client.get(app.path(pixel.group(1)), headers={"User-Agent": "Mozilla/5.0"})
    assert resp.status == 200 and resp.content_type == "image/gif"

    clicks = [u for u in LINK.findall(html) if "/c/" in u]
    assert clicks, "links are rewritten to tracked /c/ URLs"
    app.clock.advance(60)
    resp = await client.get(
        app.path(clicks[0].replace("&amp;", "&")), allow_redirects=False, headers={"User-Agent": "Mozilla/5.0"}
    )
    assert resp.status == 302
    assert resp.headers["Location"].startswith("https://acme.example.com/")

    # Two days on: the second drip mail; a click in it is the second clicked mail → layer 2.
    app.clock.advance(days=2)
    app.rt.wake_scheduler()
    second = (await smtp.wait_for(3, "ada@example.com"))[2]
    assert second.message["Subject"] == "The one thing to try first"
    second_click = next(u for u in LINK.findall(html_part(second)) if "/c/" in u)
    await sent_recorded(app.rt, 3)
    app.clock.advance(60)
    resp = await client.get(
        app.path(second_click.replace("&amp;", "&")), allow_redirects=False, headers={"User-Agent": "Mozilla/5.0"}
    )
    assert resp.status == 302
    # Judged once no late trap hit or sweep can turn the click machine (machine_window_s).
    await flushed(app)
    app.clock.advance(11)
    await flushed(app)

    layer2 = (await smtp.wait_for(4, "ada@example.com"))[3]
    assert layer2.message["Subject"] == "Getting the most from what you already have"
    async with app.rt.db.read() as session:
        ada = (await session.execute(select(Subscriber).where(Subscriber.email == "ada@example.com"))).scalar_one()
        [enter, move] = (await session.execute(select(LayerHistory).order_by(LayerHistory.id))).scalars().all()
        assert (enter.kind, enter.to_position, enter.reason) == ("enter", 1, "confirmed the subscription")
        assert move.kind == "move" and (move.from_position, move.to_position) == (1, 2)
        assert "clicked in 2 mails" in move.reason
        assert len(move.event_ids) == 2

    resp = await client.get(f"/api/v1/subscribers/{ada.id}", headers=app.auth)
    body = await resp.json()
    assert body["layer"]["position"] == 2
    assert [e["state"] for e in body["enrollments"]] == ["handed_off", "active"]

    # The unsubscribe page asks; only the POST (here RFC 8058 one-click) unsubscribes.
    unsubscribe_url = layer2.message["List-Unsubscribe"].strip().strip("<>")
    resp = await client.get(app.path(unsubscribe_url))
    assert resp.status == 200
    async with app.rt.db.read() as session:
        assert (await session.get(Subscriber, ada.id)).status == "active"  # type: ignore[union-attr]
    for _ in range(2):  # idempotent
        resp = await client.post(
            app.path(unsubscribe_url),
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200
    async with app.rt.db.read() as session:
        assert (await session.get(Subscriber, ada.id)).status == "unsubscribed"  # type: ignore[union-attr]
        unsubscribes = (
            await session.execute(select(func.count()).select_from(Event).where(Event.type == "unsubscribe"))
        ).scalar_one()
        assert unsubscribes == 1

    # Silence: however far the clock moves, nothing more is sent.
    for _ in range(3):
        app.clock.advance(days=7)
        assert await Scheduler(app.rt).run_once() == 0
    async with app.rt.db.read() as session:
        queued = (
            await session.execute(
                select(func.count()).select_from(Message).where(Message.state.in_(("queued", "sending")))
            )
        ).scalar_one()
    assert queued == 0
    assert len(smtp.to("ada@example.com")) == 4
