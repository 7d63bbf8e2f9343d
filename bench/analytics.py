"""Funnel figures on a large list: ``funnel_stats`` (all time and the last 30 days) and
``dashboard_stats`` over a SQLite file with SUBSCRIBERS subscribers and their layer history.

Each subscriber entered a layer (confirmed or imported) at some time in the last year; half of
them moved one to three times since; one in ten left (unsubscribe, hard bounce, complaint or
sunset). Reference measured in the same run: reading the same history rows, ordered by
subscriber, without adding anything up; the ratio shows what the fold costs on top of the read.

    .venv/bin/python bench/analytics.py [SUBSCRIBERS]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

from responder.app import start_runtime
from responder.funnel.analytics import funnel_stats
from responder.funnel.dashboard import dashboard_stats
from responder.models import Event, Layer, LayerHistory, Subscriber
from responder.runtime import Runtime
from responder.settings import Settings

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CHUNK = 5000


def population(count: int, layers: list[Layer]) -> tuple[list[dict], list[dict], list[dict]]:  # type: ignore[type-arg]
    rng = random.Random(16)
    subscribers, history, events = [], [], []
    for i in range(1, count + 1):
        at = NOW - dt.timedelta(days=rng.uniform(0, 365))
        position = rng.choice([1, 1, 1, 2, 3])
        layer = layers[position - 1]
        history.append(
            {"subscriber_id": i, "kind": "enter", "to_layer_id": layer.id, "to_position": position,
             "to_name": layer.name, "reason": "imported", "event_ids": [], "created_at": at}
        )  # fmt: skip
        for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
            at += dt.timedelta(days=rng.uniform(0.5, 40))
            if at >= NOW:
                break
            target = max(1, min(5, position + rng.choice([1, 1, 1, -1])))
            if target == position:
                continue
            history.append(
                {"subscriber_id": i, "kind": "move", "from_layer_id": layers[position - 1].id,
                 "from_position": position, "to_layer_id": layers[target - 1].id, "to_position": target,
                 "reason": "bench", "event_ids": [], "created_at": at}
            )  # fmt: skip
            position = target
        status = "active"
        if rng.random() < 0.1:
            at += dt.timedelta(days=rng.uniform(0, 30))
            how = rng.choice(["unsubscribe", "bounce", "complaint", "sunset"])
            if how == "sunset":
                status = "sunset"
                history.append(
                    {"subscriber_id": i, "kind": "sunset", "from_layer_id": layers[position - 1].id,
                     "to_layer_id": layers[position - 1].id, "reason": "sunset", "event_ids": [], "created_at": at}
                )  # fmt: skip
            else:
                status = {"unsubscribe": "unsubscribed", "bounce": "bounced", "complaint": "complained"}[how]
                events.append({"subscriber_id": i, "type": how, "machine": False, "data": {}, "created_at": at})
        subscribers.append(
            {"id": i, "email": f"p{i}@example.com", "name": "", "status": status,
             "layer_id": layers[position - 1].id, "attributes": {}, "tags": [], "created_at": NOW, "confirmed_at": NOW}
        )  # fmt: skip
    return subscribers, history, events


async def fill(rt: Runtime, count: int) -> int:
    async with rt.db.read() as session:
        layers = list((await session.execute(select(Layer).order_by(Layer.position))).scalars())
    subscribers, history, events = population(count, layers)
    for model, rows in ((Subscriber, subscribers), (LayerHistory, history), (Event, events)):
        for start in range(0, len(rows), CHUNK):
            async with rt.db.transaction() as session:
                await session.execute(insert(model), rows[start : start + CHUNK])
    return len(history)


async def timed(label: str, work) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        await work()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<44} {best * 1000:9.0f} ms")
    return best


async def run(count: int, folder: Path) -> None:
    settings = Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'bench.db'}",
            "RESPONDER_SMTP_URL": f"file:{folder / 'out'}",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
        }
    )
    rt = (await start_runtime(settings)).runtime
    try:
        rows = await fill(rt, count)
        print(f"subscribers: {count:,}, layer history rows: {rows:,}")

        async def read_only() -> None:
            async with rt.db.read() as session:
                stream = await session.stream(
                    select(LayerHistory.subscriber_id, LayerHistory.created_at, LayerHistory.kind)
                    .order_by(LayerHistory.subscriber_id, LayerHistory.created_at, LayerHistory.id)
                    .execution_options(yield_per=2000)
                )
                async for _ in stream.partitions(5000):
                    pass

        async def all_time() -> None:
            async with rt.db.read() as session:
                await funnel_stats(session, NOW)

        async def last_30_days() -> None:
            async with rt.db.read() as session:
                await funnel_stats(session, NOW, NOW - dt.timedelta(days=30))

        async def dashboard() -> None:
            async with rt.db.read() as session:
                await dashboard_stats(session, NOW)

        reference = await timed("reference: read the history, ordered", read_only)
        for label, work in (
            ("funnel_stats, all time", all_time),
            ("funnel_stats, last 30 days", last_30_days),
            ("dashboard_stats (30-day window)", dashboard),
        ):
            spent = await timed(label, work)
            print(f"{'':<44} ×{spent / reference:.2f} the reference")
    finally:
        await rt.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(count, Path(tmp)))


if __name__ == "__main__":
    main()
