"""``responder backup``: a consistent copy of the SQLite file while ``serve`` writes to it, never
over an existing file without ``--force``; on PostgreSQL the ``pg_dump`` command instead."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

from responder.backup import copy_sqlite
from responder.cli import main

from .conftest import free_port
from .test_serve import start, stop


def subscribers(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        return {email for (email,) in db.execute("select email from subscribers")}
    finally:
        db.close()


async def backup(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "backup",
        *args,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_backup_while_serve_writes(tmp_path: Path) -> None:
    port = free_port()
    env = {"RESPONDER_SUBSCRIBE_PER_IP_PER_HOUR": "100000"}
    proc, _ = await start(tmp_path, env, port)
    accepted: list[str] = []
    writing = True

    async def subscribe_in_a_loop(http: aiohttp.ClientSession) -> None:
        while writing:
            email = f"reader{len(accepted)}@example.com"
            resp = await http.post("/subscribe", json={"email": email})
            assert resp.status == 202, await resp.text()
            accepted.append(email)

    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            writer = asyncio.create_task(subscribe_in_a_loop(http))
            while len(accepted) < 20:
                await asyncio.sleep(0.01)
            before = set(accepted)
            code, out = await backup(tmp_path, "backup.db")
            during = len(accepted) - len(before)
            assert code == 0, out
            copied = subscribers(tmp_path / "backup.db")
            await asyncio.sleep(0.2)  # the server goes on writing after the backup too
            writing = False
            await writer
    finally:
        assert await stop(proc) == 0

    assert "backed up to backup.db" in out
    assert during > 0  # subscribes were answered while the backup ran
    assert before <= copied <= set(accepted)
    assert len(accepted) > len(copied)  # a copy of one moment: the server wrote on after it
    backup_file = tmp_path / "backup.db"
    assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600  # it holds the secret key
    assert sqlite3.connect(backup_file).execute("pragma journal_mode").fetchone() == ("delete",)
    assert sorted(p.name for p in tmp_path.glob("backup.db*")) == ["backup.db"]  # no .tmp, no -wal


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "responder.db", 10)
    target = tmp_path / "backup.db"
    command = ["backup", str(target), "--database-url", f"sqlite:///{tmp_path / 'responder.db'}"]
    assert main(command) == 0
    capsys.readouterr()
    source.execute("insert into t (body) values ('later')")
    assert main(command) == 2
    assert capsys.readouterr().err == f"responder: error: {target} exists; not overwriting it (--force replaces it)\n"
    assert sqlite3.connect(target).execute("select count(*) from t").fetchone() == (10,)
    assert main([*command, "--force"]) == 0
    assert sqlite3.connect(target).execute("select count(*) from t").fetchone() == (11,)
    source.close()


def make_source(path: Path, rows: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (id integer primary key, body text)")
    with db:  # one transaction
        db.execute("begin")
        db.executemany("insert into t (body) values (?)", [("x" * 200,) for _ in range(rows)])
    return db


def test_the_copy_goes_in_steps_with_a_pause_between(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source.db", 2000)
    pages = source.execute("pragma page_count").fetchone()[0]
    pauses: list[float] = []
    copied = copy_sqlite(tmp_path / "source.db", tmp_path / "copy.db", pages_per_step=10, sleep=pauses.append)
    assert copied == pages
    assert pauses == [0.01] * ((pages - 1) // 10)
    assert sqlite3.connect(tmp_path / "copy.db").execute("select count(*) from t").fetchone() == (2000,)


def test_a_copy_that_keeps_starting_over_is_finished_in_one_step(tmp_path: Path) -> None:
    """Another connection commits between every two steps, so the paged copy starts over each
    time; after three restarts the rest goes in one step, a snapshot of one moment."""
    source = make_source(tmp_path / "source.db", 2000)
    writer = sqlite3.connect(tmp_path / "source.db", isolation_level=None)
    pauses = 0

    def write_while_paused(_seconds: float) -> None:
        nonlocal pauses
        pauses += 1
        writer.execute("insert into t (body) values ('written during the copy')")

    copy_sqlite(tmp_path / "source.db", tmp_path / "copy.db", pages_per_step=10, sleep=write_while_paused)
    assert pauses == 4  # the first step, then three that started over
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("pragma integrity_check").fetchall() == [("ok",)]
    assert copy.execute("select count(*) from t").fetchone() == (2000 + pauses,)
    source.close()
    writer.close()


def test_postgresql_is_told_to_use_pg_dump(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+asyncpg://responder:s3cret@db.internal:5433/responder"
    assert main(["backup", "/backup/responder.dump", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert (
        "pg_dump --format=custom --file=/backup/responder.dump 'postgresql://responder:******@db.internal:5433/responder'"
        in err
    )
    assert "s3cret" not in err
