"""The SQLite file on a full file system (issue 18, point 9): writes answer 503 with
``Retry-After``, never 500, reads still answer, nothing is half written; once space is freed the
same write goes through. A real small file system: a tmpfs mounted for the test (root only)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.clock import FakeClock

from ..conftest import SmtpSink, running_app


@contextlib.contextmanager
def small_file_system(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file until the file system refuses another byte."""
    filler = path / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                out.write(b"\0")
        except OSError:
            pass
    return filler


async def test_a_full_disk_is_a_503_and_the_write_goes_through_after(
    tmp_path: Path, smtp: SmtpSink, clock: FakeClock
) -> None:
    with small_file_system(tmp_path / "small", "16m") as small:
        url = f"sqlite+aiosqlite:///{small}/responder.db"
        body = {"email": "ann@example.com", "name": "Ann", "consent_source": "phone call"}
        async with running_app(url, smtp, clock, RESPONDER_TRACK_WRITER="inline") as app:
            # The write-ahead log emptied, then every byte taken: the next write needs new space.
            with sqlite3.connect(small / "responder.db") as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            filler = fill(small)
            assert os.statvfs(small).f_bavail == 0
            resp = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
            assert resp.status == 503, await resp.text()
            assert int(resp.headers["Retry-After"]) > 0
            resp = await app.client.post("/subscribe", json={"email": "bob@example.com"})
            assert resp.status == 503, await resp.text()
            resp = await app.client.get("/api/v1/subscribers?q=ann@example.com", headers=app.auth)
            assert resp.status == 200 and (await resp.json())["subscribers"] == []  # nothing half written
            filler.unlink()
            resp = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
            assert resp.status == 201, await resp.text()
