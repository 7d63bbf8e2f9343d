"""Roll-ups and retention through real parts: a newsletter sent through the SMTP sink, opened
and clicked through the real tracker, unsubscribed by the one-click POST; then the events rolled
into the daily figures and the old rows pruned. The reports (newsletter report, stats,
dashboard) read the same before and after each, activity after a roll-up is counted once per
mail across it, and a drip step whose row was pruned is not queued again."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from responder.delivery.outbox import enqueue, enqueue_many, outbox_row
from responder.funnel import rollup
from responder.models import Event, Message, RolledFigure, SentStep

from .conftest import App
from .funnel_fixtures import make_subscriber as enrolled_subscriber
from .public_fixtures import flushed
from .test_newsletter_report import winter_newsletter_read
from .test_tracking import BROWSER, click_path, open_path


async def reports(app: App, newsletter_id: int) -> dict[str, Any]:
    """Every report that reads the figures, as the API answers them now."""
    out = {}
    for name, path in (
        ("newsletter", f"/api/v1/newsletters/{newsletter_id}/report"),
        ("stats", "/api/v1/stats"),
        ("dashboard", "/api/v1/dashboard"),
    ):
        resp = await app.client.get(path, headers=app.auth)
        assert resp.status == 200, await resp.text()
        out[name] = await resp.json()
    out["stats"].pop("until")  # the time it was asked
    return out


async def scanned(app: App, scope: str) -> Counter[rollup.Key]:
    """A scope's figures counted over every event there is, as if nothing were rolled."""
    async with app.rt.db.read() as session:
        return Counter({k: v for k, v in (await rollup.count_events(session, None, None)).items() if k[0] == scope})


async def read(app: App, scope: str) -> Counter[rollup.Key]:
    async with app.rt.db.read() as session:
        return await rollup.figures(session, scope)


async def test_reports_read_the_same_before_and_after_a_roll_up_and_a_prune(papp: App) -> None:
    await enrolled_subscriber(papp.rt, "eve@example.com")  # sent layer 1's welcome step
    newsletter_id, mail = await winter_newsletter_read(papp, arriving=5)
    papp.clock.advance(600)  # past the roll-up's lag
    now = papp.clock.now()

    before = await reports(papp, newsletter_id)
    total = before["newsletter"]["total"]
    assert (total["delivered"], total["opened"], total["clicked"], total["unsubscribed"]) == (4, 2, 1, 1)
    assert total["machine_hits"] == 1 and before["newsletter"]["machine_by_verdict"] == {"scanner_agent": 1}
    assert before["dashboard"]["opens"] == {"human": 3, "machine": 1}

    # Rolled up (the server's scheduler may have rolled some already, as its clock moved): the
    # figures are in the table, nothing is left to the tail, the reports agree.
    await rollup.roll(papp.rt.db, now)
    async with papp.rt.db.read() as session:
        assert await rollup.rolled_until(session) == now - rollup.LAG
        rolled = (await session.execute(select(func.count()).select_from(RolledFigure))).scalar_one()
        assert (await rollup.count_events(session, now - rollup.LAG, None)) == Counter()
    assert rolled > 10
    assert await reports(papp, newsletter_id) == before
    for scope in ("all", "step", "newsletter"):
        assert await read(papp, scope) == await scanned(papp, scope), scope

    # Activity after the roll-up: a second open of a mail already opened adds a hit, not a
    # mail; a first click of another mail is one more clicked mail.
    papp.clock.advance(60)
    await papp.client.get(open_path(papp, mail["ann"]), headers=BROWSER)
    papp.clock.advance(15)
    await papp.client.get(
        click_path(papp, mail["cat"], "https://acme.example.com/"), headers=BROWSER, allow_redirects=False
    )
    await flushed(papp)
    after = await reports(papp, newsletter_id)
    total = after["newsletter"]["total"]
    assert (total["delivered"], total["opened"], total["clicked"]) == (4, 2, 2)
    assert after["dashboard"]["opens"] == {"human": 4, "machine": 1}
    assert after["dashboard"]["clicks"]["human"] == before["dashboard"]["clicks"]["human"] + 1
    for scope in ("all", "step", "newsletter"):
        assert await read(papp, scope) == await scanned(papp, scope), scope
    papp.clock.advance(600)
    now = papp.clock.now()
    await rollup.roll(papp.rt.db, now)
    assert await reports(papp, newsletter_id) == after

    # Pruned: a retention of one day, two days on. Every mail and its events go, in batches; the
    # reports read the same from the figures alone.
    async with papp.rt.db.read() as session:
        messages = (await session.execute(select(func.count()).select_from(Message))).scalar_one()
        steps = set(
            (
                await session.execute(
                    select(Message.subscriber_id, Message.step_id).where(Message.step_id.is_not(None))
                )
            ).all()
        )
    kept_one_day = dataclasses.replace(papp.rt.settings, retention_days=1)
    deleted, events = await rollup.prune(papp.rt.db, kept_one_day, now + dt.timedelta(days=2))
    assert deleted == messages and events > 0
    async with papp.rt.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Message))).scalar_one() == 0
        assert (
            await session.execute(select(func.count()).select_from(Event).where(Event.message_id.is_not(None)))
        ).scalar_one() == 0
        assert set((await session.execute(select(SentStep.subscriber_id, SentStep.step_id))).all()) == steps
    assert await reports(papp, newsletter_id) == after
    # The next prune waits for its hour.
    assert await rollup.prune(papp.rt.db, kept_one_day, now + dt.timedelta(days=2, minutes=5)) == (0, 0)

    # A drip step whose row was pruned is never queued again; another step still is.
    assert steps, "the subscribers were sent their layer's first step"
    subscriber_id, step_id = next(iter(steps))
    async with papp.rt.db.transaction() as session:
        row = outbox_row(subscriber_id, "step", "layer2-quick-wins", now, "example.com", step_id=step_id)
        assert await enqueue_many(session, [row]) == 0
        assert (
            await enqueue(
                session,
                subscriber_id=subscriber_id,
                kind="step",
                template_name="x",
                now=now,
                domain="example.com",
                step_id=step_id,
            )
            is None
        )
        assert await enqueue_many(session, [outbox_row(subscriber_id, "newsletter", "x", now, "example.com")]) == 1
