"""A landing page on another origin with the pasted snippet, in headless Chromium: fill it in,
submit, land on the thank-you page, and the confirmation mail reaches the SMTP server. A second
form with proof of work solves its challenge in the browser (cross-origin fetch under CORS)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from responder.app import init_app, start_runtime
from responder.clock import FakeClock

from .conftest import SmtpSink, free_port, make_settings

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is missing")
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


async def test_snippet_on_another_origin_subscribes_in_chromium(
    sqlite_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    port, landing_port = free_port(), free_port()
    landing_origin = f"http://127.0.0.1:{landing_port}"
    forms = tmp_path / "forms.json"
    forms.write_text(json.dumps({"forms": {"guarded": {"pow_bits": 6, "origins": [landing_origin]}}}))
    settings = make_settings(
        sqlite_url, smtp.url, RESPONDER_BASE_URL=f"http://127.0.0.1:{port}", RESPONDER_FORMS_FILE=str(forms)
    )
    rt = (await start_runtime(settings, clock)).runtime
    client = TestClient(TestServer(init_app(rt), host="127.0.0.1", port=port))
    await client.start_server()
    try:
        auth = {"Authorization": f"Bearer {settings.admin_token}"}
        snippets = [
            (await (await client.get(f"/api/v1/forms/{name}/snippet", headers=auth)).json())["html"]
            for name in ("default", "guarded")
        ]
        html = (
            "<!doctype html><html><head><title>Spring sale</title></head><body>"
            "<h1>Our landing page</h1><div id='plain'>" + snippets[0] + "</div>"
            "<div id='guarded'>" + snippets[1] + "</div></body></html>"
        )

        async def serve(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        landing = web.Application()
        landing.router.add_get("/", serve)
        landing_server_ = TestServer(landing, host="127.0.0.1", port=landing_port)
        await landing_server_.start_server()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
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
                page = await browser.new_page()
                await page.goto(landing_origin + "/")
                await page.fill("#plain input[name=name]", "Ada Lovelace")
                await page.fill("#plain input[name=email]", "ada@example.com")
                await page.click("#plain button[type=submit]")
                await page.wait_for_url(f"http://127.0.0.1:{port}/subscribe/default/thanks")
                assert "Almost there" in await page.content()

                await page.goto(landing_origin + "/")
                await page.fill("#guarded input[name=email]", "grace@example.com")
                await page.click("#guarded button[type=submit]")
                await page.wait_for_url(f"http://127.0.0.1:{port}/subscribe/guarded/thanks")
            finally:
                await browser.close()
        await landing_server_.close()
        [mail] = await smtp.wait_for(1, "ada@example.com")
        assert "confirm" in mail.message["Subject"].lower()
        await smtp.wait_for(1, "grace@example.com")
    finally:
        await client.close()
        await rt.close()
