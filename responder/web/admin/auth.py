"""Signing in to the admin UI, and the guards every admin request passes.

- Cross-origin refusal: a state-changing request whose ``Sec-Fetch-Site`` is not
  ``same-origin``/``none``, or whose ``Origin`` is not this server, is refused with 403.
- Session: an HttpOnly, SameSite=Strict cookie (Secure when the base URL is https) naming a
  server-side session; pages without one redirect to the login form.
- CSRF: every state-changing request carries the session's synchronizer token, as the form
  field ``csrf``, the ``X-CSRF-Token`` header, or (multipart uploads) the ``csrf`` query
  parameter. The login form uses a double-submit cookie, since it has no session yet.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import BodyPartReader, MultipartReader, web

from ...errors import Forbidden
from ..http import Handler, runtime, same_origin
from .render import SIGNED_IN, render
from .throttle import SignInThrottle
from .users import current, sign_in, sign_out

COOKIE = "responder_admin"
LOGIN_COOKIE = "responder_login_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = ("/admin/login", "/admin/static/")

routes = web.RouteTableDef()
THROTTLE = web.AppKey("sign_in_throttle", SignInThrottle)


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _cookie_options(request: web.Request) -> dict[str, object]:
    secure = runtime(request).settings.base_url.startswith("https://")
    return {"httponly": True, "samesite": "Strict", "secure": secure, "path": "/admin"}


# A multipart form (an upload) whose first field was the token: the reader, past that field,
# for the handler to go on with (``form_parts``).
MULTIPART = web.RequestKey("admin_multipart", MultipartReader)


async def _given_token(request: web.Request) -> str:
    """The token from the ``X-CSRF-Token`` header or the form's ``csrf`` field; an upload form
    sends it as its first field, read here without holding the file in memory. Never from the
    address: a token in a URL stays in the address bar, the history and the logs."""
    header = request.headers.get("X-CSRF-Token")
    if header:
        return header
    if request.content_type == "application/x-www-form-urlencoded":
        value = (await request.post()).get("csrf")
        return value if isinstance(value, str) else ""
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        first = await reader.next()
        request[MULTIPART] = reader
        if isinstance(first, BodyPartReader) and first.name == "csrf":
            return (await first.read(decode=True))[:256].decode("ascii", "replace")
    return ""


async def form_parts(request: web.Request) -> MultipartReader:
    """The rest of an upload form, after its token (see ``_given_token``)."""
    return request.get(MULTIPART) or await request.multipart()


def tokens_match(given: str, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    unsafe = request.method not in SAFE_METHODS
    if unsafe and not same_origin(request):
        raise Forbidden("cross-origin request refused")
    if request.path.startswith(PUBLIC_PATHS):
        return await handler(request)
    cookie = request.cookies.get(COOKIE)
    signed = await current(runtime(request), cookie) if cookie else None
    if signed is None:
        if unsafe:
            raise Forbidden("your session has ended; sign in again")
        return see_other("/admin/login")
    if unsafe and not tokens_match(await _given_token(request), signed.csrf_token):
        raise Forbidden("the form's security token is missing or stale; reload the page")
    request[SIGNED_IN] = signed
    return await handler(request)


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", csrf=token, error=None)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, **_cookie_options(request))  # type: ignore[arg-type]
    return response


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    given = form.get("csrf")
    if not isinstance(given, str) or not tokens_match(given, request.cookies.get(LOGIN_COOKIE, "")):
        raise Forbidden("the login form expired; reload it and try again")
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or len(username) > 64:
        username, password = "", ""
    rt = runtime(request)
    throttle = request.app[THROTTLE]
    wait_s = throttle.wait_s(username, rt.clock.now())
    if wait_s:
        return render(
            request,
            "login.html",
            status=429,
            csrf=given,
            error=f"Too many failed sign-ins; try again in {wait_s // 60 + 1} minutes.",
        )
    cookie = await sign_in(rt, username, password) if password and len(password) <= 1024 else None
    if cookie is None:
        throttle.failed(username, rt.clock.now())
        response = render(request, "login.html", status=401, csrf=given, error="Wrong username or password.")
        return response
    throttle.succeeded(username)
    response = see_other("/admin/")
    options = _cookie_options(request)
    response.set_cookie(COOKIE, cookie, max_age=runtime(request).settings.admin_session_s, **options)  # type: ignore[arg-type]
    response.del_cookie(LOGIN_COOKIE, path="/admin")
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await sign_out(runtime(request), cookie)
    response = see_other("/admin/login")
    response.del_cookie(COOKIE, path="/admin")
    return response
