"""HTTP plumbing shared by every route: typed app state, errors mapped to status codes in one
middleware (JSON for the API and JSON callers, a page a person can act on otherwise), the
client's address, and the same-origin check of state-changing browser requests."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import ResponderError, ValidationError
from ..runtime import Runtime
from .pages import render_page

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def wants_json(request: web.Request) -> bool:
    return (
        request.path.startswith("/api/")
        or request.content_type == "application/json"
        or "application/json" in request.headers.get("Accept", "")
    )


def error_response(
    request: web.Request, status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    if wants_json(request):
        body = {"error": {"code": code, "message": message, "field": field}}
        return web.json_response(body, status=status)
    rt = request.app[RUNTIME]
    title = {
        400: "Something is wrong with that",
        401: "Sign in needed",
        403: "Not allowed",
        404: "Link not valid",
        408: "That took too long",
        413: "Too much data",
        429: "Too many requests",
        503: "Busy right now",
    }.get(status, "Something went wrong")
    return render_page("message.html", status=status, title=title, message=message, sender_name=rt.settings.from_name)


BUSY_RETRY_AFTER_S = 5
# What a database says when it is locked, full or away, rather than that the request was wrong.
_UNAVAILABLE = ("locked", "lock timeout", "disk", "full", "no space", "connection", "closed", "timeout")


def database_unavailable(exc: BaseException) -> bool:
    """A locked, full or unreachable database (so: try again), not a bug or bad input."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    # e.g. asyncpg's lock_timeout or disk-full errors
    if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError):
        return any(word in str(exc.orig).lower() for word in _UNAVAILABLE)
    return False


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The response for an error a handler raised: ``ResponderError`` by its status, aiohttp's
    4xx/5xx exceptions by theirs, anything else a logged 500."""
    if isinstance(exc, ResponderError):
        response = error_response(request, exc.status, exc.code, exc.message, exc.field)
        retry_after_s = getattr(exc, "retry_after_s", None)  # 429 and 503 say when to come back
        if retry_after_s is not None:
            response.headers["Retry-After"] = str(retry_after_s)
        return response
    if database_unavailable(exc):
        log.warning("database busy or unavailable on %s %s: %s", request.method, request.path, str(exc)[:300])
        response = error_response(request, 503, "busy", "the database is busy right now; please try again shortly")
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(
            request,
            413,
            "too_large",
            f"request body is larger than {request.app[RUNTIME].settings.max_body_bytes} bytes",
        )
    if isinstance(exc, web.HTTPException):
        return error_response(request, exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(request, 500, "internal", "internal error; it has been logged")


HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def secure_headers(response: web.StreamResponse) -> None:
    headers = response.headers
    if "X-Content-Type-Options" not in headers:
        headers["X-Content-Type-Options"] = "nosniff"
    if "Referrer-Policy" not in headers:
        headers["Referrer-Policy"] = "no-referrer"
    if "Content-Security-Policy" not in headers and headers.get("Content-Type", "").startswith("text/html"):
        headers["Content-Security-Policy"] = HTML_CSP


def no_json_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them: a value
    stored from them would not be JSON either, and PostgreSQL refuses it."""
    raise ValueError(f"{name} is not a JSON number")


async def read_input(request: web.Request) -> dict[str, Any]:
    """A form or JSON body as a flat dict; the size is capped by the app's ``client_max_size``."""
    if request.content_type == "application/json":
        try:
            data = json.loads(await request.read() or b"{}", parse_constant=no_json_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the parser's depth
            raise ValidationError("body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ValidationError("body must be a JSON object")
        return data
    try:
        form = await request.post()
    except ValueError as exc:  # e.g. multipart/form-data without a boundary
        raise ValidationError(f"body is not a valid form: {exc}") from exc
    return {key: value for key, value in form.items() if isinstance(value, str)}


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: web.Request) -> bool:
    """False when the browser tells us the request came from another site (a page sending
    ``Referrer-Policy: no-referrer`` makes its own form posts say ``Origin: null``: pages with
    such forms send ``same-origin``)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser form or fetch (curl, tests); the token check still applies
    allowed = {origin_of(runtime(request).settings.base_url), f"{request.scheme}://{request.host}".lower()}
    return origin.lower() in allowed


def client_ip(request: web.Request) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted reverse proxy, the
    right-most address in X-Forwarded-For that is not itself a trusted proxy (the left part
    of that header is whatever the client chose to send)."""
    return peer_address(request, request.app[RUNTIME].settings.trusted_proxies)


def peer_address(request: web.BaseRequest, trusted: tuple[Any, ...]) -> str | None:
    """``client_ip`` for a request that has not been routed (no ``request.app`` yet)."""
    peer = request.remote
    if not trusted or not within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not within(hop, trusted):
            return hop if within(hop, ()) is not None else peer
    return peer


def within(address: str | None, networks: tuple[Any, ...]) -> bool | None:
    """Whether ``address`` is in one of ``networks``; None if it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    return any(ip in network for network in networks)
