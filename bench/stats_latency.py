"""``GET /api/v1/stats`` and ``/api/v1/dashboard`` on a large list, and what ``/healthz`` waits
meanwhile, on a SQLite file of SUBSCRIBERS subscribers (a third moved up since entering) and
EVENTS opens, clicks and sends of the last 30 days (default: 2 per subscriber).

Reference measured in the same run: the same reports built the way the handlers did before,
on the server's own event loop and reader pool, with ``/healthz`` probed every 20 ms alike.

    .venv/bin/python bench/stats_latency.py [SUBSCRIBERS] [EVENTS] [--not-rolled]

The events are rolled up first (``funnel.rollup``), as the scheduler does every minute;
``--not-rolled`` measures the reports counting every event instead.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test's data generator

from responder.app import init_app, start_runtime  # noqa: E402
from responder.funnel import rollup  # noqa: E402
from responder.funnel.analytics import funnel_stats  # noqa: E402
from responder.funnel.dashboard import dashboard_stats  # noqa: E402
from responder.models import Layer  # noqa: E402
from responder.settings import Settings  # noqa: E402
from tests.test_reports_apart import fill  # noqa: E402


async def probed(client: TestClient, work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds ``work`` took, the longest ``/healthz`` wait while it ran)."""
    started = time.perf_counter()
    task = asyncio.ensure_future(work())
    slowest = 0.0
    while not task.done():
        sent = time.perf_counter()
        await (await client.get("/healthz")).read()
        slowest = max(slowest, time.perf_counter() - sent)
        await asyncio.sleep(0.02)
    await task
    return time.perf_counter() - started, slowest


async def run(subscribers: int, events: int, folder: Path, rolled_up: bool) -> None:
    path = folder / "bench.db"
    settings = Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
            "RESPONDER_SMTP_URL": f"file:{folder / 'out'}",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
        }
    )
    rt = (await start_runtime(settings)).runtime
    client = TestClient(TestServer(init_app(rt, background=False)))
    try:
        now = rt.clock.now()
        async with rt.db.read() as session:
            layer_ids = list((await session.scalars(select(Layer.id).order_by(Layer.position))).all())
        started = time.perf_counter()
        await asyncio.to_thread(fill, str(path), now, layer_ids, subscribers, events)
        print(f"subscribers: {subscribers:,}, events: {events:,} (written in {time.perf_counter() - started:.1f} s)")
        if rolled_up:  # as the scheduler does every minute: the reports then read the figures
            started = time.perf_counter()
            while await rollup.roll(rt.db, now + rollup.LAG):
                pass
            print(f"rolled up into the daily figures in {time.perf_counter() - started:.1f} s")
        await client.start_server()
        auth = {"Authorization": "Bearer bench"}

        async def in_place_stats() -> None:
            async with rt.db.read() as session:
                await funnel_stats(session, rt.clock.now())

        async def in_place_dashboard() -> None:
            async with rt.db.read() as session:
                await dashboard_stats(session, rt.clock.now())

        def get(url: str) -> Callable[[], Awaitable[object]]:
            async def work() -> None:
                response = await client.get(url, headers=auth)
                assert response.status == 200, await response.text()
                await response.read()

            return work

        for label, before, after in (
            ("/api/v1/stats", in_place_stats, get("/api/v1/stats")),
            ("/api/v1/dashboard", in_place_dashboard, get("/api/v1/dashboard")),
        ):
            ref_s, ref_health_s = await probed(client, before)
            new_s, new_health_s = await probed(client, after)
            print(
                f"{label:<18} on the loop (before): {ref_s * 1000:6.0f} ms,"
                f" /healthz waited {ref_health_s * 1000:5.0f} ms"
                f" | apart (now): {new_s * 1000:7.0f} ms, /healthz waited {new_health_s * 1000:6.0f} ms"
                f" | ×{new_s / ref_s:.2f} time, ×{new_health_s / ref_health_s:.2f} health wait"
            )
    finally:
        await client.close()
        await rt.close()


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    subscribers = int(args[0]) if args else 100_000
    events = int(args[1]) if len(args) > 1 else 2 * subscribers
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(subscribers, events, Path(tmp), "--not-rolled" not in sys.argv))


if __name__ == "__main__":
    main()
