"""Starting twice (issue 18, point 8): a second ``responder serve`` on a port in use, or on an
SQLite file another ``serve`` is using, stops within seconds with one line and exit code 2."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from ..conftest import free_port
from ..test_serve import start, stop


async def second(tmp_path: Path, port: int) -> tuple[int, list[str], float]:
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "responder",
        "serve",
        "--port",
        str(port),
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    errors = [line for line in err.decode().splitlines() if line.startswith("responder:")]
    return proc.returncode or 0, errors, time.monotonic() - began


async def test_a_second_serve_stops_at_once_with_exit_code_2(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = await start(tmp_path, {}, port)
    try:
        code, errors, took = await second(tmp_path, free_port())  # same SQLite file
        assert code == 2 and took < 10
        [line] = errors
        assert "another `responder serve` is running on" in line and "responder.db" in line

        other = tmp_path / "other"
        other.mkdir()
        code, errors, took = await second(other, port)  # another database, the same port
        assert code == 2 and took < 10
        [line] = errors
        assert line.startswith(f"responder: error: cannot listen on 127.0.0.1:{port}")
    finally:
        assert await stop(proc) == 0
    # Once the first has stopped, the lock is free again.
    proc, lines = await start(tmp_path, {}, port)
    assert await stop(proc) == 0
    assert any(line.startswith("responder listening") for line in lines)
