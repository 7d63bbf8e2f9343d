"""Slow and greedy clients (issue 18, point 7): a connection that has not sent a whole request
head within ``RESPONDER_HEADER_TIMEOUT_S`` is closed, and one client address cannot hold more
than ``RESPONDER_MAX_CONNECTIONS_PER_IP`` connections; the real ``responder serve``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from ..conftest import free_port
from ..test_serve import start, stop


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout=seconds) == b""
    except TimeoutError:
        return False


async def test_slow_heads_are_cut_and_one_address_is_capped(tmp_path: Path) -> None:
    port = free_port()
    env = {"RESPONDER_HEADER_TIMEOUT_S": "1", "RESPONDER_MAX_CONNECTIONS_PER_IP": "20"}
    proc, _ = await start(tmp_path, env, port)
    try:
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in slow:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # and never the rest
        # The 21st from the same address is closed at once, before it sends anything.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, 0.5)
        writer.close()
        began = time.monotonic()
        assert all(await asyncio.gather(*(closed_within(r, 5) for r, _ in slow)))
        assert time.monotonic() - began < 3
        for _, writer in slow:
            writer.close()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:  # served again
            assert (await http.get("/healthz")).status == 200
    finally:
        assert await stop(proc) == 0
