"""Empty databases at the newest migration, and the starter seeded as on a first start, without
running every migration and compiling every starter template for every test.

Alembic takes ~0.3 s to bring an empty SQLite file to head and ~1 s on PostgreSQL, and seeding
the starter ~0.2 s, once per test that starts the server: a third of the suite. The fixtures that
start a runtime call ``migrated(url)`` first, or ``seeded(settings, now)`` for what
``start_runtime`` would seed at ``now``. On an empty database these put what the migrations and
``seed_defaults`` left the first time they ran in this process for that folder and time: on
SQLite the file's bytes; on PostgreSQL the schema the previous test used, which ``reset_pg`` parks
aside instead of dropping, emptied and given those rows back, when its structure is exactly that
of a freshly migrated schema. Anything else (a database in use, a schema a test changed, a
failure) is left for ``start_runtime`` to migrate and seed as before. Tests of the migrations, of
seeding and of commands starting on a new database never call this.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic import command
from sqlalchemy.engine import Connection, make_url

from responder.db import Database, alembic_config
from responder.seed import seed_defaults
from responder.settings import Settings

PARKED = "parked_public"  # the previous test's schema, kept by reset_pg for the next one

# Everything about the public schema's structure a test could change and a migration decides;
# names, not oids, so a schema renamed to public compares equal to the one it was.
STRUCTURE = """
SELECT md5(string_agg(line, E'\n' ORDER BY line)) FROM (
  SELECT concat_ws(' ', 'rel', c.relname, c.relkind::text, c.relpersistence::text) AS line
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'col', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull, a.attidentity::text, a.attgenerated::text, a.attcollation::regcollation::text,
                   pg_get_expr(d.adbin, d.adrelid))
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'idx', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'con', conrelid::regclass::text, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'trg', pg_get_triggerdef(t.oid))
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT concat_ws(' ', 'view', c.relname, pg_get_viewdef(c.oid))
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT concat_ws(' ', 'seq', sequencename, data_type::text, start_value, min_value, max_value, increment_by,
                   cycle, cache_size)
    FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL
  SELECT concat_ws(' ', 'fn', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)))
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'type', t.typname, t.typtype::text, array_to_string(array(
           SELECT enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), ','))
    FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c')
    AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
) structure
"""


@dataclass(frozen=True)
class PgTemplate:
    structure: str  # STRUCTURE of a freshly migrated schema
    tables: tuple[str, ...]
    rows: dict[str, str]  # table -> its rows as JSON, for the tables that have rows
    sequences: dict[str, tuple[int, bool]]  # sequence -> (last_value, is_called)


Starter = tuple[Path, dt.datetime]  # the starter templates' folder, and when they were seeded
_sqlite_templates: dict[Starter | None, bytes] = {}
_pg_templates: dict[Starter | None, PgTemplate] = {}


async def seeded(settings: Settings, now: dt.datetime) -> None:
    """``migrated``, and the starter seeded at ``now`` as ``start_runtime`` seeds it."""
    await migrated(settings.database_url, (settings.templates_dir, now))


async def migrated(database_url: str, starter: Starter | None = None) -> None:
    """Bring an empty database to the state migrating it (and seeding ``starter``) leaves,
    cheaply; a database that is not empty is left as it is."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        await _sqlite(Path(url.database or ""), database_url, starter)
    else:
        await _postgresql(database_url, starter)


async def _first_time(database_url: str, starter: Starter | None) -> None:
    """What a template is made of: Alembic's migrations and the starter's real seeding."""
    db = Database(database_url)
    try:
        await db.migrate()
        if starter is not None:
            await seed_defaults(db, *starter)
    finally:
        await db.dispose()


async def _sqlite(path: Path, database_url: str, starter: Starter | None) -> None:
    if path.exists() or not path.is_absolute():
        return
    if starter in _sqlite_templates:
        path.write_bytes(_sqlite_templates[starter])
        return
    await _first_time(database_url, starter)
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:  # all of it is in the file (closing checkpoints)
        _sqlite_templates[starter] = path.read_bytes()


async def connect(database_url: str) -> asyncpg.Connection:
    url = make_url(database_url)
    return await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )


async def park_or_drop_public(conn: asyncpg.Connection) -> None:
    """Leave an empty public schema, keeping a used one aside as ``PARKED`` for ``migrated``."""
    used = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = 'public'::regnamespace)")
    if used:
        await conn.execute(
            f"DROP SCHEMA IF EXISTS {PARKED} CASCADE; ALTER SCHEMA public RENAME TO {PARKED}; CREATE SCHEMA public;"
        )
    else:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")


class _NotReusable(Exception):
    pass


async def _postgresql(database_url: str, starter: Starter | None) -> None:
    conn = await connect(database_url)
    try:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = 'public'::regnamespace)"):
            return
        template = _pg_templates.get(starter)
        if template is None:
            await _first_time(database_url, starter)
            _pg_templates[starter] = await _describe(conn)
            return
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", PARKED):
            return
        try:
            async with conn.transaction():  # all or nothing: on any doubt public stays empty
                await conn.execute(f"DROP SCHEMA public; ALTER SCHEMA {PARKED} RENAME TO public;")
                if await conn.fetchval(STRUCTURE) != template.structure:
                    raise _NotReusable
                await _refill(conn, template)
        except (_NotReusable, asyncpg.PostgresError):
            return
    finally:
        await conn.close()


async def _describe(conn: asyncpg.Connection) -> PgTemplate:
    tables = tuple(
        await conn.fetchval(
            "SELECT coalesce(array_agg(relname::text ORDER BY relname), '{}') FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
        )
    )
    rows = {}
    for table in tables:
        data = await conn.fetchval(f'SELECT json_agg(t)::text FROM public."{table}" t')
        if data is not None:
            rows[table] = data
    sequences = {}
    for (name,) in await conn.fetch("SELECT sequencename::text FROM pg_sequences WHERE schemaname = 'public'"):
        last_value, is_called = await conn.fetchrow(f'SELECT last_value, is_called FROM public."{name}"')
        sequences[name] = (last_value, is_called)
    return PgTemplate(await conn.fetchval(STRUCTURE), tables, rows, sequences)


async def _refill(conn: asyncpg.Connection, template: PgTemplate) -> None:
    """Every row out, then the template's rows in, each in one statement (foreign keys are
    checked at a statement's end, so the order of the tables does not matter), and the
    sequences where the template left them. Triggers are off meanwhile: the rows put back
    include what the triggers kept (``subscriber_counts``) when the template was made."""
    await conn.execute("SET session_replication_role = replica")
    deletes = ", ".join(f'd{n} AS (DELETE FROM public."{table}")' for n, table in enumerate(template.tables))
    await conn.execute(f"WITH {deletes} SELECT 1")
    if template.rows:
        inserts = ", ".join(
            f'i{n} AS (INSERT INTO public."{table}"'
            f' SELECT * FROM json_populate_recordset(NULL::public."{table}", ${n + 1}::json))'
            for n, table in enumerate(template.rows)
        )
        await conn.execute(f"WITH {inserts} SELECT 1", *template.rows.values())
    for name, (last_value, is_called) in template.sequences.items():
        await conn.execute("SELECT setval($1::regclass, $2, $3)", f'public."{name}"', last_value, is_called)
    await conn.execute("SET session_replication_role = origin")


def upgrade_to(revision: str):  # type: ignore[no-untyped-def]
    """For ``connection.run_sync``: migrate that connection's database up to ``revision`` only,
    where an upgrade test writes the rows the next migrations must carry over."""

    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    return run
