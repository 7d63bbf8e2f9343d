"""Crash safety with real processes: ``responder serve`` sending to an aiosmtpd server is
killed with SIGKILL mid-send again and again and restarted each time. In the end every message
arrived at least once, none is lost, and each kill sends at most ``RESPONDER_WORKER_BATCH``
messages twice (what the killed worker had claimed, over all its pipelines). SIGTERM drains: the claimed sends finish and nothing is left leased."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from responder.clock import SystemClock
from responder.models import Message

from .conftest import BASE_URL, SmtpSink, free_port
from .delivery_fixtures import queue_newsletter, runtime_for

KILLS = int(os.environ.get("RESPONDER_TEST_KILLS", "10"))  # bench/crash.sh runs more
MESSAGES = max(400, 40 * KILLS)
BATCH = 20


def message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", data, re.MULTILINE)
    assert found, data[:500]
    return found.group(1).decode()


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "responder", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_until(predicate, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_sigkill_mid_send_loses_nothing(sqlite_url: str, smtp: SmtpSink, tmp_path: Path) -> None:
    async with runtime_for(sqlite_url, smtp.url, SystemClock()) as rt:
        await queue_newsletter(rt, [f"reader{i}@example.org" for i in range(MESSAGES)])
        async with rt.db.read() as session:
            expected = set((await session.execute(select(Message.message_id))).scalars())
    env = {
        **os.environ,
        "RESPONDER_DATABASE_URL": sqlite_url,
        "RESPONDER_SMTP_URL": smtp.url,
        "RESPONDER_BASE_URL": BASE_URL,
        "RESPONDER_FROM": "Acme <news@acme.example.com>",
        "RESPONDER_SECRET_KEY": "test-secret-key",
        "RESPONDER_ADMIN_TOKEN": "t",
        "RESPONDER_PORT": str(free_port()),
        "RESPONDER_LEASE_S": "2",
        "RESPONDER_WORKER_POLL_S": "0.05",
        "RESPONDER_WORKER_BATCH": str(BATCH),
        "RESPONDER_WORKER_LANES": "4",
    }
    log = tmp_path / "serve.log"

    def received() -> int:
        return len(smtp.received)

    resent_per_kill: list[int] = []
    for _ in range(KILLS):
        before = received()
        process = spawn(env, log)
        try:  # kill while it is sending: once more than a batch of this run has arrived
            await wait_until(
                lambda before=before, process=process: received() >= before + BATCH + 5 or process.poll() is not None
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        # Arrived, but not recorded as sent: these go again once their lease expires.
        arrived = {message_id(r.data) for r in smtp.received[before:]}
        async with runtime_for(sqlite_url, smtp.url, SystemClock()) as rt, rt.db.read() as session:
            unrecorded = (
                await session.execute(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.message_id.in_(arrived), Message.state != "sent")
                )
            ).scalar_one()
        resent_per_kill.append(unrecorded)

    # SIGTERM mid-send drains: the process exits cleanly and leaves nothing leased to itself.
    before = received()
    process = spawn(env, log)
    await wait_until(lambda: received() >= before + 5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, log.read_text()[-2000:]
    async with runtime_for(sqlite_url, smtp.url, SystemClock()) as rt:
        async with rt.db.read() as session:
            owners = set(
                (await session.execute(select(Message.lease_owner).where(Message.state == "sending"))).scalars()
            )
        assert not any(owner and f":{process.pid}:" in owner for owner in owners)

    # One last run finishes the rest; the expired leases of the killed runs are reclaimed.
    seen: list[str] = []

    def all_arrived() -> bool:
        received_now = smtp.received
        seen.extend(message_id(r.data) for r in received_now[len(seen) :])
        return set(seen) >= expected

    process = spawn(env, log)
    try:
        await wait_until(all_arrived, timeout_s=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    ids = Counter(message_id(r.data) for r in smtp.received)
    duplicates = sum(ids.values()) - len(ids)
    print(
        f"\nkills {KILLS}: received {sum(ids.values())}, unique {len(ids)}, "
        f"duplicates {duplicates}, lost {len(expected - set(ids))}, unrecorded per kill {resent_per_kill}"
    )
    assert set(ids) == expected  # none lost, nothing foreign
    assert max(resent_per_kill) <= BATCH  # a kill sends at most one batch twice
    assert duplicates <= sum(resent_per_kill)
    async with runtime_for(sqlite_url, smtp.url, SystemClock()) as rt, rt.db.read() as session:
        states = dict((await session.execute(select(Message.state, func.count()).group_by(Message.state))).all())
    assert states == {"sent": MESSAGES}
