"""Opens and clicks through the real app: the pixel always answers, clicks never redirect on a
bad token, every event gets a human-or-machine verdict with its reason, writes are batched, and
a locked database costs neither the pixel nor a 500."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from responder.db import Database
from responder.models import Layer, LayerHistory
from responder.tracking.links import TRAP
from responder.tracking.writer import RowWriter, WriteFailed
from responder.web.public.track import GIF

from .conftest import App, FakeClock, SmtpSink, running_app
from .public_fixtures import another_message, events, flushed, make_subscriber, state

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"}
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
WINDOW_S = 10  # RESPONDER_MACHINE_WINDOW_S: judgements wait this long after the events


def open_path(app: App, message_pk: int) -> str:
    return f"/o/{app.rt.tokens.open(message_pk)}"


def click_path(app: App, message_pk: int, url: str) -> str:
    return f"/c/{app.rt.tokens.click(message_pk, url)}"


async def moves(app: App) -> list[LayerHistory]:
    async with app.rt.db.read() as session:
        return list((await session.execute(select(LayerHistory).order_by(LayerHistory.id))).scalars())


async def watch_opens(app: App) -> None:
    """Layer 1 promotes on any human open."""
    async with app.rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        layer.rule = {"promote": {"on_any": ["open"]}}


async def judged(app: App) -> None:
    """Move the clock past the window the judgement of the events so far waits, and let it run."""
    await flushed(app)
    app.clock.advance(WINDOW_S + 1)
    await flushed(app)


async def test_pixel_always_answers_the_gif(papp: App) -> None:
    _, message = await make_subscriber(papp)
    for path in (
        open_path(papp, message),
        open_path(papp, 999_999),
        "/o/forged",
        "/o/" + "A" * 3000,
        open_path(papp, message)[:-2] + "xx",
    ):
        resp = await papp.client.get(path, headers=BROWSER)
        assert resp.status == 200, path
        assert resp.content_type == "image/gif"
        assert await resp.read() == GIF and len(GIF) == 43
        assert "no-store" in resp.headers["Cache-Control"]
    await flushed(papp)
    [opened] = await events(papp, type="open")
    assert opened.message_id == message and not opened.machine


async def test_pixel_reads_its_token_as_the_route_would(papp: App) -> None:
    """The pixel takes its token from the path as sent; a query string and a percent-encoded
    token (sent as is, over a socket) are read as the route reads them, and a broken escape
    is a GIF and no open."""
    _, message = await make_subscriber(papp)
    path = open_path(papp, message)
    server = papp.client.server

    async def sent_as_is(target: str) -> bytes:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: {BROWSER['User-Agent']}"
            "\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        writer.close()
        return answer

    encoded = "/o/" + path[3:].replace(".", "%2E", 1)
    assert "%2E" in encoded
    for target in (path + "?utm_source=news", encoded, path + "?a=%2F", path[:-1] + "%"):
        answer = await sent_as_is(target)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(GIF), target
    await flushed(papp)
    assert len(await events(papp, type="open")) == 3


async def test_pixel_answered_ahead_of_the_router_behaves_as_the_route(papp: App) -> None:
    """`/o/{token}` is answered before routing (as `responder serve` runs it): the same GIF,
    headers and verdicts as the route, and whatever the route would not match still 404s."""
    handler = papp.client.server.runner.server.request_handler  # type: ignore[union-attr]
    assert handler.__qualname__.startswith("pixels_first")
    _, message = await make_subscriber(papp)
    resp = await papp.client.get(open_path(papp, message), headers=BROWSER)
    assert resp.status == 200 and await resp.read() == GIF
    assert resp.headers["Cache-Control"].startswith("no-store") and resp.content_type == "image/gif"
    assert "Content-Security-Policy" not in resp.headers  # answered ahead of the middleware
    head = await papp.client.head(open_path(papp, message), headers=BROWSER)
    assert head.status == 200 and head.content_type == "image/gif" and await head.read() == b""
    for path in ("/o/", "/o/" + open_path(papp, message)[3:] + "/x", "/o//x"):
        resp = await papp.client.get(path, headers=BROWSER)
        assert resp.status == 404, path
        assert "text/html" in resp.headers["Content-Type"]
        assert resp.headers["Content-Security-Policy"]  # the edge middleware answered
    resp = await papp.client.post(open_path(papp, message), headers=BROWSER)
    assert resp.status == 405
    await flushed(papp)
    opens = await events(papp, type="open")
    assert [(e.machine, e.verdict, e.ip) for e in opens] == [
        (False, "human", "127.0.0.1"),
        (True, "head", "127.0.0.1"),
    ]


async def test_pixel_records_the_client_behind_a_trusted_proxy(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    async with running_app(database_url, smtp, clock, RESPONDER_TRUSTED_PROXIES="127.0.0.1") as app:
        _, message = await make_subscriber(app)
        resp = await app.client.get(
            open_path(app, message), headers={**BROWSER, "X-Forwarded-For": "6.6.6.6, 203.0.113.5"}
        )
        assert resp.status == 200
        await flushed(app)
        assert [e.ip for e in await events(app, type="open")] == ["203.0.113.5"]


async def test_click_redirects_and_bad_tokens_never_redirect(papp: App) -> None:
    _, message = await make_subscriber(papp)
    target = "https://acme.example.com/guide?x=1&y=2"
    resp = await papp.client.get(click_path(papp, message, target), headers=BROWSER, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == target
    good = click_path(papp, message, target)
    bad_paths = [
        "/c/forged",
        good[:-3] + "abc",
        good + "x",
        click_path(papp, 999_999, target),  # signed, but no such message
        f"/c/{papp.rt.tokens.open(message)}",  # a token for another purpose
    ]
    bad_paths += [
        click_path(papp, message, url)
        for url in (
            "//evil.example",
            "\\\\evil.example",
            "/\\evil.example",
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "%6A%61vascript:alert(1)",
            "data:text/html,x",
            "https:evil.example",
            "https://evil.example\r\nX-Injected: 1",
            " https://evil.example",
        )
    ]
    for path in bad_paths:
        resp = await papp.client.get(path, headers=BROWSER, allow_redirects=False)
        assert resp.status == 404, path
        assert "Location" not in resp.headers
        assert "text/html" in resp.headers["Content-Type"]
    await flushed(papp)
    assert [e.url for e in await events(papp, type="click")] == [target]


async def test_machine_signals_are_recorded_with_their_reason(papp: App) -> None:
    subscriber, message = await make_subscriber(papp)
    _, fresh = await make_subscriber(papp, "fresh@example.com", sent_ago_s=2)
    client = papp.client
    await client.get(open_path(papp, fresh), headers=BROWSER)
    await flushed(papp)
    requests = [
        (client.head, click_path(papp, message, "https://a.example/"), {}),
        (client.get, click_path(papp, message, "https://a.example/"), {**BROWSER, "Sec-Purpose": "prefetch"}),
        (client.get, open_path(papp, message), {**BROWSER, "Purpose": "prefetch"}),
        (client.get, open_path(papp, message), {**BROWSER, "X-Moz": "prefetch"}),
        (client.get, open_path(papp, message), {"User-Agent": "python-requests/2.32"}),
        (client.get, open_path(papp, message), {"User-Agent": ""}),
        # Not behind a trusted proxy, so the forwarded address is not believed: a person.
        (client.get, open_path(papp, message), {**BROWSER, "X-Forwarded-For": "40.94.29.7"}),
    ]
    for method, path, headers in requests:
        papp.clock.advance(2)  # apart: no sweep
        await method(path, headers=headers, allow_redirects=False)
    await flushed(papp)
    papp.clock.advance(60)
    await client.get(click_path(papp, await another_message(papp, subscriber), TRAP), headers=BROWSER)
    await flushed(papp)
    assert [(e.type, e.machine, e.verdict) for e in await events(papp)] == [
        ("open", True, "too_soon"),
        ("click", True, "head"),
        ("click", True, "prefetch"),
        ("open", True, "prefetch"),
        ("open", True, "prefetch"),
        ("open", True, "scanner_agent"),
        ("open", True, "scanner_agent"),
        ("open", False, "human"),
        ("click", True, "trap"),
    ]


async def test_scanner_networks_and_apple_prefetch_are_machine_behind_a_trusted_proxy(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    async with running_app(database_url, smtp, clock, RESPONDER_TRUSTED_PROXIES="127.0.0.1") as app:
        _, message = await make_subscriber(app)
        for address, agent in (
            ("40.94.29.7", BROWSER["User-Agent"]),  # Microsoft Safe Links
            ("148.163.150.2", BROWSER["User-Agent"]),  # Proofpoint
            ("17.58.101.4", "Mozilla/5.0"),  # Apple Mail Privacy Protection
            ("203.0.113.5", "Mozilla/5.0"),  # a bare agent elsewhere is a person's client
        ):
            app.clock.advance(60)
            await app.client.get(open_path(app, message), headers={"User-Agent": agent, "X-Forwarded-For": address})
        await flushed(app)
        opens = await events(app, type="open")
        assert [(e.ip, e.machine, e.verdict) for e in opens] == [
            ("40.94.29.7", True, "scanner_network"),
            ("148.163.150.2", True, "scanner_network"),
            ("17.58.101.4", True, "apple_mpp"),
            ("203.0.113.5", False, "human"),
        ]


async def test_webmail_image_proxies_are_the_reader_opening_the_mail(papp: App) -> None:
    """Gmail and Yahoo fetch the pixel through their proxies when the reader opens the mail:
    a human open, with the proxy as its reason, and one a rule watching opens promotes on."""
    subscriber, message = await make_subscriber(papp)
    second = await another_message(papp, subscriber)
    await watch_opens(papp)
    papp.clock.advance(60)
    await papp.client.get(open_path(papp, message), headers={"User-Agent": GMAIL})
    await papp.client.get(open_path(papp, second), headers={"User-Agent": YAHOO})
    await flushed(papp)
    opens = await events(papp, type="open")
    assert [(e.machine, e.verdict) for e in opens] == [(False, "gmail_proxy"), (False, "yahoo_proxy")]
    papp.clock.advance(11)
    await flushed(papp)
    assert [m.subscriber_id for m in await moves(papp)] == [subscriber]


async def test_many_links_of_one_mail_within_a_second_is_a_scanner(papp: App) -> None:
    _, message = await make_subscriber(papp)
    papp.clock.advance(30)
    await papp.client.get(click_path(papp, message, "https://a.example/1"), headers=BROWSER, allow_redirects=False)
    await flushed(papp)  # the first click is already on disk when the sweep is noticed
    for n in (2, 3):
        await papp.client.get(
            click_path(papp, message, f"https://a.example/{n}"), headers=BROWSER, allow_redirects=False
        )
    await flushed(papp)
    clicks = await events(papp, type="click")
    assert [(c.machine, c.verdict) for c in clicks] == [(True, "sweep")] * 3
    papp.clock.advance(15)  # a person clicking again later is a person
    await papp.client.get(click_path(papp, message, "https://a.example/4"), headers=BROWSER, allow_redirects=False)
    await flushed(papp)
    assert (await events(papp, type="click"))[-1].verdict == "human"


async def test_human_clicks_promote_when_the_batch_is_flushed(papp: App) -> None:
    subscriber, first = await make_subscriber(papp)
    second_pk = await another_message(papp, subscriber)
    machine = {"User-Agent": "curl/8.0"}
    for pk in (first, second_pk):  # machine clicks in two mails promote nobody
        await papp.client.get(click_path(papp, pk, "https://a.example/"), headers=machine, allow_redirects=False)
    await flushed(papp)
    async with papp.rt.db.read() as session:
        assert (await session.execute(select(LayerHistory))).first() is None
    for pk in (first, second_pk):
        papp.clock.advance(5)
        await papp.client.get(click_path(papp, pk, "https://a.example/"), headers=BROWSER, allow_redirects=False)
    await flushed(papp)
    assert await moves(papp) == []  # not before a late trap hit or sweep could still say machine
    await judged(papp)
    [move] = await moves(papp)
    assert "clicked in 2 mails" in move.reason


async def test_default_flush_is_within_250_ms(app: App) -> None:
    _, message = await make_subscriber(app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await app.client.get(open_path(app, message), headers=BROWSER)
    await state(app).tracker.drained()
    assert loop.time() - started < 0.25 + 0.2
    assert len(await events(app, type="open")) == 1


async def test_sqlite_events_go_through_the_writer_process_and_survive_its_death(papp: App) -> None:
    """On a SQLite file a child process writes the events; killed, the server writes them
    itself from the next batch on, and none is lost."""
    tracker = state(papp).tracker
    if not papp.rt.db.is_sqlite:
        assert tracker._writer is None  # PostgreSQL: written in process
        return
    _, message = await make_subscriber(papp)
    await papp.client.get(open_path(papp, message), headers=BROWSER)
    await flushed(papp)
    writer = tracker._writer
    assert writer is not None and writer._process is not None
    assert writer._process.returncode is None
    writer._process.kill()
    await writer._process.wait()
    for _ in range(3):
        resp = await papp.client.get(open_path(papp, message), headers=BROWSER)
        assert resp.status == 200
    await flushed(papp)
    assert tracker._writer is None
    assert len(await events(papp, type="open")) == 4


async def test_writer_process_writes_a_batch_in_one_transaction_or_not_at_all(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The writer turns hits into rows (subscriber and verdict from the message) and writes a
    batch in one transaction: a refused batch (here: a row breaking a constraint) leaves nothing
    behind and comes back as WriteFailed, so the tracker keeps it and retries. It answers who
    had human events; hits of a deleted message are dropped."""
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, subscriber_id INTEGER NOT NULL,"
            " sent_at TEXT);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY, subscriber_id INTEGER NOT NULL,"
            " message_id INTEGER, type TEXT NOT NULL, url TEXT, ip TEXT, user_agent TEXT,"
            " machine BOOLEAN NOT NULL, verdict TEXT, data TEXT NOT NULL, created_at TEXT NOT NULL);"
            "INSERT INTO messages VALUES (1, 7, '2025-12-31 23:00:00.000000'),"
            " (3, 8, '2025-12-31 23:59:30.000000');"
            "CREATE TABLE subscribers (id INTEGER PRIMARY KEY, status TEXT NOT NULL, last_human_at TEXT);"
            "INSERT INTO subscribers VALUES (7, 'active', '2025-12-01 00:00:00.000000'), (8, 'active', NULL);"
        )
    writer = RowWriter(
        str(path), ("journal_mode=WAL",), after_send_s=60, window_s=10, promoting=frozenset({"open", "click"})
    )
    at = 1_767_225_600_000_007  # 2026-01-01 00:00:00.000007 UTC
    hit = (1, "open", "GET", BROWSER["User-Agent"], "127.0.0.1", at, False, False, None)
    try:
        await writer.write([hit, (1, None, *hit[2:])])  # type NULL: refused
    except WriteFailed as exc:
        assert "NOT NULL" in str(exc)
    else:
        raise AssertionError("the batch was not refused")
    too_soon = (3, "click", "GET", BROWSER["User-Agent"], "127.0.0.1", at, False, False, "https://a.example/")
    gone = (2, *hit[1:])  # message 2 does not exist: dropped
    assert await writer.write([hit, gone, too_soon]) == {7: ["open"]}
    await writer.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute(
            "SELECT subscriber_id, message_id, type, machine, verdict, data, created_at FROM events ORDER BY id"
        ).fetchall() == [
            (7, 1, "open", 0, "human", "{}", "2026-01-01 00:00:00.000007"),
            (8, 3, "click", 1, "too_soon", "{}", "2026-01-01 00:00:00.000007"),
        ]
        # The human open is the subscriber's last activity; the machine click is nobody's.
        assert conn.execute("SELECT id, last_human_at FROM subscribers ORDER BY id").fetchall() == [
            (7, "2026-01-01 00:00:00.000007"),
            (8, None),
        ]


async def test_the_writer_answers_only_subscribers_a_layer_rule_watches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The writer process reads the layers' rules and answers only the human events some rule
    watches, so the server judges promotion only for them: by default clicks, not opens. A rule
    it cannot read answers everything (the server's judgement looks again)."""
    import json

    from responder.core.promotion import DEFAULT_RULE

    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, subscriber_id INTEGER NOT NULL,"
            " sent_at TEXT);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY, subscriber_id INTEGER NOT NULL,"
            " message_id INTEGER, type TEXT NOT NULL, url TEXT, ip TEXT, user_agent TEXT,"
            " machine BOOLEAN NOT NULL, verdict TEXT, data TEXT NOT NULL, created_at TEXT NOT NULL);"
            "CREATE TABLE layers (id INTEGER PRIMARY KEY, rule TEXT);"
            "INSERT INTO messages VALUES (1, 7, '2025-12-31 23:00:00.000000'),"
            " (3, 8, '2025-12-31 23:00:00.000000');"
            "CREATE TABLE subscribers (id INTEGER PRIMARY KEY, status TEXT NOT NULL, last_human_at TEXT);"
            "INSERT INTO subscribers VALUES (7, 'active', NULL), (8, 'active', NULL);"
        )
        conn.execute("INSERT INTO layers VALUES (1, ?), (2, NULL)", (json.dumps(DEFAULT_RULE),))
    writer = RowWriter(
        str(path), ("journal_mode=WAL",), after_send_s=60, window_s=10, promoting=frozenset({"open", "click"})
    )
    at = 1_767_225_600_000_007  # 2026-01-01 00:00:00.000007 UTC
    opened = (1, "open", "GET", BROWSER["User-Agent"], "127.0.0.1", at, False, False, None)
    clicked = (3, "click", "GET", BROWSER["User-Agent"], "127.0.0.1", at, False, False, "https://a.example/")
    try:
        assert await writer.write([opened, clicked]) == {8: ["click"]}
        assert await writer.write([opened]) == {}
        # A sunset subscriber's open is answered whatever the rules watch: it brings them back.
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE subscribers SET status = 'sunset' WHERE id = 7")
        assert await writer.write([opened]) == {7: ["open"]}
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE subscribers SET status = 'active' WHERE id = 7")
            conn.execute("UPDATE layers SET rule = ? WHERE id = 2", (json.dumps({"promote": {"on_any": ["open"]}}),))
        assert await writer.write([opened, clicked]) == {7: ["open"], 8: ["click"]}
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE layers SET rule = 'not json' WHERE id = 2")
        assert await writer.write([opened]) == {7: ["open"]}
    finally:
        await writer.close()
    with sqlite3.connect(path) as conn:  # every batch was written, whatever it answered
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 7


def test_the_writer_stores_event_times_as_the_column_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hits carry times as integer microseconds and the writer stores the very text the
    ``UTCDateTime`` column writes to SQLite: at whole seconds, across them, in any zone."""
    from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert

    from responder.core.machine import Request
    from responder.models import UTCDateTime
    from responder.tracking.writer import hit_of, stored_text

    start = dt.datetime(2026, 11, 24, 23, 59, 58, 999_999, tzinfo=dt.UTC)
    times = [start + dt.timedelta(microseconds=n) for n in (0, 1, 2, 999_999, 1_000_001)]
    times += [
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2038, 1, 19, 3, 14, 8, 123_456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ]
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime(timezone=True)))
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": n, "at": at} for n, at in enumerate(times)])
    engine.dispose()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        stored = [text for (text,) in conn.execute("SELECT at FROM t ORDER BY id")]
    hits = [hit_of(1, Request("open", "GET", "", None, at)) for at in times]
    assert [stored_text(hit[5]) for hit in hits] == stored


async def test_an_undecodable_user_agent_is_stored_as_text(papp: App) -> None:
    """Header bytes that are not UTF-8 reach the app as lone surrogates, which no column can
    store; the agent is kept with replacement characters instead of stalling the queue."""
    _, message = await make_subscriber(papp)
    server = papp.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"GET {open_path(papp, message)} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"User-Agent: Mozilla/5.0 caf\xe9 \xff\r\nConnection: close\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(GIF)
    await flushed(papp)
    [opened] = await events(papp, type="open")
    assert opened.user_agent == "Mozilla/5.0 caf? ?"


async def test_a_batch_refused_for_its_rows_is_written_one_by_one(papp: App) -> None:
    """A row no retry can store (here a click target with a lone surrogate, which no caller
    can send) costs that event only: the rest of its batch and later events are written."""
    from responder.core.machine import Request
    from responder.tracking.writer import hit_of

    _, message = await make_subscriber(papp)
    tracker = state(papp).tracker
    at = papp.clock.now()

    def hit(kind: str, url: str | None = None) -> tuple[object, ...]:
        return hit_of(
            message, Request(kind=kind, method="GET", user_agent=BROWSER["User-Agent"], ip="192.0.2.1", at=at), url=url
        )

    tracker.offer(hit("open"))
    tracker.offer(hit("click", "https://acme.example.com/\udcff"))
    tracker.offer(hit("open"))
    await asyncio.wait_for(flushed(papp), timeout=10)
    assert [e.type for e in await events(papp)] == ["open", "open"]
    assert tracker.stats.dropped == 1 and tracker.pending == 0
    await papp.client.get(open_path(papp, message), headers=BROWSER)  # and the queue goes on
    await flushed(papp)
    assert len(await events(papp, type="open")) == 3


async def test_queue_is_bounded(papp: App) -> None:
    _, message = await make_subscriber(papp)
    tracker = state(papp).tracker
    tracker.max_items = 3
    tracker.stop()  # hold the flusher so the queue fills
    await asyncio.sleep(0.05)
    for _ in range(5):
        resp = await papp.client.get(open_path(papp, message), headers=BROWSER)
        assert resp.status == 200
    assert tracker.pending == 3 and tracker.stats.dropped == 2
    metrics = await (await papp.client.get("/metrics")).text()
    assert 'responder_tracking_events{outcome="dropped"} 2.0' in metrics
    assert "responder_tracking_pending 3.0" in metrics


@asynccontextmanager
async def write_lock(db: Database) -> AsyncIterator[None]:
    """Hold a write lock on the database from another connection for the block."""
    if db.is_sqlite:
        conn = sqlite3.connect(db.url.split("///", 1)[1], timeout=30, isolation_level=None, check_same_thread=False)
        # Waited for in a thread: the app may be inside a write that needs this loop to finish.
        await asyncio.to_thread(conn.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    other = create_async_engine(db.url)
    try:
        async with other.connect() as conn_pg:
            await conn_pg.begin()
            await conn_pg.execute(text("LOCK TABLE events, subscribers IN ACCESS EXCLUSIVE MODE"))
            yield
            await conn_pg.rollback()
    finally:
        await other.dispose()


async def test_locked_database_pixel_answers_forms_503_events_land_after(papp: App) -> None:
    papp.rt.settings = papp.rt.settings.replace(form_write_timeout_s=0.5)
    _, message = await make_subscriber(papp)
    loop = asyncio.get_running_loop()
    async with write_lock(papp.rt.db):
        started = loop.time()
        for _ in range(3):
            resp = await papp.client.get(open_path(papp, message), headers=BROWSER)
            assert resp.status == 200 and await resp.read() == GIF
        # A pixel waiting for the lock would wait for the 30 s busy timeout; the bound is loose
        # so a busy CI machine does not fail it, and still far below that.
        assert loop.time() - started < 5.0
        resp = await papp.client.post("/subscribe", json={"email": "late@example.com"})
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"]["code"] == "busy"
        resp = await papp.client.post("/subscribe", data={"email": "late@example.com"})
        assert resp.status == 503 and "Busy right now" in await resp.text()
        assert state(papp).tracker.pending == 3
        released = loop.time()
    await flushed(papp)
    assert loop.time() - released < 5.0  # flushed every 250 ms; durability is bench/track.py's
    assert len(await events(papp, type="open")) == 3


async def test_a_link_a_click_token_cannot_carry_is_left_as_written(papp: App) -> None:
    """A target /c/ would not redirect to, or whose token grows past what /c/ reads (a long URL
    in a non-Latin script compresses poorly), keeps its own href instead of becoming a broken
    link; every other link, long ones included, is tracked and redirects."""
    import html
    import random
    import re

    from responder.delivery.assemble import click_link
    from responder.templating.render import rewrite_links

    _, message = await make_subscriber(papp)
    rnd = random.Random(5)
    short = "https://shop.example.com/a?b=1&c=2"
    long_ascii = "https://shop.example.com/?q=" + "".join(
        rnd.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(4000)
    )
    cjk = "https://shop.example.com/s?q=" + "".join(chr(0x4E00 + rnd.randrange(20000)) for _ in range(2000))
    too_long = "https://shop.example.com/?q=" + "x" * 4100
    spaced = "https://shop.example.com/a b"
    links = [short, long_ascii, cjk, too_long, spaced]
    body = "".join(f'<a href="{html.escape(url)}">{n}</a>' for n, url in enumerate(links))
    hrefs = [
        html.unescape(h)
        for h in re.findall(
            r'href="([^"]*)"',
            rewrite_links(
                body, click_link(papp.rt.tokens, papp.rt.settings.base_url, message), "https://news.example.com"
            ),
        )
    ]
    assert hrefs[2:] == [cjk, too_long, spaced]
    for href, target in zip(hrefs[:2], links[:2], strict=True):
        assert href.startswith("https://news.example.com/c/")
        resp = await papp.client.get(papp.path(href), allow_redirects=False, headers=BROWSER)
        assert resp.status == 302 and resp.headers["Location"] == target
    # Tracked, that CJK link would have been a 404 page for the reader.
    token = papp.rt.tokens.click(message, cjk)
    resp = await papp.client.get(f"/c/{token}", allow_redirects=False, headers=BROWSER)
    assert resp.status == 404 and "Location" not in resp.headers


async def test_a_failed_promotion_judgement_is_retried_without_another_event(
    sqlite_url: str, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events of a flush are written by the writer process, its judgement fails (the
    database refuses it once): the subscribers are judged again shortly, not only when a later
    event happens to arrive."""
    async with running_app(sqlite_url, smtp, clock, RESPONDER_TRACK_FLUSH_MS="20") as papp:
        await _judged_again(papp, monkeypatch)


async def _judged_again(papp: App, monkeypatch: pytest.MonkeyPatch) -> None:
    import responder.tracking.batch as batch

    assert state(papp).tracker._writer is not None
    subscriber, first = await make_subscriber(papp)
    second_pk = await another_message(papp, subscriber)
    real, failures = batch.follow_activity, []

    async def refused_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise OperationalError("UPDATE subscribers", {}, Exception("database is locked"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(batch, "follow_activity", refused_once)
    for pk in (first, second_pk):
        papp.clock.advance(5)
        await papp.client.get(click_path(papp, pk, "https://a.example/"), headers=BROWSER, allow_redirects=False)
    await judged(papp)
    assert failures == [1]
    assert len(await events(papp, type="click")) == 2
    for _ in range(200):  # retried RETRY_PAUSE_S after the failure, with no event since
        async with papp.rt.db.read() as session:
            moves = (await session.execute(select(LayerHistory))).scalars().all()
        if moves:
            break
        await asyncio.sleep(0.01)
    [move] = moves
    assert "clicked in 2 mails" in move.reason and move.subscriber_id == subscriber

    # An event offered while the retried judgement runs is flushed at once, not left waiting
    # for a full batch (the loop looks at the queue again after judging).
    failures.clear()
    tracker = state(papp).tracker
    offered = asyncio.Event()

    async def judged_while_a_click_arrives(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise OperationalError("UPDATE subscribers", {}, Exception("database is locked"))
        if not offered.is_set():
            offered.set()
            await papp.client.get(click_path(papp, first, "https://b.example/"), headers=BROWSER, allow_redirects=False)
        return await real(*args, **kwargs)

    monkeypatch.setattr(batch, "follow_activity", judged_while_a_click_arrives)
    papp.clock.advance(5)
    await papp.client.get(click_path(papp, first, "https://c.example/"), headers=BROWSER, allow_redirects=False)
    await judged(papp)
    for _ in range(300):
        if len(await events(papp, type="click")) == 4 and not tracker.pending:
            break
        await asyncio.sleep(0.01)
    assert offered.is_set() and len(await events(papp, type="click")) == 4


async def test_a_message_read_before_its_send_is_recorded_is_read_again(papp: App) -> None:
    """A batch's send times are recorded after its sends, so a hit can find a message with no
    send time yet; that is not remembered, and the next hit is judged against the send time."""
    from sqlalchemy import update

    from responder.models import Message

    subscriber, _ = await make_subscriber(papp)
    pk = await another_message(papp, subscriber, state="sending", sent_ago_s=None)
    await papp.client.get(open_path(papp, pk), headers=BROWSER)
    await flushed(papp)
    async with papp.rt.db.transaction() as session:
        await session.execute(update(Message).where(Message.id == pk).values(state="sent", sent_at=papp.clock.now()))
    papp.clock.advance(3)  # within machine_after_send_s of the recorded send
    await papp.client.get(open_path(papp, pk), headers=BROWSER)
    await flushed(papp)
    opens = sorted((e for e in await events(papp, type="open") if e.message_id == pk), key=lambda e: e.id)
    assert [(e.machine, e.verdict) for e in opens] == [(False, "human"), (True, "too_soon")]


def writer_dies_after_commit(tracker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker's writer process commits its next batch and dies before answering."""
    from responder.tracking.writer import WriterUnavailable

    writer = tracker._writer
    assert writer is not None
    real_write = writer.write

    async def commit_then_die(hits):  # type: ignore[no-untyped-def]
        await real_write(hits)
        await writer.close()
        raise WriterUnavailable("the tracking writer stopped", in_flight=True)

    monkeypatch.setattr(writer, "write", commit_then_die)


async def test_a_batch_the_writer_committed_before_dying_is_still_judged(
    sqlite_url: str, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found on disk after the writer died answering, the batch is not written again but its
    subscribers are judged for promotion here: two human clicks in two mails promote."""
    from responder.core.machine import Request
    from responder.tracking.writer import hit_of

    async with running_app(sqlite_url, smtp, clock, RESPONDER_TRACK_FLUSH_MS="20") as papp:
        tracker = state(papp).tracker
        writer_dies_after_commit(tracker, monkeypatch)
        subscriber, first = await make_subscriber(papp)
        second = await another_message(papp, subscriber)
        papp.clock.advance(5)
        for pk in (first, second):  # one batch: no await between the two
            tracker.offer(
                hit_of(
                    pk,
                    Request("click", "GET", BROWSER["User-Agent"], "192.0.2.1", papp.clock.now()),
                    url="https://a.example/",
                )
            )
        await judged(papp)
        assert tracker._writer is None
        assert len(await events(papp, type="click")) == 2
        [move] = await moves(papp)
        assert move.subscriber_id == subscriber and "clicked in 2 mails" in move.reason


async def test_a_batch_the_writer_committed_before_dying_is_not_written_again(
    sqlite_url: str, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer process may die between its COMMIT and its answer; the server, taking over,
    finds the batch on disk and does not write it a second time."""
    async with running_app(sqlite_url, smtp, clock, RESPONDER_TRACK_FLUSH_MS="20") as papp:
        tracker = state(papp).tracker
        writer_dies_after_commit(tracker, monkeypatch)
        _, message = await make_subscriber(papp)
        for _ in range(3):
            papp.clock.advance(1)
            assert (await papp.client.get(open_path(papp, message), headers=BROWSER)).status == 200
        await flushed(papp)
        assert tracker._writer is None
        assert len(await events(papp, type="open")) == 3
        papp.clock.advance(1)
        await papp.client.get(open_path(papp, message), headers=BROWSER)  # written in process
        await flushed(papp)
        assert len(await events(papp, type="open")) == 4
