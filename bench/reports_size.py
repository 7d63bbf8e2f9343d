"""The reports a big list makes slow, at size, once the server has rolled up what happened:
the dashboard, the stats (all time), a newsletter's report, subscriber pages and the dashboard
page, timed over HTTP (median of 3 fresh builds), on SQLite and PostgreSQL.

For each size: a fresh database with SUBSCRIBERS active subscribers over every layer (as
``bench/newsletter_size.py`` fills them), a history as a list that grew over 60 days leaves it
(each subscriber entered a layer on one of those days; one in seven entered the first layer and
moved up two days later; one in fifty unsubscribed ten days after entering), and a newsletter
sent a day ago to everyone (outbox rows, recipients by layer, an open from one in five and a
click from one in twenty). Then the roll-up catches up, as a running server's scheduler does in
its first minutes (timed), and the requests are made.

Reference measured in the same run: ``GET /healthz``, what any request costs here.

    .venv/bin/python bench/reports_size.py [--subscribers 100000 1000000]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
        [--json PATH]

``--json PATH`` writes ``bench/suite.py``'s rows: one per (database, size, endpoint), its
median milliseconds against ``/healthz``'s, ``met`` when it is within the target of 200 ms,
with ``database``, ``subscribers``, ``history_rows``, ``events``, ``setup_seconds`` and
``rollup_seconds`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from newsletter_size import TEMPLATE, fill, fresh_database, settings_for, time_http
from sqlalchemy import bindparam, func, select, text
from suite import write_rows

from responder.app import start_runtime
from responder.funnel import newsletters, rollup
from responder.models import Event, Layer, LayerHistory, UTCDateTime
from responder.runtime import Runtime

DAYS = 60
TARGET_MS = 200.0


@dataclass
class Result:
    database: str
    subscribers: int
    history_rows: int = 0
    events: int = 0
    setup_seconds: float = 0.0
    rollup_seconds: float = 0.0
    http_ms: dict[str, float] = field(default_factory=dict)


def at(value: str) -> object:
    return bindparam(value, type_=UTCDateTime)


async def grow(rt: Runtime, positions: list[int]) -> int:
    """The history, the departures and a newsletter read (see the docstring); its id."""
    now = rt.clock.now()
    async with rt.db.read() as session:
        first = (await session.execute(select(Layer.id).where(Layer.position == min(positions)))).scalar_one()
    entered = (
        "INSERT INTO layer_history (subscriber_id, kind, from_layer_id, to_layer_id, from_position, to_position,"
        " from_name, to_name, reason, event_ids, created_at)"
        " SELECT s.id, 'enter', NULL, CASE WHEN s.id % 7 = 0 THEN :first ELSE s.layer_id END, NULL,"
        " CASE WHEN s.id % 7 = 0 THEN 1 ELSE l.position END, NULL, l.name, 'bench: imported', '[]', :t"
        " FROM subscribers s JOIN layers l ON l.id = s.layer_id WHERE s.id % :days = :k"
    )
    moved = (
        "INSERT INTO layer_history (subscriber_id, kind, from_layer_id, to_layer_id, from_position, to_position,"
        " from_name, to_name, reason, event_ids, created_at)"
        " SELECT s.id, 'move', :first, s.layer_id, 1, l.position, NULL, l.name, 'bench: promoted', '[]', :t"
        " FROM subscribers s JOIN layers l ON l.id = s.layer_id"
        " WHERE s.id % :days = :k AND s.id % 7 = 0 AND l.position > 1"
    )
    left = (
        "INSERT INTO events (subscriber_id, message_id, type, machine, data, created_at)"
        " SELECT s.id, NULL, 'unsubscribe', false, '{}', :t FROM subscribers s WHERE s.id % :days = :k"
        " AND s.id % 50 = 1"
    )
    async with rt.db.transaction() as session:
        for k in range(DAYS):
            day = now - dt.timedelta(days=DAYS + 5 - k)
            values = {"first": first, "days": DAYS, "k": k}
            await session.execute(text(entered).bindparams(at("t")), values | {"t": day})
            await session.execute(text(moved).bindparams(at("t")), values | {"t": day + dt.timedelta(days=2)})
            await session.execute(text(left).bindparams(at("t")), values | {"t": day + dt.timedelta(days=10)})
        await session.execute(text("UPDATE subscribers SET status = 'unsubscribed' WHERE id % 50 = 1"))
    async with rt.db.transaction() as session:
        newsletter = await newsletters.create(
            session,
            {"name": "Everyone", "template": TEMPLATE, "layers": positions},
            now - dt.timedelta(days=1),
            rt.settings,
        )
        newsletter_id = newsletter.id
    sent = now - dt.timedelta(days=1)
    async with rt.db.transaction() as session:
        await session.execute(
            text("UPDATE newsletters SET state = 'sent', started_at = :t, finished_at = :t WHERE id = :n").bindparams(
                at("t")
            ),
            {"t": sent, "n": newsletter_id},
        )
        await session.execute(
            text(
                "INSERT INTO newsletter_recipients (newsletter_id, subscriber_id, layer_id)"
                " SELECT :n, id, layer_id FROM subscribers WHERE status = 'active'"
            ),
            {"n": newsletter_id},
        )
        await session.execute(
            text(
                "INSERT INTO messages (subscriber_id, kind, newsletter_id, template_name, state, attempts,"
                " next_attempt_at, message_id, created_at, sent_at)"
                " SELECT id, 'newsletter', :n, :template, 'sent', 1, :t, 'm-' || id || '@bench', :t, :t"
                " FROM subscribers WHERE status = 'active'"
            ).bindparams(at("t")),
            {"n": newsletter_id, "t": sent, "template": TEMPLATE},
        )
        for type_, every, later in (("sent", 1, 0), ("open", 5, 2), ("click", 20, 3)):
            await session.execute(
                text(
                    "INSERT INTO events (subscriber_id, message_id, type, machine, data, created_at)"
                    f" SELECT subscriber_id, id, '{type_}', false, '{{}}', :t FROM messages"
                    f" WHERE newsletter_id = :n AND id % {every} = 0"
                ).bindparams(at("t")),
                {"n": newsletter_id, "t": sent + dt.timedelta(hours=later)},
            )
    if not rt.db.is_sqlite:
        async with rt.db.transaction() as session:
            await session.execute(text("ANALYZE"))
    return newsletter_id


async def measure(kind: str, base_url: str | None, subscribers: int) -> Result:
    result = Result(kind, subscribers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database(kind, base_url, folder) as url:
            rt = (await start_runtime(settings_for(url, folder))).runtime
            try:
                started = time.perf_counter()
                positions = await fill(rt, subscribers)
                newsletter_id = await grow(rt, positions)
                result.setup_seconds = time.perf_counter() - started
                async with rt.db.read() as session:
                    result.history_rows = (
                        await session.execute(select(func.count()).select_from(LayerHistory))
                    ).scalar_one()
                    result.events = (await session.execute(select(func.count()).select_from(Event))).scalar_one()
                started, now = time.perf_counter(), rt.clock.now()
                while await rollup.roll(rt.db, now, budget_s=60):
                    pass
                result.rollup_seconds = time.perf_counter() - started
                print(
                    f"{kind:<10} {subscribers:>9,} subscribers, {result.history_rows:,} history rows,"
                    f" {result.events:,} events: set up in {result.setup_seconds:.1f} s,"
                    f" rolled up in {result.rollup_seconds:.1f} s",
                    flush=True,
                )
                result.http_ms = await time_http(rt, newsletter_id, subscribers, extra={"/healthz": "/healthz"})
            finally:
                await rt.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[100_000])
    parser.add_argument(
        "--database-url",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL database beside which fresh ones are made ('' for SQLite only)",
    )
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    kinds = [k for k in ("sqlite", "postgresql") if args.only in (None, k)]
    rows = []
    for subscribers in args.subscribers:
        for kind in kinds:
            if kind == "postgresql" and not args.database_url:
                continue
            rows.append(asyncio.run(measure(kind, args.database_url or None, subscribers)))
    slow = {
        (r.database, r.subscribers, label): ms
        for r in rows
        for label, ms in r.http_ms.items()
        if ms > TARGET_MS and label != "/healthz"
    }
    print(f"over {TARGET_MS:.0f} ms: {slow or 'none'}")
    if args.json:
        write_rows(args.json, contract_rows(rows))


def contract_rows(results: list[Result]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for result in results:
        reference = result.http_ms.get("/healthz")
        setup = {k: v for k, v in asdict(result).items() if k != "http_ms"}
        for label, ms in result.http_ms.items():
            if label == "/healthz":
                continue
            out.append(
                setup
                | {
                    "name": f"GET {label}, {result.database}, {result.subscribers:,} subscribers (median of 3)",
                    "value": round(ms, 1),
                    "unit": "ms",
                    "reference": round(reference, 1) if reference else None,
                    "reference_name": "GET /healthz",
                    "ratio": round(ms / reference, 1) if reference else None,
                    "target": f"<= {TARGET_MS:.0f} ms",
                    "met": ms <= TARGET_MS,
                    "value_name": "report",
                }
            )
    return out


if __name__ == "__main__":
    main()
