"""Enquiries: the follow-up queue oldest first; answer one (mailed to the customer) or close it.
Calls the same service functions as the API (``responder.enquiry_admin``)."""

from __future__ import annotations

from aiohttp import web

from ....audience import enquiry_admin
from ....errors import ValidationError
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Enquiries", "/admin/enquiries", 60)
routes = web.RouteTableDef()


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


async def _queue(
    request: web.Request, *, status: int = 200, error: str | None = None, failed: int = 0, draft: str = ""
) -> web.Response:
    state = request.query.get("state", "open")
    if state not in enquiry_admin.STATES:
        state = "open"
    rows = await enquiry_admin.queue(runtime(request), state, 200)
    return render(
        request,
        "enquiries.html",
        status=status,
        state=state,
        enquiries=rows,
        states=enquiry_admin.STATES,
        error=error,
        failed=failed,
        draft=draft,
        notice=request.query.get("notice"),
        now=runtime(request).clock.now(),
    )


@routes.get("/enquiries")
async def index(request: web.Request) -> web.Response:
    return await _queue(request)


@routes.post("/enquiries/{id:\\d+}/answer")
async def answer(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        await enquiry_admin.answer(runtime(request), _id(request), form.get("answer"))
    except ValidationError as exc:
        text = form.get("answer")
        return await _queue(
            request, status=400, error=exc.message, failed=_id(request), draft=text if isinstance(text, str) else ""
        )
    return see_other(f"/admin/enquiries?notice=answered-{_id(request)}")


@routes.post("/enquiries/{id:\\d+}/close")
async def close(request: web.Request) -> web.Response:
    await enquiry_admin.close(runtime(request), _id(request))
    return see_other(f"/admin/enquiries?notice=closed-{_id(request)}")
