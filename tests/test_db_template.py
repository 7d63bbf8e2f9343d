"""The test harness's cheap fresh databases (tests/db_template.py) are exactly what migrating an
empty database gives: the same tables, indexes and constraints, the same rows, the same
sequence positions; after a test that wrote to every corner of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from responder.db import Database

from . import db_template
from .conftest import SmtpSink, reset_pg, running_app
from .db_template import PARKED, STRUCTURE, connect, migrated
from .public_fixtures import make_subscriber


async def sqlite_state(path: Path) -> dict[str, Any]:
    """What the file holds, as SQLite reports it (Alembic's table rebuilds write a table's
    constraints in a different order from one run to the next, so not its CREATE text)."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        state: dict[str, Any] = {
            "indexes": sorted(
                conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type <> 'table' AND sql IS NOT NULL")
            ),
            "pragmas": [conn.execute(f"PRAGMA {name}").fetchall() for name in ("journal_mode", "user_version")],
        }
        for table in tables:
            state[table] = {
                "columns": conn.execute(f'PRAGMA table_xinfo("{table}")').fetchall(),
                "foreign keys": sorted(row[2:] for row in conn.execute(f'PRAGMA foreign_key_list("{table}")')),
                "indexes": sorted(  # sqlite_autoindex_…_N: numbered in the order of the constraints
                    (row[2:], conn.execute(f'PRAGMA index_xinfo("{row[1]}")').fetchall())
                    for row in conn.execute(f'PRAGMA index_list("{table}")')
                ),
                "rows": sorted(conn.execute(f'SELECT * FROM "{table}"'), key=repr),
            }
    return state


async def pg_state(database_url: str) -> dict[str, Any]:
    conn = await connect(database_url)
    try:
        tables = [
            r[0]
            for r in await conn.fetch(
                "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            )
        ]
        rows = {
            table: await conn.fetchval(f'SELECT json_agg(t ORDER BY t::text)::text FROM public."{table}" t')
            for table in tables
        }
        sequences = {
            r[0]: tuple(await conn.fetchrow(f'SELECT last_value, is_called FROM public."{r[0]}"'))
            for r in await conn.fetch("SELECT sequencename::text FROM pg_sequences WHERE schemaname = 'public'")
        }
        return {"structure": await conn.fetchval(STRUCTURE), "rows": rows, "sequences": sequences}
    finally:
        await conn.close()


async def state(database_url: str) -> dict[str, Any]:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return await sqlite_state(Path(url.database or ""))
    return await pg_state(database_url)


async def test_a_cheap_fresh_database_is_a_migrated_empty_one(
    database_url: str, smtp: SmtpSink, clock, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async def migrate(url: str) -> None:
        db = Database(url)
        try:
            await db.migrate()
        finally:
            await db.dispose()

    # A used database (seeded, a subscriber and a mail) ...
    async with running_app(database_url, smtp, clock) as app:
        await make_subscriber(app)
    if database_url.startswith("sqlite"):
        reused, fresh = (f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("reused.db", "fresh.db"))
        await migrated(reused)  # the bytes the first migration in this process left
        assert db_template._sqlite_template is not None
        await migrate(fresh)
        assert await state(reused) == await state(fresh)
        return
    # ... set aside by the next test's reset and brought back empty, against Alembic's own run.
    await reset_pg(database_url)
    await migrated(database_url)
    conn = await connect(database_url)
    try:
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", PARKED)
    finally:
        await conn.close()
    reused = await state(database_url)
    assert reused["rows"]["subscribers"] is None
    await reset_pg(database_url)
    await migrate(database_url)
    assert reused == await state(database_url)
