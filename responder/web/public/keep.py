"""The re-permission mail's link: ``GET /keep/{token}`` shows a page with one button, whose
POST keeps the subscriber (a human ``keep`` event, see ``audience.subscribers.keep``). Opening
the link never keeps anyone: mail scanners and link previews fetch every link in a mail."""

from __future__ import annotations

from aiohttp import web

from ...audience.subscribers import keep
from ...errors import Forbidden
from ..http import client_ip, runtime, same_origin
from ..pages import render_page
from .common import with_deadline

routes = web.RouteTableDef()
KEEP_PAGES = {
    "kept": ("Thank you", "We'll keep writing to you. You can change what you receive from the bottom of any email."),
    "revived": ("Welcome back", "We'll write to you again, carrying on where we left off."),
    "gone": ("Not subscribed", "This address has left the list. Subscribe again from our form if you want our emails."),
}


def _headers(response: web.Response) -> web.Response:
    response.headers["Referrer-Policy"] = "same-origin"  # the button's POST carries this origin
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@routes.get("/keep/{token}")
async def keep_page(request: web.Request) -> web.Response:
    rt = runtime(request)
    rt.tokens.read_keep(request.match_info["token"])  # a forged link is 404 before all else
    return _headers(
        render_page(
            "keep.html", title="Keep receiving our emails?", action=request.path, sender_name=rt.settings.from_name
        )
    )


@routes.post("/keep/{token}")
async def keep_post(request: web.Request) -> web.Response:
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    rt = runtime(request)
    await request.read()
    outcome = await with_deadline(
        request, keep(rt, request.match_info["token"], client_ip(request), request.headers.get("User-Agent"))
    )
    title, message = KEEP_PAGES[outcome]
    return _headers(render_page("message.html", title=title, message=message, sender_name=rt.settings.from_name))
