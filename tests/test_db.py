"""The database layer on SQLite and PostgreSQL: pragmas, foreign keys, UTC timestamps."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from responder.db import Database, alembic_config
from responder.models import ConsentRecord, Event, Subscriber

from .db_template import upgrade_to


@pytest.fixture
async def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


async def test_sqlite_runs_with_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    await database.migrate()
    try:
        for session_factory in (database.read, database.transaction):
            async with session_factory() as session:
                assert (await session.execute(text("pragma journal_mode"))).scalar() == "wal"
                assert (await session.execute(text("pragma foreign_keys"))).scalar() == 1
                assert (await session.execute(text("pragma busy_timeout"))).scalar() == 30000
    finally:
        await database.dispose()


async def test_foreign_keys_are_enforced(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            session.add(
                ConsentRecord(
                    subscriber_id=12345,
                    action="subscribe",
                    form="default",
                    wording_sha256=None,
                    ip=None,
                    user_agent=None,
                    created_at=now,
                )
            )


async def test_timestamps_come_back_as_aware_utc(db: Database) -> None:
    local = dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    async with db.transaction() as session:
        session.add(
            Subscriber(email="a@example.com", name="", status="pending", attributes={}, tags=[], created_at=local)
        )
    async with db.read() as session:
        stored = (await session.execute(text("select 1"))).scalar()
        subscriber = await session.get(Subscriber, 1)
    assert stored == 1 and subscriber is not None
    assert subscriber.created_at == local
    assert subscriber.created_at.tzinfo is not None and subscriber.created_at.utcoffset() == dt.timedelta(0)


async def test_migrating_twice_is_harmless(db: Database) -> None:
    await db.migrate()
    async with db.read() as session:
        version = (await session.execute(text("select version_num from alembic_version"))).scalar()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_exclusive_blocks_run_one_at_a_time(database_url: str) -> None:
    import asyncio

    first, second = Database(database_url), Database(database_url)  # as two processes would
    inside: list[str] = []
    overlaps = 0

    async def work(db: Database, name: str) -> None:
        nonlocal overlaps
        for _ in range(3):
            async with db.exclusive(12345):
                inside.append(name)
                overlaps += len(inside) > 1
                await asyncio.sleep(0.02)
                inside.remove(name)

    try:
        if first.is_sqlite:  # one process on SQLite: the lock is the process's own
            await asyncio.gather(work(first, "a"), work(first, "b"))
        else:
            await asyncio.gather(work(first, "a"), work(second, "b"))
    finally:
        await first.dispose()
        await second.dispose()
    assert overlaps == 0


async def test_enquiry_mails_stuck_sending_before_leases_fail_on_upgrade(database_url: str) -> None:
    """Before i10 a worker that died mid-send left an enquiry mail 'sending' with no lease;
    the upgrade marks those failed rather than mailing them again, maybe months later."""
    database = Database(database_url)
    try:
        async with database.writer.begin() as conn:
            await conn.run_sync(upgrade_to("i9_claim_index"))
            await conn.execute(
                text(
                    "INSERT INTO enquiries (email, subject, body, state, created_at, ack_state,"
                    " ack_attempts, answer, answer_state, name, source) VALUES"
                    " ('a@example.com', '', 'q', 'answered', '2026-01-01 00:00:00', 'sending', 0,"
                    " 'yes', 'sending', '', 'form'),"
                    " ('b@example.com', '', 'q', 'open', '2026-01-01 00:00:00', 'due', 0,"
                    " NULL, NULL, '', 'form')"
                )
            )
        await database.migrate()
        async with database.read() as session:
            rows = (
                await session.execute(
                    text("SELECT email, ack_state, answer_state, ack_at FROM enquiries ORDER BY email")
                )
            ).all()
        assert [tuple(row) for row in rows] == [
            ("a@example.com", "failed", "failed", None),
            ("b@example.com", "due", None, None),
        ]
    finally:
        await database.dispose()


async def test_verdicts_move_from_data_to_their_column_on_upgrade(database_url: str) -> None:
    """i16 keeps each open's and click's verdict reason in ``events.verdict``: machine reasons
    leave ``data``, the old ``burst`` is a ``sweep``, human ones are ``human``, and opens through
    Gmail's and Yahoo's image proxies, once counted machine, become the human opens they are."""
    database = Database(database_url)
    try:
        async with database.writer.begin() as conn:
            await conn.run_sync(upgrade_to("i11_import_heartbeat"))
            await conn.execute(
                text(
                    "INSERT INTO subscribers (id, email, name, status, attributes, tags, created_at)"
                    " VALUES (1, 'a@example.com', '', 'active', '{}', '[]', '2026-01-01 00:00:00')"
                )
            )
            rows = [
                ("open", False, "{}"),
                ("open", True, '{"machine_reason": "gmail_proxy"}'),
                ("open", True, '{"machine_reason": "apple_mpp"}'),
                ("click", True, '{"machine_reason": "burst", "kept": 1}'),
                ("click", False, "{}"),
                ("reply", False, '{"subject": "hi"}'),
            ]
            for n, (type_, machine, data) in enumerate(rows, start=1):
                await conn.execute(
                    text(
                        "INSERT INTO events (id, subscriber_id, type, machine, data, created_at)"
                        " VALUES (:id, 1, :type, :machine, :data, '2026-01-01 00:00:00')"
                    ),
                    {"id": n, "type": type_, "machine": machine, "data": data},
                )
        await database.migrate()
        async with database.read() as session:
            events = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
        assert [(e.type, e.machine, e.verdict, e.data) for e in events] == [
            ("open", False, "human", {}),
            ("open", False, "gmail_proxy", {}),
            ("open", True, "apple_mpp", {}),
            ("click", True, "sweep", {"kept": 1}),
            ("click", False, "human", {}),
            ("reply", False, None, {"subject": "hi"}),
        ]
    finally:
        await database.dispose()


async def test_a_read_sees_one_snapshot_while_others_commit(db: Database) -> None:
    """A report reads the rolled-up figures, then where the roll-up stands, then the rows since:
    a roll-up committing between two of its reads must change none of them (on PostgreSQL a
    statement would otherwise see every commit before it)."""
    async with db.transaction() as session:
        await session.execute(text("INSERT INTO rollup_state (id, pruned_messages, pruned_events) VALUES (1, 0, 0)"))
    async with db.read() as reading:
        mark = "SELECT count(*) FROM rolled_figures WHERE scope = 'all'"
        assert (await reading.execute(text(mark))).scalar_one() == 0
        async with db.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO rolled_figures (day, scope, scope_id, layer_id, metric, value)"
                    " VALUES ('2026-01-01', 'all', 0, 0, 'ev:open:0:', 5)"
                )
            )
        assert (await reading.execute(text(mark))).scalar_one() == 0
    async with db.read() as reading:
        assert (await reading.execute(text(mark))).scalar_one() == 1
