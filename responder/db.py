"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL.

On SQLite every write goes through one writer connection that opens its transactions with
``BEGIN IMMEDIATE``, so writers queue instead of failing with "database is locked"; reads use
their own pool and, thanks to WAL, never wait for the writer. On PostgreSQL one pool serves both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Until when (``time.monotonic()``) a write a request started may wait for the database: for the
# in-process writer connection and for the lock (None: as long as the database's own timeouts
# allow). Set by the HTTP middleware for every state-changing request, so a locked database
# answers 503 within seconds; the background loops keep the long waits.
REQUEST_WRITE_DEADLINE: ContextVar[float | None] = ContextVar("request_write_deadline", default=None)


def _remaining_ms() -> int | None:
    deadline = REQUEST_WRITE_DEADLINE.get()
    return None if deadline is None else max(int((deadline - time.monotonic()) * 1000), 1)


SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_PRAGMAS = ("journal_mode=WAL", f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL")


# The writer connection's page cache and WAL size. Tracking batches insert into the event
# indexes at scattered places; with a checkpoint every 1,000 WAL pages (SQLite's default) the
# same index pages were copied back to the database file over and over. Measured on 5,000-row
# batches into a 400,000-event table: 10.9 -> 7.8 µs of CPU a row.
WRITER_PRAGMAS = ("cache_size=-65536", "wal_autocheckpoint=10000", "journal_size_limit=67108864")


def _sqlite_engine(url: str, *, begin: str, pool_size: int, pragmas: tuple[str, ...] = ()) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=120, pool_pre_ping=False)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS + pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        remaining = _remaining_ms()
        busy_ms = SQLITE_BUSY_TIMEOUT_MS if remaining is None else remaining
        if conn.info.get("busy_ms", SQLITE_BUSY_TIMEOUT_MS) != busy_ms:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
            conn.info["busy_ms"] = busy_ms
        conn.exec_driver_sql(begin)

    return engine


def _postgresql_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        remaining = _remaining_ms()
        if remaining is not None:  # this transaction only: a row or table lock waited for at most this
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{remaining}ms'")

    return engine


class Database:
    """The application's handle on its database: a reader and a writer side."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.is_sqlite:
            self.writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1, pragmas=WRITER_PRAGMAS)
            self.reader = _sqlite_engine(url, begin="BEGIN", pool_size=4)
        else:
            self.writer = _postgresql_engine(url)
            # A read is one snapshot (PostgreSQL's default gives each statement its own): a report
            # that reads the rolled-up figures, then where the roll-up stands, then the rows
            # since, must not see a roll-up commit between two of those reads. The level rides
            # on the BEGIN (asyncpg), so it costs no round trip.
            self.reader = self.writer.execution_options(isolation_level="REPEATABLE READ")
        self._local_lock = asyncio.Lock()
        # No autobegin: a session used after its block ends raises, instead of quietly taking a
        # connection that nobody returns to the pool.
        self._write_sessions = async_sessionmaker(self.writer, expire_on_commit=False, autobegin=False)
        self._read_sessions = async_sessionmaker(self.reader, expire_on_commit=False, autobegin=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        Within a request's deadline (``REQUEST_WRITE_DEADLINE``) the wait for SQLite's one
        writer connection is bounded too: past it, ``sqlalchemy.exc.TimeoutError`` (a 503)."""
        async with self._write_sessions() as session, session.begin():
            deadline = REQUEST_WRITE_DEADLINE.get()
            if deadline is not None and self.is_sqlite:
                # A second more than the lock's own wait (the busy timeout set in the begin
                # hook), so a BEGIN under way ends by itself rather than being cancelled.
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0) + 1):
                        await session.connection()
                except TimeoutError as exc:
                    raise PoolTimeout("the database's writer stayed busy") from exc
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Run a block alone across every process on this database.

        PostgreSQL: a session advisory lock on a connection of its own, waited for, released
        when the block ends (or when the process dies with its connection). SQLite: one
        process writes, so an in-process lock suffices.
        """
        if self.is_sqlite:
            async with self._local_lock:
                yield
            return
        async with self.writer.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    async def ping(self) -> None:
        async with self.reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision. On PostgreSQL processes starting
        together take turns (a transaction advisory lock): the first migrates, the others then
        find the schema up to date instead of failing on tables that already exist."""
        async with self.writer.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            await conn.run_sync(_upgrade)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.is_sqlite:  # PostgreSQL's reader is the writer's pool with another isolation level
            await self.reader.dispose()


MIGRATION_LOCK = 0x72657371  # advisory lock key of migrations (the scheduler's is 0x72657370)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
