"""Unsubscribe choices, RFC 8058 one-click, and the preference center through the real app."""

from __future__ import annotations

import json
import re

from sqlalchemy import func, select

from responder.models import (
    ConsentRecord,
    Enrollment,
    Event,
    Layer,
    Message,
    Subscriber,
    Suppression,
)

from .conftest import App
from .public_fixtures import make_subscriber


async def subscriber(app: App, pk: int) -> Subscriber:
    async with app.rt.db.read() as session:
        row = await session.get(Subscriber, pk)
        assert row is not None
        return row


async def test_page_shows_choices_and_changes_nothing(papp: App) -> None:
    pk, _ = await make_subscriber(papp, layer=2)
    token = papp.rt.tokens.unsubscribe(pk)
    for _ in range(2):
        resp = await papp.client.get(f"/unsubscribe/{token}")
        page = await resp.text()
        assert resp.status == 200
        for choice in ("all", "pause", "fewer", "down"):
            assert f'value="{choice}"' in page
    assert (await subscriber(papp, pk)).status == "active"
    resp = await papp.client.head(f"/unsubscribe/{token}")
    assert (await subscriber(papp, pk)).status == "active"


async def test_one_click_is_200_idempotent_and_immediate(papp: App) -> None:
    pk, _ = await make_subscriber(papp)
    path = f"/unsubscribe/{papp.rt.tokens.unsubscribe(pk)}"
    for _ in range(3):
        resp = await papp.client.post(
            path,
            data="List-Unsubscribe=One-Click",
            allow_redirects=False,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200 and "Location" not in resp.headers
        assert (await subscriber(papp, pk)).status == "unsubscribed"
    async with papp.rt.db.read() as session:
        assert (
            await session.execute(select(func.count()).select_from(Event).where(Event.type == "unsubscribe"))
        ).scalar_one() == 1


async def test_pause_fewer_and_down(papp: App) -> None:
    pk, _ = await make_subscriber(papp, layer=3)
    async with papp.rt.db.transaction() as session:
        session.add(
            Enrollment(
                subscriber_id=pk,
                sequence_id=1,
                state="active",
                next_position=2,
                due_at=papp.clock.now(),
                started_at=papp.clock.now(),
            )
        )
    path = f"/unsubscribe/{papp.rt.tokens.unsubscribe(pk)}"
    resp = await papp.client.post(path, data={"choice": "pause"})
    assert "Paused" in await resp.text()
    s = await subscriber(papp, pk)
    assert s.status == "active" and s.paused_until is not None
    assert (s.paused_until - papp.clock.now()).days == 30
    async with papp.rt.db.read() as session:
        due = (await session.execute(select(Enrollment.due_at))).scalar_one()
    assert due == s.paused_until  # the sequence waits out the pause
    await papp.client.post(path, data={"choice": "fewer"})
    assert (await subscriber(papp, pk)).frequency == "fewer"
    await papp.client.post(path, data={"choice": "down"})
    async with papp.rt.db.read() as session:
        s = await session.get(Subscriber, pk)
        layer = await session.get(Layer, s.layer_id)  # type: ignore[union-attr]
    assert layer is not None and layer.position == 2
    resp = await papp.client.post(path, data={"choice": "explode"})
    assert resp.status == 400


async def test_preferences_name_frequency_export_and_erase(papp: App) -> None:
    pk, _ = await make_subscriber(papp, "grace@example.com")
    token = papp.rt.tokens.unsubscribe(pk)
    resp = await papp.client.get(f"/preferences/{token}")
    assert resp.status == 200 and "grace@example.com" in await resp.text()
    resp = await papp.client.post(f"/preferences/{token}", data={"name": "Grace <b>Hopper</b>", "frequency": "fewer"})
    assert resp.status == 200 and "Grace &lt;b&gt;Hopper&lt;/b&gt;" in await resp.text()
    s = await subscriber(papp, pk)
    assert (s.name, s.frequency) == ("Grace <b>Hopper</b>", "fewer")
    for bad in ({"name": "x\r\nBcc: a@b", "frequency": "fewer"}, {"name": "G", "frequency": "x"}):
        assert (await papp.client.post(f"/preferences/{token}", data=bad)).status == 400

    # Download and erasure: the preference link only mails a link that opens them, for an hour.
    assert (await papp.client.get(f"/preferences/{token}/export")).status in (404, 405)
    resp = await papp.client.post(f"/preferences/{token}/privacy", headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    resp = await papp.client.post(f"/preferences/{token}/privacy")
    assert resp.status == 200 and "grace@example.com" in await resp.text()
    await papp.client.post(f"/preferences/{token}/privacy")  # a second ask within 10 minutes: one mail
    [mail] = await papp.smtp.wait_for(1, "grace@example.com")
    assert mail.message["List-Unsubscribe"] is None  # asked for, not list mail
    text = mail.message.get_body(("plain",)).get_content()
    match = re.search(r"https://news\.example\.com(/privacy/[\w.\-]+)", text)
    assert match, text
    link = match.group(1)
    resp = await papp.client.get(link)  # a scanner opening it changes nothing
    assert resp.status == 200 and 'action="' + link + '/erase"' in await resp.text()
    resp = await papp.client.post(link + "/export")
    assert resp.headers["Content-Disposition"].startswith("attachment")
    data = json.loads(await resp.text())
    assert data["subscriber"]["email"] == "grace@example.com"
    assert {"consent", "events", "enquiries", "messages", "layer_history"} <= set(data)
    # the privacy mail just sent is among their messages, with its end
    assert ("privacy", "sent") in [(m["kind"], m["state"]) for m in data["messages"]]

    assert (await papp.client.post(link + "/erase", data={})).status == 400
    assert (
        await papp.client.post(link + "/erase", data={"confirm": "yes"}, headers={"Origin": "https://evil.example"})
    ).status == 403
    assert (await subscriber(papp, pk)).email == "grace@example.com"
    resp = await papp.client.post(link + "/erase", data={"confirm": "yes"})
    assert resp.status == 200 and "erased" in (await resp.text()).lower()
    assert (await papp.client.get(link)).status == 404  # nothing left to open
    s = await subscriber(papp, pk)
    assert "grace" not in s.email and s.name == "" and s.status == "unsubscribed"
    async with papp.rt.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Suppression))).scalar_one() == 1
        assert (await session.execute(select(func.count()).select_from(ConsentRecord))).scalar_one() == 0
    # The erased address subscribing again is answered as always and never mailed.
    resp = await papp.client.post("/subscribe", json={"email": "Grace@Example.com"})
    assert resp.status == 202
    async with papp.rt.db.read() as session:
        assert (
            await session.execute(
                select(func.count()).select_from(Subscriber).where(Subscriber.email == "grace@example.com")
            )
        ).scalar_one() == 0
        assert (
            await session.execute(select(func.count()).select_from(Message).where(Message.kind == "confirm"))
        ).scalar_one() == 0


async def test_forged_tokens_show_a_page_and_change_nothing(papp: App) -> None:
    pk, _ = await make_subscriber(papp)
    good = papp.rt.tokens.unsubscribe(pk)
    for token in ("forged", good[:-2] + "zz", papp.rt.tokens.open(pk), papp.rt.tokens.unsubscribe(999)):
        for method, path in (
            ("GET", f"/unsubscribe/{token}"),
            ("POST", f"/unsubscribe/{token}"),
            ("GET", f"/preferences/{token}"),
            ("POST", f"/preferences/{token}/privacy"),
            ("GET", f"/privacy/{token}"),
            ("POST", f"/privacy/{token}/export"),
            ("POST", f"/privacy/{token}/erase"),
        ):
            resp = await papp.client.request(method, path, data={"confirm": "yes"})
            assert resp.status == 404, (method, path)
    assert (await subscriber(papp, pk)).status == "active"


async def test_the_data_link_expires_after_an_hour(papp: App) -> None:
    pk, _ = await make_subscriber(papp, "hal@example.com")
    link = f"/privacy/{papp.rt.tokens.privacy(pk)}"
    assert (await papp.client.get(link)).status == 200
    papp.clock.advance(seconds=3601)
    resp = await papp.client.get(link)
    assert resp.status == 404 and "expired" in await resp.text()
    assert (await papp.client.post(link + "/erase", data={"confirm": "yes"})).status == 404
    assert (await subscriber(papp, pk)).email == "hal@example.com"
