"""A form flood from one address (issue 18, point 9): 400 subscribe posts, 40 at a time. The
first ``RESPONDER_SUBSCRIBE_PER_IP_PER_HOUR`` are taken, every other one answers 429 with
``Retry-After`` (never a 500), the database holds only what was taken, and the server keeps
answering the open pixel and ``/healthz`` throughout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sqlalchemy import func, select

from responder.models import Subscriber

from ..conftest import App
from ..public_fixtures import make_subscriber
from ..test_tracking import BROWSER, GIF, open_path


async def test_a_flood_is_answered_429_and_nothing_else_suffers(papp: App) -> None:
    _, message = await make_subscriber(papp)
    statuses: Counter[int] = Counter()
    retry_after = set()

    async def post(number: int) -> None:
        resp = await papp.client.post("/subscribe", json={"email": f"flood{number}@example.com", "form": "landing"})
        statuses[resp.status] += 1
        if resp.status == 429:
            retry_after.add(int(resp.headers["Retry-After"]))
        await resp.release()

    slowest = 0.0
    for wave in range(10):
        flood = asyncio.gather(*(post(wave * 40 + n) for n in range(40)))
        began = time.monotonic()
        pixel = await papp.client.get(open_path(papp, message), headers=BROWSER)
        health = await papp.client.get("/healthz")
        slowest = max(slowest, time.monotonic() - began)
        assert pixel.status == 200 and await pixel.read() == GIF and health.status == 200
        await flood
    assert statuses == Counter({202: 20, 429: 380})  # the default per-IP limit
    assert retry_after and all(0 < seconds <= 3600 for seconds in retry_after)
    async with papp.rt.db.read() as session:
        flooded = select(func.count()).select_from(Subscriber).where(Subscriber.email.like("flood%"))
        assert (await session.execute(flooded)).scalar_one() == 20
    assert slowest < 5.0, slowest  # loose for a busy machine; a few tens of ms here
