"""Scheduler and rule-evaluation benchmark (SQLite).

    .venv/bin/python bench/schedule.py [--sizes 10000,1000000] [--due 1000] [--events 1000] [--json PATH]

For each size: a fresh SQLite file with that many active enrollments (and subscribers), each
with three drip mails sent in the week before (what the caps read), of which ``--due`` are due
now; a scheduler tick (``Scheduler.run_once`` with a batch as large as the due set) is timed
five times (the same rows made due again in between, untimed), then an idle tick, then the
ticks that walk a newsletter to every subscriber (one batch each; the median of the first ten
that walk a whole batch, the audience's first aside). Each tick's CPU time (the process's,
SQLite's thread included) is printed beside its wall time: on a shared machine it moves less.
The cost of a tick should follow the due rows, not all rows, so the ratio against the smallest
size (the reference, measured in the same run) should stay near 1. Then the p50/p99
time to record one human click and evaluate the layer rules on it, as the tracking endpoint
does (one transaction per event), against the pure rule function alone. ``--json PATH`` writes
the figures as rows of ``bench/suite.py``'s contract.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select, text
from suite import write_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder.app import start_runtime
from responder.clock import FakeClock
from responder.core.promotion import DEFAULT_RULE, EventFact, evaluate
from responder.funnel import newsletters
from responder.funnel.events import record_event
from responder.funnel.layers import update_layer
from responder.funnel.scheduler import Scheduler
from responder.models import Message, Subscriber
from responder.settings import Settings

ROUNDS = 5
NEWSLETTER_TICKS = 10
HISTORY_DAYS = (6, 4, 2)  # each subscriber's drip mails sent this many days before the start
CAPS = {"max_per_week": 5, "min_gap": "1h"}  # read and applied, but nothing here exceeds them
START = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")


def fill(path: Path, size: int, due: int) -> None:
    """Bulk-insert ``size`` subscribers and enrollments straight through sqlite3 (fast)."""
    conn = sqlite3.connect(path)
    layer_id, sequence_id = conn.execute(
        "SELECT l.id, s.id FROM layers l JOIN sequences s ON s.layer_id = l.id WHERE l.position = 1"
    ).fetchone()
    now = stamp(START)
    due_at = stamp(START + dt.timedelta(seconds=1))
    rng = random.Random(12)
    with conn:
        conn.executemany(
            "INSERT INTO subscribers (id, email, name, status, layer_id, layer_entered_at, "
            "attributes, tags, created_at, confirmed_at) VALUES (?, ?, '', 'active', ?, ?, '{}', "
            "'[]', ?, ?)",
            ((i, f"s{i}@example.com", layer_id, now, now, now) for i in range(1, size + 1)),
        )
        due_ids = set(rng.sample(range(1, size + 1), due))
        conn.executemany(
            "INSERT INTO enrollments (subscriber_id, sequence_id, state, next_position, due_at, "
            "started_at) VALUES (?, ?, 'active', 1, ?, ?)",
            (
                (
                    i,
                    sequence_id,
                    due_at if i in due_ids else stamp(START + dt.timedelta(minutes=1 + rng.randrange(86400))),
                    now,
                )
                for i in range(1, size + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO messages (subscriber_id, kind, template_name, state, attempts, next_attempt_at, "
            "message_id, created_at, sent_at) VALUES (?, 'step', 'layer1-welcome', 'sent', 1, ?, ?, ?, ?)",
            (
                (i, sent_at, f"<h{i}.{d}@bench>", sent_at, sent_at)
                for d, sent_at in ((d, stamp(START - dt.timedelta(days=d))) for d in HISTORY_DAYS)
                for i in range(1, size + 1)
            ),
        )
    conn.execute("ANALYZE")
    conn.close()


def settings_for(path: Path) -> Settings:
    return Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
            "RESPONDER_SMTP_URL": f"file://{path.parent}/outbox",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
            "RESPONDER_FROM": "Bench <bench@example.com>",
        }
    )


async def tick_for(size: int, due: int, workdir: Path) -> tuple[float, float, float, float, float, int]:
    path = workdir / f"bench-{size}.db"
    started = await start_runtime(settings_for(path), FakeClock(START))
    await started.runtime.close()
    fill(path, size, due)
    clock = FakeClock(START)
    started = await start_runtime(settings_for(path), clock)
    rt = started.runtime
    try:
        async with rt.db.transaction() as session:
            await update_layer(session, 1, {"rule": {"caps": CAPS}})
        scheduler = Scheduler(rt, batch_size=due)
        scheduler.next_sweep_at = START + dt.timedelta(days=1)  # time the tick, not the sweep
        await scheduler.run_once()  # warm up connections and statement caches: nothing due yet
        clock.advance(seconds=1)
        ticks, tick_cpu = [], []
        for _ in range(ROUNDS):
            t0, c0 = time.perf_counter(), time.process_time()
            processed = await scheduler.run_once()
            ticks.append(time.perf_counter() - t0)
            tick_cpu.append(time.process_time() - c0)
            async with rt.db.read() as session:
                queued = (
                    await session.execute(select(func.count()).select_from(Message).where(Message.created_at >= START))
                ).scalar_one()
            assert processed == queued == due, (processed, queued)
            async with rt.db.transaction() as session:  # the same rows due again, untimed
                await session.execute(
                    text(
                        "UPDATE enrollments SET due_at = :due, next_position = 1 WHERE id IN "
                        "(SELECT e.id FROM enrollments e JOIN messages m "
                        "ON m.subscriber_id = e.subscriber_id WHERE m.created_at >= :start)"
                    ),
                    {"due": stamp(clock.now()), "start": stamp(START)},
                )
                await session.execute(text("DELETE FROM messages WHERE created_at >= :start"), {"start": stamp(START)})
        clock.advance(seconds=1)
        async with rt.db.transaction() as session:
            await session.execute(
                text("UPDATE enrollments SET due_at = :later WHERE due_at <= :now"),
                {"later": stamp(clock.now() + dt.timedelta(days=90)), "now": stamp(clock.now())},
            )
        t0 = time.perf_counter()
        await scheduler.run_once()
        idle_s = time.perf_counter() - t0
        async with rt.db.transaction() as session:
            await newsletters.create(
                session,
                {"name": "bench", "template": "layer1-welcome", "layers": [1], "send_now": True},
                clock.now(),
                rt.settings,
            )
        walks, walk_cpu = [], []
        for _ in range(NEWSLETTER_TICKS):
            t0, c0 = time.perf_counter(), time.process_time()
            await scheduler.run_once()
            walks.append(time.perf_counter() - t0)
            walk_cpu.append(time.process_time() - c0)
        async with rt.db.read() as session:
            walked = (
                await session.execute(
                    select(func.count()).select_from(Message).where(Message.newsletter_id.is_not(None))
                )
            ).scalar_one()
        assert walked == min(size, NEWSLETTER_TICKS * newsletters.BATCH), walked
        # The first walk also fixes the audience (one INSERT … SELECT of every subscriber), and
        # only the ticks that walked a whole batch count: at a small size the walk ends early and
        # the ticks after it are idle ones.
        full = slice(1, max(2, min(NEWSLETTER_TICKS, size // newsletters.BATCH)))
        return (
            statistics.median(ticks),
            statistics.median(tick_cpu),
            idle_s,
            statistics.median(walks[full]),
            statistics.median(walk_cpu[full]),
            due,
        )
    finally:
        await rt.close()


async def events_p99(count: int, workdir: Path) -> tuple[list[float], list[float]]:
    path = workdir / "bench-events.db"
    clock = FakeClock(START)
    started = await start_runtime(settings_for(path), clock)
    await started.runtime.close()
    fill(path, 1000, 0)
    started = await start_runtime(settings_for(path), clock)
    rt = started.runtime
    rng = random.Random(7)
    timings = []
    try:
        for _ in range(count):
            clock.advance(seconds=30)
            t0 = time.perf_counter()
            async with rt.db.transaction() as session:
                subscriber = await session.get(Subscriber, rng.randrange(1, 1001))
                assert subscriber is not None
                await record_event(session, subscriber, "click", clock.now(), message_id=None, machine=False)
            timings.append(time.perf_counter() - t0)
    finally:
        await rt.close()
    facts = [EventFact(i, "click", START + dt.timedelta(hours=i), i % 3) for i in range(20)]
    pure = []
    for _ in range(count):
        t0 = time.perf_counter()
        evaluate(
            DEFAULT_RULE, position=1, top_position=5, entered_at=START, events=facts, now=START + dt.timedelta(days=1)
        )
        pure.append(time.perf_counter() - t0)
    return timings, pure


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    args = parser.parse_args()
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = None
        print(f"scheduler tick, SQLite, {args.due} due enrollments (median of {ROUNDS} ticks)")
        for size in sizes:
            t0 = time.perf_counter()
            tick_s, tick_cpu_s, idle_s, walk_s, walk_cpu_s, processed = await tick_for(size, args.due, workdir)
            setup_s = time.perf_counter() - t0
            reference = reference or (tick_s, walk_s)
            rows += [
                {
                    "name": f"scheduler tick, {args.due} due of {size:,} enrollments (SQLite)",
                    "value": tick_s * 1000,
                    "unit": "ms",
                    "reference": reference[0] * 1000,
                    "reference_name": f"the same tick at {sizes[0]:,}",
                    "ratio": tick_s / reference[0],
                    "target": None,
                    "cpu_ms": tick_cpu_s * 1000,
                    "idle_tick_ms": idle_s * 1000,
                },
                {
                    "name": f"newsletter tick, {newsletters.BATCH} of {size:,} subscribers (SQLite)",
                    "value": walk_s * 1000,
                    "unit": "ms",
                    "reference": reference[1] * 1000,
                    "reference_name": f"the same tick at {sizes[0]:,}",
                    "ratio": walk_s / reference[1],
                    "target": None,
                    "cpu_ms": walk_cpu_s * 1000,
                },
            ]
            print(
                f"  {size:>9,} enrollments: tick {tick_s * 1000:7.1f} ms (CPU {tick_cpu_s * 1000:.1f}) for "
                f"{processed} due (x{tick_s / reference[0]:.2f} vs {sizes[0]:,}), idle tick "
                f"{idle_s * 1000:5.1f} ms, newsletter tick {walk_s * 1000:6.1f} ms (CPU {walk_cpu_s * 1000:.1f}) "
                f"per {newsletters.BATCH} (x{walk_s / reference[1]:.2f}), setup and all {setup_s:.0f} s"
            )
        timings, pure = await events_p99(args.events, workdir)
        print(
            f"record one human click + evaluate the rules ({args.events} events, one "
            f"transaction each): p50 {pct(timings, 50) * 1000:.2f} ms, "
            f"p99 {pct(timings, 99) * 1000:.2f} ms"
        )
        print(
            f"  reference, the pure rule alone: p50 {pct(pure, 50) * 1e6:.1f} µs, "
            f"p99 {pct(pure, 99) * 1e6:.1f} µs (x{pct(timings, 99) / pct(pure, 99):.0f})"
        )
        rows.append(
            {
                "name": f"record one human click + evaluate the rules, p99 of {args.events}",
                "value": pct(timings, 99) * 1000,
                "unit": "ms",
                "reference": pct(pure, 99) * 1000,
                "reference_name": "the pure rule alone",
                "ratio": pct(timings, 99) / pct(pure, 99),
                "target": None,
                "p50_ms": pct(timings, 50) * 1000,
            }
        )
    if args.json:
        write_rows(args.json, rows)


if __name__ == "__main__":
    asyncio.run(main())
