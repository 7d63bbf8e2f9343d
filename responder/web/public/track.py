"""The open pixel and the click redirect: the pixel always answers, a click redirects only to
the target its token signs, and both are queued for the tracking writer with the facts the
human-or-machine verdict needs (a click on the trap link answers 404 and is queued as a trap hit;
a prefetch or preview says so in a purpose header). The verdict itself is the tracking writer's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import BaseRequest
from aiohttp.web_log import AccessLogger
from sqlalchemy import select
from yarl import URL

from ...core.machine import Request, is_prefetch
from ...errors import InvalidToken
from ...models import Message
from ...runtime import Runtime
from ...tracking.batch import Tracker
from ...tracking.links import TRAP, safe_target
from ...tracking.writer import hit_of
from ..http import RUNTIME, peer_address, runtime
from .common import PUBLIC, public

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# The pixel's own headers: its type, and no caching anywhere (``no-store`` is what HTTP/1.1
# caches and mail image proxies heed). The page headers (nosniff, Referrer-Policy, HTTP/1.0's
# Pragma and Expires) do nothing for a GIF of fixed bytes and cost wrk-measured throughput.
PIXEL_HEADERS = {"Content-Type": "image/gif", "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0"}
PIXEL_METHODS = ("GET", "HEAD")  # what the /o/{token} route answers
RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

routes = web.RouteTableDef()


# Paths whose next segment is a signed token: confirm, unsubscribe and preference tokens open
# someone's subscription (export, erase), so the log keeps only their first characters.
TOKEN_PATHS = ("/o/", "/c/", "/confirm/", "/unsubscribe/", "/preferences/", "/keep/", "/v/", "/r/")
_TOKEN_IN_PATH = re.compile(r"^(/(?:o|c|confirm|unsubscribe|preferences|keep|v|r)/[^/?]{8})[^/?]+")
LOGGED_TOKEN_CHARS = 8


def logged_path(path: str) -> str:
    """The request target as the access log shows it: a token cut to its first 8 characters
    (``…`` marks the cut), the query string dropped when a token is in the path."""
    cut = _TOKEN_IN_PATH.sub(r"\1…", path, count=1)
    return cut.split("?", 1)[0] if cut != path else path


class QuietTrackingLog(AccessLogger):
    """The access log without opens and clicks: each is already an event in the database, and
    formatting a log line costs about as much as answering the pixel. Tokens in paths are cut
    to their first characters (``logged_path``)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.raw_path  # as sent; an absolute-form target is decoded to its path
        if not path.startswith("/"):
            path = request.path
        if path.startswith(("/o/", "/c/")) and response.status < 500:
            return
        if path.startswith(TOKEN_PATHS):
            shown = logged_path(path)
            if shown != path:
                request = request.clone(rel_url=URL.build(path=shown, encoded=True))
        super().log(request, response, time)


def agent_of(request: web.BaseRequest) -> str:
    """The User-Agent as text the database can store: aiohttp keeps undecodable header bytes
    as lone surrogates, which no UTF-8 column accepts (and one would stall the whole batch)."""
    agent = (request.headers.get("User-Agent") or "")[:512]
    if agent.isascii():
        return agent
    return agent.encode("utf-8", "replace").decode("utf-8")


def prefetching(request: web.BaseRequest) -> bool:
    """A browser prefetching or previewing, not a person: ``Sec-Purpose`` (Chromium's speculation
    rules), ``Purpose`` (older Chromium), ``X-Purpose`` (Safari) or ``X-Moz`` (Firefox). Most
    requests carry none of them: four header look-ups, well under a microsecond."""
    headers = request.headers
    purpose = headers.get("Sec-Purpose") or headers.get("Purpose") or headers.get("X-Purpose") or headers.get("X-Moz")
    return purpose is not None and is_prefetch(purpose)


def _request_facts(rt: Runtime, request: web.BaseRequest, kind: str, *, trap: bool = False) -> Request:
    """What the verdict needs to know of a request."""
    return Request(
        kind=kind,
        method=request.method,
        user_agent=agent_of(request),
        ip=peer_address(request, rt.settings.trusted_proxies),
        at=rt.clock.now(),
        trap=trap,
        prefetch=prefetching(request),
    )


def answer_open(rt: Runtime, tracker: Tracker, request: web.BaseRequest, token: str) -> web.Response:
    """The pixel: always the GIF; an open queued when the token is ours. Works before routing,
    and queues its hit as the tuple the writer takes (``writer.hit_of``, built in place)."""
    try:
        message_pk = rt.tokens.read_open(token)
    except InvalidToken:
        pass
    else:
        tracker.offer(
            (
                message_pk,
                "open",
                request.method,
                agent_of(request),
                peer_address(request, rt.settings.trusted_proxies),
                rt.clock.micros(),
                False,
                prefetching(request),
                None,
            )
        )
    return web.Response(body=GIF, headers=PIXEL_HEADERS)


@routes.get("/o/{token}")
async def open_pixel(request: web.Request) -> web.Response:
    return answer_open(runtime(request), public(request).tracker, request, request.match_info["token"])


def pixels_first(app: web.Application, handler: RequestHandler) -> RequestHandler:
    """The server's request handler with open pixels answered before routing and middleware.

    The pixel is most of a sender's traffic (every mail opened, images reloaded) and the one
    answer that never varies, so it skips the router and the edge middleware: it answers with
    ``PIXEL_HEADERS`` only, without the page headers the middleware adds to what the route
    answers (a request the fast path does not take, such as an absolute-form target). What the
    ``/o/{token}`` route would not match (an empty token, a further slash, another method) goes
    through the app as before.
    """
    rt, tracker = app[RUNTIME], app[PUBLIC].tracker

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path  # as sent: decoding it (``path``) costs more than the token check
        if raw.startswith("/o/") and request.method in PIXEL_METHODS:
            token = raw[3:].partition("?")[0]
            if "%" in token or "#" in token:  # the route would see it decoded, and no fragment
                token = request.path[3:]
            if token and "/" not in token:
                return answer_open(rt, tracker, request, token)
        return await handler(request)

    return handle


@routes.get("/c/{token}")
async def click(request: web.Request) -> web.Response:
    rt, state = runtime(request), public(request)
    message_pk, target = rt.tokens.read_click(request.match_info["token"])
    is_trap = target == TRAP
    if not is_trap and not safe_target(target):
        raise InvalidToken("this link is not valid")
    try:
        async with rt.db.read() as session:
            exists = (await session.execute(select(Message.id).where(Message.id == message_pk))).first() is not None
    except Exception:  # the token is ours and signed: a database blip must not strand a reader
        exists = True
    if not exists:
        raise InvalidToken("this link is not valid")
    facts = _request_facts(rt, request, "click", trap=is_trap)
    state.tracker.offer(hit_of(message_pk, facts, url=None if is_trap else target))
    if is_trap:
        raise InvalidToken("this link is not valid")
    raise web.HTTPFound(target)
