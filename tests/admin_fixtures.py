"""Factories for admin tests: subscribers in a layer, an admin account, a signed-in client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from responder.funnel.enrollments import record_entries
from responder.models import Layer, Subscriber
from responder.runtime import Runtime
from responder.web.admin.users import create_user

PASSWORD = "correct horse battery"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


async def make_subscriber(
    rt: Runtime,
    email: str,
    *,
    name: str = "",
    layer: int | None = 1,
    status: str = "active",
    tags: list[str] | None = None,
) -> int:
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        target = (
            (
                await session.execute(select(Layer).where(Layer.position == layer, Layer.removed_at.is_(None)))
            ).scalar_one()
            if layer
            else None
        )
        layer_id = target.id if target else None
        subscriber = Subscriber(
            email=email,
            name=name,
            status=status,
            layer_id=layer_id,
            layer_entered_at=now if layer_id else None,
            attributes={},
            tags=tags or [],
            created_at=now,
            confirmed_at=now if status == "active" else None,
        )
        session.add(subscriber)
        await session.flush()
        if target is not None and status == "active":
            await record_entries(session, [(subscriber.id, target)], "test: placed", now)
        return subscriber.id


@dataclass
class Browser:
    """A test client that keeps the admin session cookie and the page's CSRF token."""

    client: TestClient
    cookie: str = ""
    csrf: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"responder_admin={self.cookie}"}

    async def get(self, path: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        resp = await self.client.get(path, headers=self.headers, allow_redirects=False, **kwargs)
        if resp.content_type == "text/html":
            found = CSRF_FIELD.search(await resp.text())
            if found:
                self.csrf = found.group(1)
        return resp

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        body = {**data, "csrf": self.csrf} if csrf else data
        return await self.client.post(
            path, data=body, headers={**self.headers, **(headers or {})}, allow_redirects=False
        )


async def signed_in(rt: Runtime, client: TestClient, username: str = "ada") -> Browser:
    await create_user(rt, username, PASSWORD)
    form = await client.get("/admin/login")
    login_csrf = CSRF_FIELD.search(await form.text()).group(1)  # type: ignore[union-attr]
    resp = await client.post(
        "/admin/login",
        allow_redirects=False,
        data={"username": username, "password": PASSWORD, "csrf": login_csrf},
        headers={"Cookie": f"responder_login_csrf={login_csrf}"},
    )
    assert resp.status == 303, await resp.text()
    browser = Browser(client, cookie=resp.cookies["responder_admin"].value)
    await browser.get("/admin/")
    return browser
