"""Headless Debian chromium driven by Playwright, and the whole server on a real port whose
public URL is that port (so cookies, origins and links are what a browser sees)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, async_playwright

from responder.app import init_app, start_runtime
from responder.clock import FakeClock
from responder.runtime import Runtime

from .conftest import SmtpSink, free_port, make_settings
from .db_template import seeded

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh profile in ``tmp_path`` (Playwright passes it as ``--user-data-dir``)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class LiveServer:
    rt: Runtime
    url: str


@asynccontextmanager
async def serving(database_url: str, smtp: SmtpSink, **env: str) -> AsyncIterator[LiveServer]:
    """The whole server on a free port of 127.0.0.1, on a fake clock, with ``env`` set."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(database_url, smtp.url, RESPONDER_BASE_URL=url, **env)
    clock = FakeClock()
    await seeded(settings, clock.now())
    rt = (await start_runtime(settings, clock)).runtime
    server = TestServer(init_app(rt), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield LiveServer(rt, url)
    finally:
        await server.close()
        await rt.close()


@pytest.fixture
async def live(database_url: str, smtp: SmtpSink) -> AsyncIterator[LiveServer]:
    async with serving(database_url, smtp) as server:
        yield server
