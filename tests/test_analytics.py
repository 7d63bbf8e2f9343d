"""Funnel analytics through the API and ``responder stats``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from responder.app import init_app
from responder.cli import main
from responder.funnel.analytics import funnel_stats
from responder.funnel.events import record_event
from responder.models import Message, Subscriber
from responder.runtime import Runtime

from .funnel_fixtures import make_subscriber, mark_sent, rt, tick  # noqa: F401


async def event(rt: Runtime, subscriber_id: int, type: str, **kw: object) -> None:
    rt.clock.advance(60)
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        await record_event(session, subscriber, type, rt.clock.now(), **kw)  # type: ignore[arg-type]


async def build_history(rt: Runtime) -> None:
    people = [await make_subscriber(rt, f"s{i}@example.com") for i in range(4)]
    await tick(rt)
    await mark_sent(rt)
    async with rt.db.read() as session:
        from sqlalchemy import select

        first = dict((await session.execute(select(Message.subscriber_id, Message.id))).all())
    await event(rt, people[0].id, "open", message_id=first[people[0].id])
    await event(rt, people[1].id, "open", message_id=first[people[1].id], machine=True)
    await event(rt, people[0].id, "click", message_id=first[people[0].id])
    rt.clock.advance(days=3)
    await event(rt, people[0].id, "purchase")  # → layer 2 after 3 days
    await event(rt, people[1].id, "reply")  # → layer 2
    async with rt.db.transaction() as session:
        await session.execute(update(Subscriber).where(Subscriber.id == people[3].id).values(status="unsubscribed"))
    await event(rt, people[3].id, "unsubscribe")


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[TestClient]:
    """The HTTP app without background loops: the test decides what is sent."""
    client = TestClient(TestServer(init_app(rt, background=False)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_stats_api_and_cli(rt: Runtime, client: TestClient, capsys) -> None:  # type: ignore[no-untyped-def]
    await build_history(rt)
    resp = await client.get("/api/v1/stats", headers={"Authorization": f"Bearer {rt.settings.admin_token}"})
    assert resp.status == 200
    stats = await resp.json()
    layer1, layer2 = stats["layers"][:2]
    assert layer1["subscribers"] == 1 and layer2["subscribers"] == 2
    assert layer1["conversion_to_next"] == 0.5  # 2 of 4 who entered layer 1 moved on
    assert layer1["median_days_in_layer"] is not None and layer1["median_days_in_layer"] >= 3
    assert sum(w["up"] for w in stats["moves_per_week"]) == 2
    [month] = stats["churn_per_month"]
    assert month["layers"]["1"]["unsubscribed"] == 1
    welcome = next(s for s in stats["steps"] if s["template"] == "layer1-welcome")
    assert welcome["sent"] == 4
    assert welcome["open_rate"] == 0.25  # the machine open does not count
    assert welcome["click_rate"] == 0.25
    async with rt.db.read() as session:
        assert (await funnel_stats(session, rt.clock.now()))["layers"] == stats["layers"]

    url = rt.settings.database_url
    assert await asyncio.to_thread(main, ["stats", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "New customer" in out and "50.0%" in out and "layer1-welcome" in out
    assert await asyncio.to_thread(main, ["stats", "--json", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["subscribers"] == 1
    assert await asyncio.to_thread(main, ["layers", "list", "--database-url", url]) == 0
    assert "1. New customer [Welcome]  1 active" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["layers", "remove", "5", "--move-to", "4", "--database-url", url]) == 0
    assert await asyncio.to_thread(main, ["layers", "remove", "4", "--move-to", "3", "--database-url", url]) == 1
    assert "at least 4" in capsys.readouterr().err
