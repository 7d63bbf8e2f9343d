"""One newsletter's report through real parts: sent to layers 2 and 3 through the SMTP sink,
opened and clicked through the real tracker (a scanner among the readers), unsubscribed with
the one-click POST; the API and the admin page count each, in total and per layer."""

from __future__ import annotations

import re

from sqlalchemy import select

from responder.models import Message

from .admin_fixtures import make_subscriber, signed_in
from .conftest import App
from .funnel_fixtures import make_subscriber as funnel_subscriber
from .funnel_fixtures import settle
from .public_fixtures import flushed
from .test_tracking import BROWSER, click_path, judged, open_path


async def winter_newsletter_read(app: App, arriving: int = 4) -> tuple[int, dict[int, int]]:
    """Layers 2 and 3 (ann, bot, cat, dan) sent the "Winter" newsletter through the SMTP sink
    (``arriving`` mails in all reach it); then ann opens and clicks, a scanner fetches bot's
    pixel, cat opens twice and dan unsubscribes in one click, all through the real tracker.
    The newsletter's id, and each reader's name → their mail's id."""
    people = {}
    for layer, name in ((2, "ann"), (2, "bot"), (3, "cat"), (3, "dan")):
        people[name] = await make_subscriber(app.rt, f"{name}@example.com", layer=layer)
    resp = await app.client.post(
        "/api/v1/newsletters",
        json={"name": "Winter", "template": "layer2-quick-wins", "layers": [2, 3], "send_now": True},
        headers=app.auth,
    )
    assert resp.status == 201, await resp.text()
    newsletter_id = (await resp.json())["id"]
    await settle(app)
    received = await app.smtp.wait_for(arriving)
    async with app.rt.db.read() as session:
        mail = dict(
            (
                await session.execute(
                    select(Message.subscriber_id, Message.id).where(
                        Message.newsletter_id == newsletter_id, Message.state == "sent"
                    )
                )
            ).all()
        )
    assert set(mail) == set(people.values())

    app.clock.advance(60)
    client = app.client
    await client.get(open_path(app, mail[people["ann"]]), headers=BROWSER)
    app.clock.advance(15)
    click = await client.get(
        click_path(app, mail[people["ann"]], "https://acme.example.com/"), headers=BROWSER, allow_redirects=False
    )
    assert click.status == 302
    await client.get(open_path(app, mail[people["bot"]]), headers={"User-Agent": "python-requests/2.32"})
    for _ in range(2):  # two opens of one mail: one mail opened
        app.clock.advance(15)
        await client.get(open_path(app, mail[people["cat"]]), headers=BROWSER)
    dans = next(r for r in received if "dan@example.com" in r.rcpt_tos)
    unsubscribe = re.search(r"<(https://[^>]+)>", dans.message["List-Unsubscribe"])
    assert unsubscribe
    resp = await client.post(app.path(unsubscribe.group(1)), data="List-Unsubscribe=One-Click")
    assert resp.status == 200
    await judged(app)
    await flushed(app)
    return newsletter_id, {name: mail[subscriber_id] for name, subscriber_id in people.items()}


async def test_a_newsletter_report_counts_people_and_machines_per_layer(papp: App) -> None:
    newsletter_id, _ = await winter_newsletter_read(papp)
    client = papp.client
    resp = await client.get(f"/api/v1/newsletters/{newsletter_id}/report", headers=papp.auth)
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    total = report["total"]
    assert (total["delivered"], total["bounced"], total["opened"], total["clicked"]) == (4, 0, 2, 1)
    assert (total["unsubscribed"], total["complained"], total["machine_hits"]) == (1, 0, 1)
    assert total["open_rate"] == 0.5 and total["click_rate"] == 0.25
    assert report["machine_by_verdict"] == {"scanner_agent": 1}
    by_layer = {row["position"]: row for row in report["layers"]}
    assert (by_layer[2]["delivered"], by_layer[2]["opened"], by_layer[2]["clicked"]) == (2, 1, 1)
    assert (by_layer[3]["delivered"], by_layer[3]["opened"], by_layer[3]["unsubscribed"]) == (2, 1, 1)
    assert by_layer[2]["machine_hits"] == 1 and by_layer[3]["machine_hits"] == 0
    assert report["hourly"] == [{"hour": 0, "open": 2, "click": 1}]
    missing = await client.get("/api/v1/newsletters/999/report", headers=papp.auth)
    assert missing.status == 404

    browser = await signed_in(papp.rt, papp.client)
    page = await (await browser.get(f"/admin/newsletters/{newsletter_id}")).text()
    assert 'id="report-total"' in page and "scanner agent 1" in page
    assert 'aria-label="human opens and clicks by the hour"' in page
    layers_table = page[page.index('id="report-layers"') :]
    assert "2 · " in layers_table and "3 · " in layers_table


async def test_the_dashboard_shows_the_steps_people_leave_from(papp: App) -> None:
    for name in ("eve", "fay"):
        await funnel_subscriber(papp.rt, f"{name}@example.com")
    await settle(papp)
    welcomes = await papp.smtp.wait_for(2)
    eve = next(r for r in welcomes if "eve@example.com" in r.rcpt_tos)
    unsubscribe = re.search(r"<(https://[^>]+)>", eve.message["List-Unsubscribe"])
    assert unsubscribe
    assert (await papp.client.post(papp.path(unsubscribe.group(1)), data="List-Unsubscribe=One-Click")).status == 200
    browser = await signed_in(papp.rt, papp.client)
    page = await (await browser.get("/admin/")).text()
    leaving = page[page.index('id="leaving"') :]
    assert 'aria-label="unsubscribes per step"' in leaving
    assert "layer1-welcome · layer 1" in leaving and "50.0% (1 of 2)" in leaving
