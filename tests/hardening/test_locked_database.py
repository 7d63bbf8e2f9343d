"""Admin and API writes on a locked database (issue 18, point 3): 503 with ``Retry-After``
within seconds (``RESPONDER_FORM_WRITE_TIMEOUT_S``), never a 500 after SQLite's 30 s busy
timeout, and nothing changed; once the lock is gone the same write goes through."""

from __future__ import annotations

import asyncio

from ..conftest import App
from ..test_tracking import write_lock


async def test_an_api_write_on_a_locked_database_is_a_quick_503(app: App) -> None:
    app.rt.settings = app.rt.settings.replace(form_write_timeout_s=2.0)
    loop = asyncio.get_running_loop()
    body = {"email": "ann@example.com", "name": "Ann", "consent_source": "phone call"}
    async with write_lock(app.rt.db):
        started = loop.time()
        resp = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
        took = loop.time() - started
        assert resp.status == 503, await resp.text()
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"]["code"] == "busy"
        assert took < 6.0  # the deadline (2 s) and a second's margin, far below 30 s
        resp = await app.client.get("/healthz")  # reads still answer
        assert resp.status in (200, 503)
    resp = await app.client.get("/api/v1/subscribers?q=ann@example.com", headers=app.auth)
    assert resp.status == 200
    resp = await app.client.post("/api/v1/subscribers", json=body, headers=app.auth)
    assert resp.status == 201, await resp.text()
