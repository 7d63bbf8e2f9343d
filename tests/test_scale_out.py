"""Many processes on one PostgreSQL database, as on many hosts: four ``responder worker``
processes deliver 5,000 queued mails to an SMTP server, each exactly once by its Message-ID,
while one of them is SIGKILLed mid-run (its leased batch goes again when the lease expires: none
lost, at most its claimed batch twice); two ``responder scheduler`` processes queue every
newsletter once, and when one dies the other goes on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from responder.clock import SystemClock
from responder.models import Layer, Message, Newsletter

from .conftest import BASE_URL, SmtpSink, reset_pg
from .delivery_fixtures import queue_newsletter, runtime_for

pytestmark = pytest.mark.slow

MESSAGES = 5000
WORKERS = 4
BATCH = 40


def message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", data, re.MULTILINE)
    assert found, data[:500]
    return found.group(1).decode()


def environment(database_url: str, smtp: SmtpSink) -> dict[str, str]:
    return {
        **os.environ,
        "RESPONDER_DATABASE_URL": database_url,
        "RESPONDER_SMTP_URL": smtp.url,
        "RESPONDER_BASE_URL": BASE_URL,
        "RESPONDER_FROM": "Acme <news@acme.example.com>",
        "RESPONDER_SECRET_KEY": "test-secret-key",
        "RESPONDER_ADMIN_TOKEN": "t",
        "RESPONDER_LEASE_S": "3",
        "RESPONDER_WORKER_POLL_S": "0.05",
        "RESPONDER_SCHEDULER_POLL_S": "0.1",
        "RESPONDER_WORKER_BATCH": str(BATCH),
        "RESPONDER_WORKER_LANES": "4",
    }


def spawn(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "responder", role], env=env, stdout=out, stderr=out)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


async def test_four_workers_send_each_mail_once_and_a_killed_one_loses_nothing(
    pg_database: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    await reset_pg(pg_database)
    async with runtime_for(pg_database, smtp.url, SystemClock()) as rt:
        await queue_newsletter(rt, [f"reader{i}@example.org" for i in range(MESSAGES)])
        async with rt.db.read() as session:
            expected = set((await session.execute(select(Message.message_id))).scalars())
    assert len(expected) == MESSAGES
    env, log = environment(pg_database, smtp), tmp_path / "workers.log"
    workers = [spawn("worker", env, log) for _ in range(WORKERS)]
    try:
        await wait_until(lambda: len(smtp.received) >= MESSAGES // 5)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        arrived = {message_id(r.data) for r in list(smtp.received)}
        async with runtime_for(pg_database, smtp.url, SystemClock()) as rt, rt.db.read() as session:
            # Arrived, but still leased to the dead worker: these go again when the lease expires.
            unrecorded = (
                await session.execute(
                    select(func.count())
                    .select_from(Message)
                    .where(
                        Message.message_id.in_(arrived),
                        Message.state == "sending",
                        Message.lease_owner.like(f"%:{victim.pid}:%"),
                    )
                )
            ).scalar_one()
        assert unrecorded <= BATCH

        seen: list[str] = []

        def all_arrived() -> bool:
            now = list(smtp.received)
            seen.extend(message_id(r.data) for r in now[len(seen) :])
            return set(seen) >= expected

        await wait_until(all_arrived, timeout_s=120)
        assert all(w.poll() is None for w in workers[1:]), log.read_text()[-3000:]
    finally:
        stop(workers)
    ids = Counter(message_id(r.data) for r in smtp.received)
    duplicates = sum(ids.values()) - len(ids)
    print(f"\n{WORKERS} workers, one killed: received {sum(ids.values())}, unique {len(ids)}, duplicates {duplicates}")
    assert set(ids) == expected  # none lost, nothing foreign
    assert duplicates <= BATCH  # only the killed worker's claimed batch, at most
    async with runtime_for(pg_database, smtp.url, SystemClock()) as rt, rt.db.read() as session:
        states = dict((await session.execute(select(Message.state, func.count()).group_by(Message.state))).all())
    assert states == {"sent": MESSAGES}
    assert "Traceback" not in log.read_text()


async def _newsletter_now(database_url: str, smtp: SmtpSink, name: str) -> int:
    async with runtime_for(database_url, smtp.url, SystemClock()) as rt, rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).order_by(Layer.position).limit(1))).scalar_one()
        newsletter = Newsletter(
            name=name,
            template_name="newsletter",
            layer_ids=[layer.id],
            tags=[],
            state="scheduled",
            scheduled_at=rt.clock.now(),
            created_at=rt.clock.now(),
        )
        session.add(newsletter)
        await session.flush()
        return newsletter.id


async def _queued(database_url: str, smtp: SmtpSink, newsletter_id: int) -> int:
    async with runtime_for(database_url, smtp.url, SystemClock()) as rt, rt.db.read() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).select_from(Message).where(Message.newsletter_id == newsletter_id)
                )
            ).scalar_one()
        )


async def test_schedulers_queue_each_newsletter_once_and_one_takes_over_when_the_other_dies(
    pg_database: str, smtp: SmtpSink, tmp_path: Path
) -> None:
    await reset_pg(pg_database)
    readers = 300
    async with runtime_for(pg_database, smtp.url, SystemClock()) as rt:
        await queue_newsletter(rt, [f"reader{i}@example.org" for i in range(readers)])
        async with rt.db.transaction() as session:  # the readers only: no mail waiting for them
            await session.execute(delete(Message))
    env, log = environment(pg_database, smtp), tmp_path / "schedulers.log"
    schedulers = [spawn("scheduler", env, log) for _ in range(2)]
    try:
        first = await _newsletter_now(pg_database, smtp, "both running")
        counts: list[int] = []

        async def queued_all(newsletter_id: int) -> None:
            for _ in range(600):
                counts.append(await _queued(pg_database, smtp, newsletter_id))
                if counts[-1] >= readers:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"queued {counts[-1:]} of {readers}")

        await queued_all(first)
        schedulers[0].send_signal(signal.SIGKILL)  # whichever was working, the other goes on
        schedulers[0].wait()
        second = await _newsletter_now(pg_database, smtp, "one left")
        started = time.monotonic()
        await queued_all(second)
        takeover_s = time.monotonic() - started
        await asyncio.sleep(0.5)  # a second scheduler queuing the same newsletter again would show now
        assert await _queued(pg_database, smtp, first) == readers
        assert await _queued(pg_database, smtp, second) == readers
        assert schedulers[1].poll() is None, log.read_text()[-3000:]
        print(f"\nthe remaining scheduler queued the next newsletter {takeover_s:.2f} s after the kill")
    finally:
        stop(schedulers)
    assert "Traceback" not in log.read_text()


async def test_processes_starting_together_on_a_fresh_database_migrate_once(pg_database: str, tmp_path: Path) -> None:
    """Four processes started at once on an empty PostgreSQL database: one migrates, the others
    wait for it and find the schema up to date (none fails on a table that already exists)."""
    await reset_pg(pg_database)
    env = {**os.environ, "RESPONDER_DATABASE_URL": pg_database, "RESPONDER_SECRET_KEY": "k"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "responder", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
