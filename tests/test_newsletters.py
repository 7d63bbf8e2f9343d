"""Newsletters: layer targeting (required), tags, scheduling, a fixed audience walked in
batches, pause / resume / cancel without double sends, progress over the API and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select

from responder.cli import main
from responder.errors import Conflict, ValidationError
from responder.funnel import layers as layers_service
from responder.funnel import newsletters
from responder.models import Message, Newsletter, Subscriber
from responder.runtime import Runtime

from .conftest import App
from .funnel_fixtures import make_subscriber, rt, settle  # noqa: F401


async def advance(rt: Runtime, batch: int = 3) -> int:
    async with rt.db.transaction() as session:
        return await newsletters.advance(session, rt.clock.now(), domain="acme.example.com", batch=batch)


async def recipients(rt: Runtime, newsletter_id: int) -> list[int]:
    async with rt.db.read() as session:
        return list(
            (
                await session.execute(
                    select(Message.subscriber_id)
                    .where(Message.newsletter_id == newsletter_id)
                    .order_by(Message.subscriber_id)
                )
            ).scalars()
        )


async def create(rt: Runtime, **data: object) -> Newsletter:
    async with rt.db.transaction() as session:
        return await newsletters.create(
            session, {"name": "Spring", "template": "layer2-how-to", **data}, rt.clock.now(), rt.settings
        )


async def test_layers_are_required_and_checked(rt: Runtime) -> None:
    for bad in ({}, {"layers": []}, {"layers": [9]}, {"layers": ["all"]}):
        with pytest.raises(ValidationError) as err:
            await create(rt, **bad)
        assert err.value.field == "layers"
    with pytest.raises(ValidationError):
        await create(rt, layers=[1], send_at="2026-01-05T10:00:00")  # no zone
    with pytest.raises(ValidationError):
        await create(rt, layers=[1], tags=["no spaces"])


async def test_targeted_batched_pause_resume_cancel(rt: Runtime) -> None:
    layer2 = [await make_subscriber(rt, f"two{i}@example.com", layer=2) for i in range(7)]
    await make_subscriber(rt, "one@example.com", layer=1)
    vip = await make_subscriber(rt, "vip@example.com", layer=3)
    async with rt.db.transaction() as session:
        await layers_service.set_preferred(session, vip.id, True)
    await make_subscriber(rt, "three@example.com", layer=3)

    later = rt.clock.now() + dt.timedelta(hours=2)
    news = await create(rt, layers=[2, 3], tags=[], send_at=later.isoformat())
    assert news.state == "scheduled"
    assert await advance(rt) == 0  # not yet
    rt.clock.advance(hours=2)
    assert await advance(rt) == 1
    async with rt.db.read() as session:
        progress = await newsletters.progress(session, await newsletters.get(session, news.id))
    assert progress["total"] == 9 and progress["queued"] == 3 and progress["state"] == "sending"

    # The audience was fixed at the start: a newcomer is not added; a leaver is not mailed.
    late = await make_subscriber(rt, "late@example.com", layer=2)
    async with rt.db.transaction() as session:
        leaver = await session.get(Subscriber, layer2[5].id)
        leaver.status = "unsubscribed"  # type: ignore[union-attr]
        await newsletters.pause(session, news.id)
    assert await advance(rt) == 0
    assert len(await recipients(rt, news.id)) == 3
    async with rt.db.transaction() as session:
        await newsletters.resume(session, news.id)
        with pytest.raises(Conflict):
            await newsletters.resume(session, news.id)
    # A stale cursor (as after a crash between queueing and saving it) sends nobody twice.
    async with rt.db.transaction() as session:
        (await session.get(Newsletter, news.id)).cursor = 0  # type: ignore[union-attr]
    while await advance(rt):
        pass
    sent_to = await recipients(rt, news.id)
    assert len(sent_to) == len(set(sent_to)) == 8
    assert late.id not in sent_to and layer2[5].id not in sent_to
    async with rt.db.read() as session:
        done = await newsletters.get(session, news.id)
        assert done.state == "sent" and done.finished_at is not None

    # Preferred customers of a layer only; then a cancel drops what is not yet sent.
    offer = await create(rt, name="Offer", layers=[3], tags=["preferred"], send_now=True)
    await advance(rt)
    assert await recipients(rt, offer.id) == [vip.id]
    big = await create(rt, name="Big", layers=[2], send_now=True)
    await advance(rt, batch=2)
    async with rt.db.transaction() as session:
        await newsletters.cancel(session, big.id, rt.clock.now())
        progress = await newsletters.progress(session, await newsletters.get(session, big.id))
        assert progress["state"] == "cancelled" and progress["failed"] == 2
    assert await advance(rt) == 0
    assert len(await recipients(rt, big.id)) == 2


async def test_newsletter_over_http_with_delivery_and_cli_progress(app: App, capsys) -> None:  # type: ignore[no-untyped-def]
    people = [await make_subscriber(app.rt, f"p{i}@example.com", layer=2) for i in range(4)]
    await app.smtp.wait_for(4)  # their layer-2 welcome step
    await settle(app)  # recorded as sent (at the clock's time then)
    app.clock.advance(days=1)  # a drip step and a newsletter never go within a day of each other
    resp = await app.client.post(
        "/api/v1/newsletters",
        headers=app.auth,
        json={"name": "News", "template": "layer2-quick-wins", "layers": [2], "send_now": True},
    )
    assert resp.status == 201, await resp.text()
    news_id = (await resp.json())["id"]
    await app.smtp.wait_for(8)
    for _ in range(100):
        resp = await app.client.get(f"/api/v1/newsletters/{news_id}", headers=app.auth)
        progress = await resp.json()
        if progress["sent"] == 4:
            break
        app.rt.wake_outbox()
        await asyncio.sleep(0.02)
    assert progress["total"] == 4 and progress["state"] == "sent"
    assert {p.email for p in people} == {r.rcpt_tos[0] for r in app.smtp.received[4:]}
    resp = await app.client.post(f"/api/v1/newsletters/{news_id}/pause", headers=app.auth)
    assert resp.status == 409

    url = app.rt.settings.database_url
    assert await asyncio.to_thread(main, ["newsletters", "progress", str(news_id), "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert f"[{'#' * 30}] 4/4 sent" in out
    for template, code in (("x", 1), ("enquiry-ack", 1), ("layer2-how-to", 0)):
        create = ["newsletters", "create", "Draft", "--template", template, "--layers", "1", "--database-url", url]
        assert await asyncio.to_thread(main, create) == code
    captured = capsys.readouterr()
    assert "no template named 'x'" in captured.err
    assert "'enquiry-ack' cannot be sent as a newsletter" in captured.err and "'enquiry' is undefined" in captured.err
    assert "(draft)" in captured.out
    async with app.rt.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Newsletter))).scalar_one() == 2


async def test_newsletter_waits_when_the_layer_says_so(rt: Runtime) -> None:
    async with rt.db.transaction() as session:
        await layers_service.update_layer(
            session, 2, {"rule": {"promote": {"on_any": ["reply"]}, "caps": {"collision": "newsletter_waits"}}}
        )
    ida = await make_subscriber(rt, "ida@example.com", layer=2)
    from .funnel_fixtures import tick

    await tick(rt)  # the layer-2 welcome step goes now
    news = await create(rt, layers=[2], send_now=True)
    await advance(rt)
    async with rt.db.read() as session:
        held = (
            await session.execute(
                select(Message.next_attempt_at).where(Message.newsletter_id == news.id, Message.subscriber_id == ida.id)
            )
        ).scalar_one()
    assert held == rt.clock.now() + dt.timedelta(days=1)
