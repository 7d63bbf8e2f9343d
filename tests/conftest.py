"""Fixtures: a real SMTP server, a fresh database per test (SQLite file and PostgreSQL), a
movable clock, and a running app.

PostgreSQL tests use ``RESPONDER_TEST_PG_URL`` (default: the CI server on 127.0.0.1:5432,
database ``test``); each run creates its own database and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from sqlalchemy.engine import make_url

from responder.app import init_app, serve_pixels_first, start_runtime
from responder.clock import FakeClock
from responder.runtime import Runtime
from responder.settings import Settings

from .db_template import connect, park_or_drop_public, seeded

PG_URL = os.environ.get("RESPONDER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BASE_URL = "https://news.example.com"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs for tens of seconds; started before the others")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first: with `-n 2` one started last would be the run's last minute alone,
    started first they run beside the short ones (the Makefile hands tests out one at a time)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every message; ``replies`` maps a recipient to an SMTP
    reply (e.g. ``"550 5.1.1 no such user"``) to refuse it with."""

    received: list[Received] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    data_delay_s: float = 0.0  # a slow server: wait this long before accepting DATA

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        reply = self.replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content)
                )
            )
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, handler: RecordingHandler, port: int) -> None:
        self.handler = handler
        self.port = port

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    async def wait_for(self, count: int, address: str | None = None, timeout_s: float = 10) -> list[Received]:
        """Wait until ``count`` messages (to ``address``) arrived; real I/O, not the fake clock."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            got = self.to(address) if address else self.received
            if len(got) >= count:
                return got
            if loop.time() > deadline:
                raise AssertionError(f"expected {count} messages, got {len(got)}")
            await asyncio.sleep(0.02)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpSink(handler, port)
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One PostgreSQL database for the whole run, created here and dropped at the end."""
    url = make_url(PG_URL)
    name = f"responder_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:
        # Its own thread and loop: this fixture may be first requested from inside a test's loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(sql)).result()

    run(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def reset_pg(database_url: str) -> None:
    """An empty public schema; a used one is kept aside for ``migrated`` (tests/db_template.py)."""
    conn = await connect(database_url)
    try:
        await park_or_drop_public(conn)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a new SQLite file, or the run's PostgreSQL database wiped."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'responder.db'}"
    url: str = request.getfixturevalue("pg_database")
    await reset_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'responder.db'}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(database_url: str, smtp_url: str, **env: str) -> Settings:
    environ = {
        "RESPONDER_DATABASE_URL": database_url,
        "RESPONDER_SMTP_URL": smtp_url,
        "RESPONDER_BASE_URL": BASE_URL,
        "RESPONDER_FROM": "Acme & Sons <news@acme.example.com>",
        "RESPONDER_WEBSITE": "https://acme.example.com",
        "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
        "RESPONDER_ADMIN_TOKEN": "test-admin-token",
        "RESPONDER_SECRET_KEY": "test-secret-key",
        "RESPONDER_WORKER_POLL_S": "0.05",
        "RESPONDER_SCHEDULER_POLL_S": "0.05",
        # A loaded CI machine can take seconds over a write; the 503 paths set their own.
        "RESPONDER_FORM_WRITE_TIMEOUT_S": "30",
        # Renders in a thread: a render process costs ~0.15 s of CPU to start, once per test
        # server, which is two minutes over the suite. The pool's own tests
        # (tests/hardening/test_render_pool.py) and every test that starts `responder serve` as
        # a process (crash, scale-out, serve) render in processes, as production does.
        "RESPONDER_RENDER_PROCESSES": "0",
        "RESPONDER_RENDER_TIME_LIMIT_S": "20",
        **env,
    }
    return Settings.from_env(environ)


@dataclass
class App:
    client: TestClient
    rt: Runtime
    clock: FakeClock
    smtp: SmtpSink

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.rt.settings.admin_token}"}

    def path(self, url: str) -> str:
        assert url.startswith(BASE_URL), url
        return url[len(BASE_URL) :]


@pytest.fixture
async def app(database_url: str, smtp: SmtpSink, clock: FakeClock) -> AsyncIterator[App]:
    """The whole server on a fresh database, background loops running, mail to ``smtp``."""
    async with running_app(database_url, smtp, clock) as running:
        yield running


class running_app:
    def __init__(self, database_url: str, smtp: SmtpSink, clock: FakeClock, **env: str) -> None:
        self.settings = make_settings(database_url, smtp.url, **env)
        self.smtp, self.clock = smtp, clock

    async def __aenter__(self) -> App:
        await seeded(self.settings, self.clock.now())
        started = await start_runtime(self.settings, self.clock)
        self.rt = started.runtime
        self.client = TestClient(TestServer(init_app(self.rt)))
        await self.client.start_server()
        assert isinstance(self.client.server.runner, web.AppRunner)
        serve_pixels_first(self.client.server.runner)  # as `responder serve` does
        return App(self.client, self.rt, self.clock, self.smtp)

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.rt.close()


# Public endpoints: an app with an opt-in forms file and a fast tracking flush.
FORMS_TOML = """
[forms.landing]
title = "Spring guide"
consent = "Yes, send me the spring guide & related emails."
consent_version = "2026-03"
redirects = ["https://landing.example.org/thanks"]
origins = ["https://landing.example.org"]
attributes = ["company", "plan"]

[forms.guarded]
consent = "Guarded form consent."
pow_bits = 8
"""


def forms_file(tmp_path: Path) -> str:
    path = tmp_path / "forms.toml"
    path.write_text(FORMS_TOML)
    return str(path)


@pytest.fixture
async def papp(database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path) -> AsyncIterator[App]:
    """The whole server with a forms file and a fast tracking flush."""
    async with running_app(
        database_url, smtp, clock, RESPONDER_FORMS_FILE=forms_file(tmp_path), RESPONDER_TRACK_FLUSH_MS="20"
    ) as running:
        yield running


def confirm_path(received: Received) -> str:
    """The /confirm/… path from a confirmation mail's text part."""
    text = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(r"/confirm/[\w.\-]+", text)
    assert match, text
    return match.group(0)


async def sent_recorded(rt: Runtime, count: int = 1, **where: object) -> None:
    """Wait until ``count`` messages (those whose columns equal ``where``) are recorded as sent.
    The worker records a batch's outcomes after its sends: a mail at the SMTP sink may still be
    ``sending`` for a moment, and what a test does next (a click, an export) may depend on it."""
    from sqlalchemy import func, select

    from responder.models import Message

    query = select(func.count()).select_from(Message).where(Message.sent_at.is_not(None))
    query = query.where(*(getattr(Message, column) == value for column, value in where.items()))
    for _ in range(1000):
        async with rt.db.read() as session:
            if (await session.execute(query)).scalar_one() >= count:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} messages recorded as sent ({where or 'any'})")
