"""Webhooks: every endpoint with its deliveries counted by state and its last failure, the newest
deliveries, adding an endpoint (its signing secret shown once) and removing one. Calls the same
service functions as the API (``funnel.webhooks``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ....errors import ValidationError
from ....funnel.webhooks import WEBHOOK_EVENTS, create_webhook, delete_webhook, overview
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Webhooks", "/admin/webhooks", 80)
routes = web.RouteTableDef()


async def _page(
    request: web.Request, *, status: int = 200, error: str | None = None, created: Any = None, form: Any = None
) -> web.Response:
    async with runtime(request).db.read() as session:
        view = await overview(session)
    return render(
        request,
        "webhooks.html",
        status=status,
        error=error,
        created=created,
        events=WEBHOOK_EVENTS,
        form=form or {"url": "", "events": list(WEBHOOK_EVENTS)},
        notice=request.query.get("notice"),
        **view,
    )


@routes.get("/webhooks")
async def index(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/webhooks")
async def add(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    data = {"url": str(form.get("url", "")), "events": [str(e) for e in form.getall("events", [])]}
    try:
        async with rt.db.transaction() as session:
            webhook = await create_webhook(session, data, rt.clock.now())
            created = {"id": webhook.id, "url": webhook.url, "secret": webhook.secret}
    except ValidationError as exc:
        return await _page(request, status=exc.status, error=exc.message, form=data)
    # The secret is shown on this answer only (the receiver verifies signatures with it).
    return await _page(request, status=201, created=created)


@routes.post("/webhooks/{id:\\d+}/remove")
async def remove(request: web.Request) -> web.Response:
    rt = runtime(request)
    raw = request.match_info["id"]
    async with rt.db.transaction() as session:
        await delete_webhook(session, int(raw) if len(raw) < 10 else 0)
    return see_other("/admin/webhooks?notice=removed")
