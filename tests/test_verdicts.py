"""Scanners that look like people, through the real server and its tracking writer: clicks
around a trap hit (those written before it too), the pixel with every link in one instant, and
a browser-driven scanner pacing its clicks over every link of the real starter mails. Their
events are machine with a reason, and none of them promotes (the default rule: clicks in two
mails); the same clicks made like a person do."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from sqlalchemy import select

from responder.models import LayerHistory
from responder.tracking.links import TRAP

from .admin_fixtures import signed_in
from .conftest import App, confirm_path, sent_recorded
from .public_fixtures import another_message, events, flushed, make_subscriber

CHROME = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
}
LINK = re.compile(r'href="([^"]+)"')
WINDOW_S = 10  # RESPONDER_MACHINE_WINDOW_S


@dataclass
class Mail:
    message_pk: int
    pixel: str
    links: list[str]  # the tracked links a reader sees (the trap is hidden)
    trap: str


def read_mail(app: App, received) -> Mail:  # type: ignore[no-untyped-def]
    body = received.message.get_body(("html",)).get_content()
    pixel = re.search(r'src="(https://news\.example\.com/o/[^"]+)"', body)
    assert pixel
    links, trap, message_pk = [], "", 0
    for url in dict.fromkeys(html.unescape(u) for u in LINK.findall(body) if "/c/" in u):
        message_pk, target = app.rt.tokens.read_click(url.rpartition("/c/")[2])
        if target == TRAP:
            trap = app.path(url)
        else:
            links.append(app.path(url))
    assert trap and len(links) >= 2, links
    return Mail(message_pk, app.path(pixel.group(1)), links, trap)


async def two_mails(app: App, email: str) -> tuple[Mail, Mail]:
    """Subscribe and confirm ``email``; the first two starter mails of layer 1, as received."""
    resp = await app.client.post("/subscribe", data={"email": email, "name": "Ada"}, allow_redirects=False)
    assert resp.status == 303
    [confirmation] = await app.smtp.wait_for(1, email)
    assert (await app.client.post(confirm_path(confirmation))).status == 200
    first = read_mail(app, (await app.smtp.wait_for(2, email))[1])
    await sent_recorded(app.rt, id=first.message_pk)
    app.clock.advance(days=2)
    app.rt.wake_scheduler()
    second = read_mail(app, (await app.smtp.wait_for(3, email))[2])
    await sent_recorded(app.rt, id=second.message_pk)
    return first, second


async def judged(app: App) -> None:
    """Past the window the promotion judgement waits, and the judgement done."""
    await flushed(app)
    app.clock.advance(WINDOW_S + 1)
    await flushed(app)


def click(app: App, message_pk: int, url: str) -> str:
    return f"/c/{app.rt.tokens.click(message_pk, url)}"


async def moves(app: App) -> list[LayerHistory]:
    async with app.rt.db.read() as session:
        return list((await session.execute(select(LayerHistory).where(LayerHistory.kind == "move"))).scalars())


async def test_a_browser_driven_scanner_pacing_its_clicks_over_every_link_promotes_nobody(app: App) -> None:
    """A Chrome agent clicking every link of both mails 1.2 s apart, each click written before
    the next arrives: every click ends as ``sweep``, and the two clicked mails promote nobody.
    One click per mail, minutes apart, from the same browser then promotes."""
    first, second = await two_mails(app, "ada@example.com")
    for mail in (first, second):
        app.clock.advance(60)
        for link in mail.links:
            resp = await app.client.get(link, headers=CHROME, allow_redirects=False)
            assert resp.status == 302
            await flushed(app)  # on disk, judged human so far: the sweep re-marks it
            app.clock.advance(1.2)
    await judged(app)
    clicks = await events(app, type="click")
    assert len(clicks) == len(first.links) + len(second.links) >= 4
    assert {(c.machine, c.verdict) for c in clicks} == {(True, "sweep")}
    assert await moves(app) == []

    for mail in (first, second):
        app.clock.advance(300)
        await app.client.get(mail.links[0], headers=CHROME, allow_redirects=False)
    await judged(app)
    assert [c.verdict for c in await events(app, type="click")][-2:] == ["human", "human"]
    [move] = await moves(app)
    assert "clicked in 2 mails" in move.reason


async def test_the_pixel_and_every_link_within_40_ms_is_a_sweep(app: App) -> None:
    """The pixel first (written as a human open), then every link within 40 ms; and in the
    second mail every link first, then the pixel in a later batch: all of it machine."""
    first, second = await two_mails(app, "bo@example.com")
    app.clock.advance(60)
    await app.client.get(first.pixel, headers=CHROME)
    await flushed(app)
    assert [(e.machine, e.verdict) for e in await events(app, type="open")] == [(False, "human")]
    for link in first.links:
        app.clock.advance(0.01)
        await app.client.get(link, headers=CHROME, allow_redirects=False)
    await flushed(app)
    app.clock.advance(60)
    for link in second.links:
        await app.client.get(link, headers=CHROME, allow_redirects=False)
        app.clock.advance(0.01)
    await flushed(app)
    await app.client.get(second.pixel, headers=CHROME)
    await judged(app)
    hits = await events(app, type="open") + await events(app, type="click")
    assert len(hits) == 2 + len(first.links) + len(second.links)
    assert {(e.machine, e.verdict) for e in hits} == {(True, "sweep")}
    assert await moves(app) == []


async def test_clicks_around_a_trap_hit_are_machine_even_those_written_before_it(app: App) -> None:
    """A scanner clicks a link in each of two mails (each click on disk, human so far: enough
    to promote) and, 3 s later, each mail's trap: both clicks become ``trap_window``, and as
    the judgement waits out the window, nobody is promoted. A click 2 s after a trap hit is
    ``trap_window`` too; a click long after is a person's."""
    subscriber, first = await make_subscriber(app)
    second = await another_message(app, subscriber)
    app.clock.advance(60)
    for message_pk in (first, second):
        await app.client.get(click(app, message_pk, "https://a.example/1"), headers=CHROME, allow_redirects=False)
        await flushed(app)
        app.clock.advance(1)
    assert [(c.machine, c.verdict) for c in await events(app, type="click")] == [(False, "human")] * 2
    app.clock.advance(2)
    for message_pk in (first, second):
        await app.client.get(click(app, message_pk, TRAP), headers=CHROME)
    await flushed(app)
    app.clock.advance(30)
    await app.client.get(click(app, second, TRAP), headers=CHROME)
    await flushed(app)
    app.clock.advance(2)
    await app.client.get(click(app, second, "https://a.example/2"), headers=CHROME, allow_redirects=False)
    await judged(app)
    clicks = await events(app, type="click")
    assert [(c.message_id, c.machine, c.verdict) for c in clicks] == [
        (first, True, "trap_window"),
        (second, True, "trap_window"),
        (first, True, "trap"),
        (second, True, "trap"),
        (second, True, "trap"),
        (second, True, "trap_window"),
    ]
    assert await moves(app) == []
    app.clock.advance(600)
    await app.client.get(click(app, second, "https://a.example/1"), headers=CHROME, allow_redirects=False)
    await judged(app)
    assert (await events(app, type="click"))[-1].verdict == "human"
    assert await moves(app) == []  # one mail clicked by a person, not two


async def test_the_dashboard_counts_opens_and_clicks_by_reason(app: App) -> None:
    subscriber, message = await make_subscriber(app)
    app.clock.advance(60)
    gmail = {"User-Agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"}
    await app.client.get(f"/o/{app.rt.tokens.open(message)}", headers=gmail)
    await app.client.head(f"/o/{app.rt.tokens.open(message)}", headers=CHROME)
    app.clock.advance(60)
    for n in (1, 2):
        await app.client.get(click(app, message, f"https://a.example/{n}"), headers=CHROME, allow_redirects=False)
    app.clock.advance(60)
    await app.client.get(click(app, await another_message(app, subscriber), TRAP), headers=CHROME)
    await judged(app)
    stats = await (await app.client.get("/api/v1/dashboard", headers=app.auth)).json()
    assert [(r["reason"], r["machine"], r["opens"], r["clicks"]) for r in stats["reasons"]] == [
        ("sweep", True, 0, 2),
        ("head", True, 1, 0),
        ("trap", True, 0, 1),
        ("gmail_proxy", False, 1, 0),
    ]
    assert stats["opens"] == {"human": 1, "machine": 1} and stats["clicks"] == {"human": 0, "machine": 3}
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/")).text()
    rows = re.findall(r'<tr id="reason-(\w+)">.*?<td>(human|machine)</td><td>(\d+)</td><td>(\d+)</td></tr>', page)
    assert rows == [
        ("sweep", "machine", "0", "2"),
        ("head", "machine", "1", "0"),
        ("trap", "machine", "0", "1"),
        ("gmail_proxy", "human", "1", "0"),
    ]
    assert "Gmail&#39;s image proxy" in page or "Gmail's image proxy" in page
