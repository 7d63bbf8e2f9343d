"""``responder serve`` as a user runs it: a real process, first start, SIGTERM drains sends."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import SmtpSink, free_port


async def start(
    tmp_path: Path, env: dict[str, str], port: int, *flags: str
) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "serve",
        "--port",
        str(port),
        *flags,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    while not any(line.startswith("subscribe form:") for line in lines):
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line, "serve exited early:\n" + "".join(lines)
        lines.append(line.decode())
    return proc, lines


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), timeout=15)


@pytest.mark.slow
async def test_first_start_with_embedded_defaults(tmp_path: Path) -> None:
    port = free_port()
    proc, lines = await start(tmp_path, {}, port)
    try:
        banner = "".join(lines)
        assert f"listening on http://127.0.0.1:{port}" in banner
        assert "mail goes to: files in outbox/" in banner
        assert "admin token: " in banner and "shown once" in banner
        assert f"subscribe form: http://127.0.0.1:{port}/subscribe/default" in banner
        token = next(line for line in lines if line.startswith("admin token:")).split()[2]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            resp = await http.get("/api/v1/layers", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            assert len((await resp.json())["layers"]) == 5
            resp = await http.get("/subscribe/default")
            assert resp.status == 200 and "<form" in await resp.text()
            resp = await http.post("/subscribe", data={"email": "ada@example.com", "name": "Ada"})
            assert resp.status == 200
        for _ in range(100):
            emls = list((tmp_path / "outbox").glob("*.eml"))
            if emls:
                break
            await asyncio.sleep(0.05)
        assert len(emls) == 1 and b"ada@example.com" in emls[0].read_bytes()
    finally:
        assert await stop(proc) == 0
    assert (tmp_path / "responder.db").exists()

    # The second start keeps the token (its digest: the token itself is stored nowhere and
    # never shown again) and seeds nothing new; tokens in paths reach the access log cut short.
    secret_path = "/unsubscribe/" + "A" * 40
    proc, lines = await start(tmp_path, {}, port)
    try:
        assert not any(token in line for line in lines)
        assert any(line.startswith("admin token: the one shown at first start") for line in lines)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            resp = await http.get("/api/v1/layers", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            resp = await http.get("/api/v1/layers", headers={"Authorization": f"Bearer {token[:-1]}x"})
            assert resp.status == 401
            assert (await http.get(secret_path)).status == 404
    finally:
        assert await stop(proc) == 0
    assert proc.stdout is not None
    log = "".join(lines) + (await proc.stdout.read()).decode()
    assert "GET /unsubscribe/AAAAAAAA… " in log and "A" * 9 not in log
    assert not any(line.startswith("first start") for line in lines)
    stored = sqlite3.connect(tmp_path / "responder.db").execute("SELECT name, value FROM app_secrets").fetchall()
    assert {name for name, _ in stored} == {"secret_key", "admin_token_hash"}
    assert token not in {value for _, value in stored}


async def test_a_given_admin_token_is_never_printed(tmp_path: Path) -> None:
    proc, lines = await start(tmp_path, {"RESPONDER_ADMIN_TOKEN": "given-token-1234567890"}, free_port())
    assert await stop(proc) == 0
    assert "admin token: from RESPONDER_ADMIN_TOKEN\n" in lines
    assert not any("given-token" in line for line in lines)


async def test_roles_in_separate_processes(tmp_path: Path) -> None:
    """``serve --no-workers`` answers HTTP and queues mail but sends none; a ``responder
    scheduler`` beside it sends none either; a ``responder worker`` sends it."""
    port = free_port()
    env = {"RESPONDER_WORKER_POLL_S": "0.05", "RESPONDER_SCHEDULER_POLL_S": "0.05"}
    proc, lines = await start(tmp_path, env, port, "--no-workers")
    scheduler = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "scheduler",
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert scheduler.stdout is not None
        banner = b""
        while b"responder scheduler running" not in banner:
            line = await asyncio.wait_for(scheduler.stdout.readline(), timeout=30)
            assert line, "the scheduler exited early:\n" + banner.decode()
            banner += line
        assert any("no workers" in line for line in lines)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            resp = await http.post("/subscribe", json={"email": "ada@example.com"})
            assert resp.status == 202
        await asyncio.sleep(1.0)  # twenty polls of a worker, had one been running
        assert not list((tmp_path / "outbox").glob("*.eml"))
        db = sqlite3.connect(tmp_path / "responder.db")
        assert db.execute("select state from messages").fetchall() == [("queued",)]
        db.close()
    finally:
        codes = (await stop(scheduler), await stop(proc))
    assert codes == (0, 0)


async def test_sigterm_lets_the_in_flight_send_finish(tmp_path: Path, smtp: SmtpSink) -> None:
    smtp.handler.data_delay_s = 1.5
    port = free_port()
    proc, _ = await start(tmp_path, {"RESPONDER_SMTP_URL": smtp.url, "RESPONDER_WORKER_POLL_S": "0.05"}, port)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        resp = await http.post("/subscribe", json={"email": "ada@example.com"})
        assert resp.status == 202
    db = sqlite3.connect(tmp_path / "responder.db")
    for _ in range(200):  # wait until the worker holds the message mid-send
        if db.execute("select state from messages").fetchone() == ("sending",):
            break
        await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stop(proc) == 0
    assert loop.time() - started < 10
    assert len(smtp.received) == 1
    assert db.execute("select state from messages").fetchall() == [("sent",)]
    db.close()


async def test_serve_refuses_a_bad_setting(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "serve",
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "RESPONDER_DATABASE_URL": "oracle://x"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().startswith("responder: error: RESPONDER_DATABASE_URL")


def test_db_upgrade_on_a_fresh_file(tmp_path: Path) -> None:
    import subprocess

    url = f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "responder", "db", "upgrade", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tables = {
        r[0] for r in sqlite3.connect(tmp_path / "ops.db").execute("select name from sqlite_master where type='table'")
    }
    assert {
        "subscribers",
        "messages",
        "events",
        "layers",
        "layer_history",
        "enquiries",
        "consent_records",
        "enrollments",
        "templates",
        "newsletters",
    } <= tables
    mode = sqlite3.connect(tmp_path / "ops.db").execute("pragma journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_worker_process_sends_without_http(tmp_path: Path) -> None:
    from responder.app import start_runtime
    from responder.audience.subscribers import SubscribeRequest, subscribe
    from responder.settings import Settings

    env = {
        "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
        "RESPONDER_SMTP_URL": f"file://{tmp_path / 'out'}",
        "RESPONDER_WORKER_POLL_S": "0.05",
    }
    started = await start_runtime(Settings.from_env(env))
    await subscribe(started.runtime, SubscribeRequest(email="ada@example.com"))
    await started.runtime.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "worker",
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(300):
            if list((tmp_path / "out").glob("*.eml")):
                break
            await asyncio.sleep(0.05)
        assert len(list((tmp_path / "out").glob("*.eml"))) == 1
    finally:
        assert await stop(proc) == 0
    output = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
    assert "worker running" in output and "listening" not in output
