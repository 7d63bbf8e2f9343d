"""Roll-up and retention at size: MESSAGES sent drip mails of a year and a half ago (a third of
them opened, a tenth clicked) in a fresh SQLite file, rolled up into the daily figures and then
pruned with the default retention of 400 days.

Reference measured in the same run: the stats report (``funnel_stats``, all time) counting every
event itself, before anything is rolled; the figures it gives must equal those after the roll-up
and after the prune, which read the rolled figures instead.

    .venv/bin/python bench/retention.py [MESSAGES] [--json PATH]

Prints the roll-up's and the prune's rates (rows per second), the database file before and after
(``VACUUM``), and how long the report took in each state.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from responder.app import start_runtime
from responder.funnel import rollup
from responder.funnel.analytics import funnel_stats
from responder.models import Layer, Step
from responder.settings import Settings


def stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores it on SQLite


def on_disk(path: Path) -> int:
    """The database's bytes once its write-ahead log is folded back into the file."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def fill(path: Path, now: dt.datetime, layer_id: int, step_ids: list[int], messages: int) -> int:
    """``messages`` subscribers, each sent one step 450-550 days ago, with their sent event and
    some opens and clicks; the events written."""
    rng = random.Random(7)
    subscribers, mails, events = [], [], []
    for i in range(1, messages + 1):
        sent = now - dt.timedelta(days=rng.uniform(450, 550))
        subscribers.append((i, f"p{i}@example.com", layer_id, stamp(sent), stamp(sent)))
        mails.append((i, i, rng.choice(step_ids), stamp(sent), f"<{i}@bench.example>", stamp(sent)))
        events.append((i, i, "sent", 0, None, stamp(sent)))
        if rng.random() < 0.33:
            events.append((i, i, "open", 0, "human", stamp(sent + dt.timedelta(hours=rng.uniform(0, 48)))))
            if rng.random() < 0.3:
                events.append((i, i, "click", 0, "human", stamp(sent + dt.timedelta(hours=rng.uniform(0, 48)))))
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO subscribers (id, email, name, status, layer_id, attributes, tags, created_at, "
            "confirmed_at, frequency) VALUES (?, ?, '', 'active', ?, '{}', '[]', ?, ?, 'normal')",
            subscribers,
        )
        db.executemany(
            "INSERT INTO messages (id, subscriber_id, kind, step_id, template_name, state, attempts, next_attempt_at,"
            " message_id, created_at, sent_at) VALUES (?, ?, 'step', ?, 'bench', 'sent', 1, ?, ?, ?, ?)",
            [(m[0], m[1], m[2], m[3], m[4], m[5], m[5]) for m in mails],
        )
        db.executemany(
            "INSERT INTO events (subscriber_id, message_id, type, machine, verdict, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, '{}', ?)",
            events,
        )
    return len(events)


async def run(messages: int, folder: Path) -> dict[str, Any]:
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
    try:
        now = rt.clock.now()
        async with rt.db.read() as session:
            layer_id = (await session.scalars(select(Layer.id).order_by(Layer.position))).first()
            step_ids = list((await session.scalars(select(Step.id))).all())
        assert layer_id is not None
        events = await asyncio.to_thread(fill, path, now, layer_id, step_ids, messages)
        size_before = on_disk(path)

        async def report() -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            async with rt.db.read() as session:
                stats = await funnel_stats(session, now)
            stats.pop("until")
            return stats, time.perf_counter() - started

        scanned, scan_s = await report()
        started = time.perf_counter()
        while await rollup.roll(rt.db, now):
            pass
        roll_s = time.perf_counter() - started
        rolled, rolled_s = await report()
        started = time.perf_counter()
        pruned_messages, pruned_events = await rollup.prune(rt.db, settings, now, batches=10**9)
        prune_s = time.perf_counter() - started
        pruned, pruned_report_s = await report()
    finally:
        await rt.close()
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    size_after = on_disk(path)
    assert scanned == rolled == pruned, "the report changed"
    return {
        "messages": messages,
        "events": events,
        "roll_s": roll_s,
        "events_rolled_per_s": events / roll_s,
        "prune_s": prune_s,
        "messages_pruned": pruned_messages,
        "events_pruned": pruned_events,
        "messages_pruned_per_s": pruned_messages / prune_s,
        "file_mb_before": size_before / 1e6,
        "file_mb_after": size_after / 1e6,
        "report_scan_ms": scan_s * 1000,
        "report_rolled_ms": rolled_s * 1000,
        "report_pruned_ms": pruned_report_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", nargs="?", type=int, default=200_000)
    parser.add_argument("--json", help="write bench/suite.py's rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.messages, Path(tmp)))
    print(
        f"{result['messages']:,} sent mails, {result['events']:,} events\n"
        f"roll-up: {result['roll_s']:.1f} s ({result['events_rolled_per_s']:,.0f} events/s)\n"
        f"prune:   {result['prune_s']:.1f} s ({result['messages_pruned_per_s']:,.0f} mails/s;"
        f" {result['messages_pruned']:,} mails, {result['events_pruned']:,} events)\n"
        f"file:    {result['file_mb_before']:.1f} MB -> {result['file_mb_after']:.1f} MB after VACUUM\n"
        f"stats report: {result['report_scan_ms']:.0f} ms counting every event (reference), "
        f"{result['report_rolled_ms']:.0f} ms rolled up, {result['report_pruned_ms']:.0f} ms pruned; identical"
    )
    if args.json:
        setup = f"{result['messages']:,} drip mails, {result['events']:,} events, SQLite"
        rows = [
            {
                "name": f"stats report read from the roll-up ({setup})",
                "value": result["report_rolled_ms"],
                "unit": "ms",
                "reference": result["report_scan_ms"],
                "reference_name": "the same report counting every event",
                "ratio": result["report_rolled_ms"] / result["report_scan_ms"],
                "target": "figures identical (checked)",
                "met": True,
            },
            {
                "name": f"roll-up of a year and a half of events ({setup})",
                "value": result["events_rolled_per_s"],
                "unit": "events/s",
                "reference": None,
                "ratio": None,
                "target": None,
            },
            {
                "name": f"retention prune, mails with their events ({setup})",
                "value": result["messages_pruned_per_s"],
                "unit": "mails/s",
                "reference": None,
                "ratio": None,
                "target": None,
            },
        ]
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
