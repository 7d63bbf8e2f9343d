"""Queuing one newsletter to every subscriber: seconds against the list's size, on SQLite and
PostgreSQL, then the reports a big list makes slow, timed over HTTP while the data is there.

For each size: a fresh database (a SQLite file in a temporary folder, or a fresh PostgreSQL
database beside the one ``--database-url`` names), SUBSCRIBERS active subscribers spread over
every layer (written in one ``INSERT … SELECT``; the CLI's ``import_csv`` is timed as well for
sizes up to ``--import-max``), a newsletter to every layer created the way the API does it, and
the scheduler's ticks (``Scheduler.run_once``, back to back as its loop runs them while they
find work) until every recipient is queued; then what an idle tick costs.

Reference measured in the same run, in the same database: a bare ``INSERT INTO messages …
SELECT`` of the same number of outbox rows, so the ratio shows what planning each copy costs.

    .venv/bin/python bench/newsletter_size.py [--subscribers 100000 1000000]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--json PATH]
        [--no-http] [--import-max 200000]

``--json PATH`` writes one row per (database, size): ``database``, ``subscribers``, ``seconds``,
``per_subscriber_us``, ``rows_per_s``, ``rss_mb`` (the process's peak when the enqueue ended),
``reference_seconds``, ``ratio``, ``ticks``, ``idle_tick_ms``, ``fill_seconds``,
``import_seconds`` and the endpoints' median milliseconds (``http_ms``). Without
``--database-url`` only SQLite is measured; ``--full`` measures 100,000 and 1,000,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import gc
import json
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import make_url

from responder.app import init_app, start_runtime
from responder.audience.directory import encode_cursor
from responder.funnel import newsletters
from responder.funnel.scheduler import Scheduler
from responder.models import Layer, Message, Newsletter, UTCDateTime
from responder.runtime import Runtime
from responder.settings import Settings
from responder.web.admin.users import create_user, sign_in

TEMPLATE = "layer2-how-to"  # a starter template that renders as a newsletter
IDLE_TICKS = 20
PASSWORD = "bench-password-long-enough"


@dataclass
class Result:
    database: str
    subscribers: int
    seconds: float
    per_subscriber_us: float
    rows_per_s: float
    rss_mb: float
    reference_seconds: float
    ratio: float
    ticks: int
    idle_tick_ms: float
    fill_seconds: float
    import_seconds: float | None
    http_ms: dict[str, float] = field(default_factory=dict)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.asynccontextmanager
async def fresh_database(kind: str, base_url: str | None, folder: Path) -> AsyncIterator[str]:
    """A SQLAlchemy URL of an empty database, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    assert base_url is not None
    url = make_url(base_url)
    name = f"bench_newsletter_{uuid.uuid4().hex[:8]}"
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def settings_for(url: str, folder: Path) -> Settings:
    return Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": url,
            "RESPONDER_SMTP_URL": f"file:{folder / 'out'}",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
        }
    )


async def fill(rt: Runtime, subscribers: int) -> list[int]:
    """``subscribers`` active subscribers, ids 1…N, round-robin over the layers; the layers'
    positions."""
    async with rt.db.read() as session:
        layers = (await session.execute(select(Layer.id, Layer.position).order_by(Layer.position))).all()
    ids = ", ".join(str(layer.id) for layer in layers)
    count = len(layers)
    now = rt.clock.now()
    # Each layer's id picked by position in a literal list: one statement, no per-row round trips.
    if rt.db.is_sqlite:
        numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) SELECT i FROM n"
        layer = f"json_extract('[{ids}]', '$[' || (i % {count}) || ']')"
    else:
        numbers = "SELECT i FROM generate_series(1, :n) AS i"
        layer = f"(ARRAY[{ids}])[i % {count} + 1]"
    async with rt.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO subscribers (id, email, name, status, layer_id, layer_entered_at, attributes, tags,"
                " created_at, confirmed_at, frequency)"
                f" SELECT i, 'p' || i || '@example.com', '', 'active', {layer}, :now, '{{}}', '[]', :now, :now,"
                f" 'normal' FROM ({numbers}) AS numbers"
            ).bindparams(bindparam("now", type_=UTCDateTime)),
            {"n": subscribers, "now": now},
        )
    if not rt.db.is_sqlite:
        async with rt.db.transaction() as session:
            await session.execute(text("SELECT setval('subscribers_id_seq', :n)"), {"n": subscribers})
            await session.execute(text("ANALYZE"))
    return [layer.position for layer in layers]


async def time_import(kind: str, base_url: str | None, folder: Path, subscribers: int) -> float:
    """Seconds the CLI's ``import_csv`` takes for a CSV of ``subscribers`` rows, into a fresh
    database of its own."""
    from responder.audience.importer import import_csv

    path = folder / "people.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "layer", "tags"])
        for i in range(subscribers):
            writer.writerow([f"person{i}@example{i % 97}.com", f"Person {i}", 1 + i % 5, ""])
    async with fresh_database(kind, base_url, folder) as url:
        rt = (await start_runtime(settings_for(url, folder))).runtime
        try:
            started = time.perf_counter()
            with path.open("rb") as binary:
                state = await import_csv(rt, binary, consent_source="bench")
            assert state.imported == subscribers, (state.imported, subscribers)
            return time.perf_counter() - started
        finally:
            await rt.close()
            path.unlink()


async def enqueue(rt: Runtime, positions: list[int]) -> tuple[int, float, int, float]:
    """Create and start a newsletter to every layer and let the scheduler's ticks queue it, back
    to back as its loop runs them while they find work, until all are queued: the newsletter's
    id, seconds, ticks, and the seconds of an idle tick. The first tick (the sweep, the roll-up)
    runs before the newsletter is created, and is not counted."""
    scheduler = Scheduler(rt)
    await scheduler.run_once()
    # As every responder process (serve, scheduler, worker) does once started (cli._run): what
    # start-up built stays out of the collector's full collections. Without it each full
    # collection walked the whole process, some 80 ms, every few batches.
    gc.freeze()
    async with rt.db.transaction() as session:
        newsletter = await newsletters.create(
            session,
            {"name": "Everyone", "template": TEMPLATE, "layers": positions, "send_now": True},
            rt.clock.now(),
            rt.settings,
        )
        newsletter_id = newsletter.id
    ticks = 0
    started = time.perf_counter()
    while True:
        await scheduler.run_once()
        ticks += 1
        async with rt.db.read() as session:
            state = (await session.execute(select(Newsletter.state).where(Newsletter.id == newsletter_id))).scalar_one()
        if state == "sent":
            break
    seconds = time.perf_counter() - started
    # A tick with nothing to queue: what each of the walk's ticks cost on top of its batch.
    started = time.perf_counter()
    for _ in range(IDLE_TICKS):
        await scheduler.run_once()
    idle_tick_s = (time.perf_counter() - started) / IDLE_TICKS
    await scheduler.close()
    return newsletter_id, seconds, ticks, idle_tick_s


async def reference(rt: Runtime, subscribers: int) -> float:
    """Seconds a bare ``INSERT … SELECT`` of ``subscribers`` outbox rows takes; removed after."""
    now = rt.clock.now()
    started = time.perf_counter()
    async with rt.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO messages (subscriber_id, kind, template_name, state, attempts, next_attempt_at,"
                " message_id, created_at)"
                " SELECT id, 'newsletter', :template, 'queued', 0, :now, 'ref-' || id || '@bench', :now"
                " FROM subscribers WHERE id <= :n"
            ).bindparams(bindparam("now", type_=UTCDateTime)),
            {"n": subscribers, "now": now, "template": TEMPLATE},
        )
    seconds = time.perf_counter() - started
    async with rt.db.transaction() as session:
        await session.execute(text("DELETE FROM messages WHERE message_id LIKE 'ref-%'"))
    return seconds


async def time_http(
    rt: Runtime, newsletter_id: int, subscribers: int, *, extra: dict[str, str] | None = None
) -> dict[str, float]:
    """Median milliseconds of three requests to each report a big list makes slow (and to the
    ``extra`` paths by label, as the API's client asks them)."""
    await create_user(rt, "bench", PASSWORD)
    cookie = await sign_in(rt, "bench", PASSWORD)
    client = TestClient(TestServer(init_app(rt, background=False)))
    await client.start_server()
    api = {"Authorization": "Bearer bench"}
    admin = {"Cookie": f"responder_admin={cookie}"}
    urls = {
        "/api/v1/dashboard": ("/api/v1/dashboard", api),
        "/api/v1/stats": ("/api/v1/stats", api),
        "/api/v1/newsletters/{id}/report": (f"/api/v1/newsletters/{newsletter_id}/report", api),
        "/api/v1/subscribers (first page)": ("/api/v1/subscribers", api),
        "/api/v1/subscribers (deep page)": (f"/api/v1/subscribers?cursor={encode_cursor(subscribers // 10)}", api),
        "/admin/ (dashboard page)": ("/admin/", admin),
    } | {label: (path, api) for label, path in (extra or {}).items()}
    timings: dict[str, float] = {}
    try:
        for label, (url, headers) in urls.items():
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                response = await client.get(url, headers=headers, allow_redirects=False)
                await response.read()
                runs.append(time.perf_counter() - started)
                assert response.status == 200, (url, response.status, await response.text())
            timings[label] = statistics.median(runs) * 1000
            print(f"    {label:<36} {timings[label]:9.0f} ms (median of 3)", flush=True)
    finally:
        await client.close()
    return timings


async def measure(kind: str, base_url: str | None, subscribers: int, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        import_s = None
        if subscribers <= args.import_max:
            import_s = await time_import(kind, base_url, folder, subscribers)
        async with fresh_database(kind, base_url, folder) as url:
            rt = (await start_runtime(settings_for(url, folder))).runtime
            try:
                started = time.perf_counter()
                positions = await fill(rt, subscribers)
                fill_s = time.perf_counter() - started
                newsletter_id, seconds, ticks, idle_tick_s = await enqueue(rt, positions)
                async with rt.db.read() as session:
                    queued = (
                        await session.execute(
                            select(func.count()).select_from(Message).where(Message.newsletter_id == newsletter_id)
                        )
                    ).scalar_one()
                assert queued == subscribers, (queued, subscribers)
                peak_mb = rss_mb()
                reference_s = await reference(rt, subscribers)
                result = Result(
                    database=kind,
                    subscribers=subscribers,
                    seconds=seconds,
                    per_subscriber_us=seconds / subscribers * 1e6,
                    rows_per_s=subscribers / seconds,
                    rss_mb=peak_mb,
                    reference_seconds=reference_s,
                    ratio=seconds / reference_s,
                    ticks=ticks,
                    idle_tick_ms=idle_tick_s * 1000,
                    fill_seconds=fill_s,
                    import_seconds=import_s,
                )
                imported = f"{import_s:.1f} s" if import_s is not None else f"not timed (> {args.import_max:,})"
                print(
                    f"{kind:<10} {subscribers:>9,} subscribers: enqueue {seconds:7.1f} s"
                    f" ({result.per_subscriber_us:5.1f} µs/subscriber, {result.rows_per_s:9,.0f} rows/s,"
                    f" {ticks:,} ticks), peak RSS {peak_mb:5.0f} MB | bare INSERT … SELECT {reference_s:5.1f} s,"
                    f" ratio {result.ratio:5.1f} | filled in {fill_s:.1f} s, import_csv {imported},"
                    f" idle tick {idle_tick_s * 1000:.1f} ms",
                    flush=True,
                )
                if not args.no_http:
                    result.http_ms = await time_http(rt, newsletter_id, subscribers)
                return result
            finally:
                await rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--full", action="store_true", help="the big sizes: 100,000 and 1,000,000")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL URL: measured there too (in a fresh database beside it), after SQLite",
    )
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="measure one database only")
    parser.add_argument("--import-max", type=int, default=200_000, help="time import_csv up to this size")
    parser.add_argument("--no-http", action="store_true", help="skip the endpoint timings")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.full else args.subscribers
    kinds = [("sqlite", None)]
    if args.database_url:
        kinds.append(("postgresql", args.database_url))
    if args.only:
        kinds = [(k, u) for k, u in kinds if k == args.only]
    started = dt.datetime.now(dt.UTC)
    results = [asyncio.run(measure(kind, url, size, args)) for kind, url in kinds for size in sizes]
    print(f"done in {(dt.datetime.now(dt.UTC) - started).total_seconds():.0f} s; peak RSS {rss_mb():.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
