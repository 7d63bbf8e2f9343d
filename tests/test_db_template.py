"""The test harness's cheap fresh databases (tests/db_template.py) are exactly what migrating an
empty database, and seeding the starter, gives: the same tables, indexes and constraints, the
same rows, the same sequence positions; on PostgreSQL after a test that wrote to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from responder.clock import FakeClock
from responder.db import Database
from responder.seed import seed_defaults

from .conftest import SmtpSink, make_settings, reset_pg
from .db_template import PARKED, STRUCTURE, connect, migrated, seeded


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


@pytest.mark.parametrize("starter", [False, True], ids=["migrated", "seeded"])
async def test_a_cheap_fresh_database_is_what_migrating_and_seeding_give(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path, starter: bool
) -> None:
    settings = make_settings(database_url, smtp.url)

    async def cheap(url: str) -> None:
        if starter:
            await seeded(settings.replace(database_url=url), clock.now())
        else:
            await migrated(url)

    async def the_real_thing(url: str) -> None:
        db = Database(url)
        try:
            await db.migrate()
            if starter:
                await seed_defaults(db, settings.templates_dir, clock.now())
        finally:
            await db.dispose()

    if database_url.startswith("sqlite"):
        reused, fresh = (f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("reused.db", "fresh.db"))
        await cheap(f"sqlite+aiosqlite:///{tmp_path / 'first.db'}")  # the template, if this process had none
        await cheap(reused)
        await the_real_thing(fresh)
        assert await state(reused) == await state(fresh)
        return
    # A used schema (a row, a sequence moved), set aside by the next test's reset and brought back
    # as a fresh one, against Alembic's and the seeding's own run on an empty schema.
    await cheap(database_url)
    conn = await connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO app_secrets (name, value) VALUES ('left', 'over'); SELECT nextval('subscribers_id_seq')"
        )
    finally:
        await conn.close()
    await reset_pg(database_url)
    await cheap(database_url)
    conn = await connect(database_url)
    try:
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", PARKED)
    finally:
        await conn.close()
    reused = await state(database_url)
    assert reused["rows"]["app_secrets"] is None and (reused["rows"]["layers"] is not None) == starter
    await reset_pg(database_url)
    await the_real_thing(database_url)
    assert reused == await state(database_url)
