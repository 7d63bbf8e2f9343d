"""The list-sized reports (``/api/v1/stats``, ``/api/v1/dashboard``) are built apart from the
event loop: ``/healthz`` keeps answering while they scan a large history, and the figures are
the ones the scan run in place gives."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.engine import make_url

from responder.app import init_app, start_runtime
from responder.clock import FakeClock
from responder.funnel import apart
from responder.funnel.analytics import funnel_stats
from responder.funnel.apart import build_apart
from responder.funnel.dashboard import dashboard_stats
from responder.models import Layer
from responder.runtime import Runtime

from .conftest import App
from .funnel_fixtures import make_settings

SUBSCRIBERS = 100_000
EVENTS = 200_000


def stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores it on SQLite


def fill(
    path: str, now: dt.datetime, layer_ids: list[int], subscribers_n: int = SUBSCRIBERS, events_n: int = EVENTS
) -> None:
    """``subscribers_n`` people who entered a layer in the last year, a third of whom moved up since,
    and ``events_n`` opens, clicks and sends of the last 30 days: written with plain ``executemany``,
    which takes a second or two where the ORM takes a minute."""
    rng = random.Random(20)
    subscribers, history, events = [], [], []
    for i in range(1, subscribers_n + 1):
        at = now - dt.timedelta(days=rng.uniform(1, 365))
        position = rng.choice([1, 1, 2, 3])
        history.append((i, "enter", None, None, layer_ids[position - 1], position, stamp(at)))
        if rng.random() < 0.33 and position < len(layer_ids):
            at += (now - at) * rng.random()
            history.append((i, "move", layer_ids[position - 1], position, layer_ids[position], position + 1, stamp(at)))
            position += 1
        subscribers.append((i, f"p{i}@example.com", layer_ids[position - 1], stamp(now), stamp(now)))
    for _ in range(events_n):
        type_ = rng.choice(["open", "open", "click", "sent"])
        machine = type_ != "sent" and rng.random() < 0.3
        verdict = None if type_ == "sent" else "prefetch" if machine else "human"
        at = stamp(now - dt.timedelta(days=rng.uniform(0, 29)))
        events.append((rng.randint(1, subscribers_n), type_, machine, verdict, at))
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO subscribers (id, email, name, status, layer_id, attributes, tags, created_at, "
            "confirmed_at, frequency) VALUES (?, ?, '', 'active', ?, '{}', '[]', ?, ?, 'normal')",
            subscribers,
        )
        db.executemany(
            "INSERT INTO layer_history (subscriber_id, kind, from_layer_id, from_position, to_layer_id, "
            "to_position, reason, event_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, 'test', '[]', ?)",
            history,
        )
        db.executemany(
            "INSERT INTO events (subscriber_id, type, machine, verdict, data, created_at) VALUES (?, ?, ?, ?, '{}', ?)",
            events,
        )


@pytest.fixture
async def rt(sqlite_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    started = await start_runtime(make_settings(sqlite_url, "file:///tmp/unused-outbox"), clock)
    try:
        yield started.runtime
    finally:
        await started.runtime.close()


async def test_healthz_answers_while_the_reports_scan(rt: Runtime) -> None:
    now = rt.clock.now()
    async with rt.db.read() as session:
        layer_ids = list((await session.scalars(select(Layer.id).order_by(Layer.position))).all())
    await asyncio.to_thread(fill, make_url(rt.settings.database_url).database or "", now, layer_ids)
    started = time.perf_counter()
    async with rt.db.read() as session:  # the scan as it ran in the request before: the reference
        expected_stats = await funnel_stats(session, now)
        expected_dashboard = (await dashboard_stats(session, now)).json()
    scan_s = time.perf_counter() - started

    client = TestClient(TestServer(init_app(rt, background=False)))
    await client.start_server()
    try:
        auth = {"Authorization": f"Bearer {rt.settings.admin_token}"}
        reports = [
            asyncio.ensure_future(client.get("/api/v1/stats", headers=auth)),
            asyncio.ensure_future(client.get("/api/v1/dashboard", headers=auth)),
        ]
        slowest_s, checks = 0.0, 0
        while not all(r.done() for r in reports):
            sent = time.perf_counter()
            health = await client.get("/healthz")
            assert health.status == 200
            slowest_s = max(slowest_s, time.perf_counter() - sent)
            checks += 1
            await asyncio.sleep(0.02)
        stats, dashboard = [await r for r in reports]
        assert stats.status == 200 and dashboard.status == 200
        assert await stats.json() == json.loads(json.dumps(expected_stats))
        assert await dashboard.json() == json.loads(json.dumps(expected_dashboard))
    finally:
        await client.close()
    assert checks >= 3, f"the reports took {scan_s:.2f} s in place; too few health checks during them"
    assert slowest_s < 0.4, f"/healthz waited {slowest_s:.2f} s (the scan takes {scan_s:.2f} s)"


async def started_at(session: object, pause_s: float) -> float:
    """A build that says when it began."""
    began = time.time()
    await asyncio.sleep(pause_s)
    return began


async def test_one_build_serves_the_requests_that_arrive_during_it(rt: Runtime) -> None:
    first, second = await asyncio.gather(
        build_apart(rt.db, "k", started_at, 0.3), build_apart(rt.db, "k", started_at, 0.3)
    )
    assert first == second  # one build
    assert await build_apart(rt.db, "k", started_at, 0.0) > first  # a finished build is not served again


async def test_a_builder_that_died_is_replaced(app: App) -> None:
    """A builder killed (say, by the kernel for memory) breaks the whole pool; the next report
    gets fresh builders instead of failing from then on."""
    first = await app.client.get("/api/v1/stats", headers=app.auth)
    assert first.status == 200
    pool = apart._builders()
    for process in list(pool._processes.values()):  # type: ignore[attr-defined]
        os.kill(process.pid, signal.SIGKILL)
    again = await app.client.get("/api/v1/stats", headers=app.auth)
    assert again.status == 200 and await again.json() == await first.json()
    assert apart._builders() is not pool


async def test_a_slow_report_is_served_at_once_while_it_is_rebuilt(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report that took long to build is kept: the next request gets it without waiting, and
    sets off a new build when it is older than REFRESH_S; the one after gets the new build."""
    monkeypatch.setattr(apart, "SLOW_S", 0.2)
    monkeypatch.setattr(apart, "REFRESH_S", 0.0)
    first = await build_apart(rt.db, "slow", started_at, 0.3)
    asked = time.perf_counter()
    again = await build_apart(rt.db, "slow", started_at, 0.3)
    assert again == first and time.perf_counter() - asked < 0.1  # the kept one, at once
    under_way = apart._under_way[rt.db]["slow"]  # …and a new build started behind it
    await under_way
    newer = await build_apart(rt.db, "slow", started_at, 0.3)
    assert newer > first
    monkeypatch.setattr(apart, "SLOW_S", 5.0)  # built fast again: not kept, built for each request
    await apart._under_way[rt.db]["slow"]
    fresh = await build_apart(rt.db, "slow", started_at, 0.0)
    assert fresh > newer
    assert await build_apart(rt.db, "slow", started_at, 0.0) > fresh
