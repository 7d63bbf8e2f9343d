"""Public endpoints of the opt-in: hosted form, subscribe, proof-of-work challenge, confirm (a
page whose button confirms: opening the link never does, as mail scanners open every link), a
fresh link for an expired confirmation, a sent mail viewed online, and the referral link
(``/r/{token}``: sets the referral cookie and leads to the form)."""

from __future__ import annotations

import secrets

from aiohttp import web
from sqlalchemy import select

from ...audience.subscribers import (
    SubscribeRequest,
    confirm,
    confirmation_page_state,
    renew_confirmation,
    subscribe,
)
from ...delivery.build import render_message
from ...errors import Forbidden, InvalidToken, TokenRejected
from ...funnel.referrals import REF_COOKIE, REF_COOKIE_MAX_AGE_S, read_referral
from ...models import Message
from ...validation import clean_form_id
from ..http import client_ip, runtime, same_origin, wants_json
from ..pages import render_page
from .common import preflight, public, with_deadline
from .forms import HONEYPOT, snippet

routes = web.RouteTableDef()
routes.options("/subscribe")(preflight)


def _page(request: web.Request, title: str, message: str, status: int = 200) -> web.Response:
    return render_page(
        "message.html", status=status, title=title, message=message, sender_name=runtime(request).settings.from_name
    )


@routes.get("/subscribe/{form}")
async def subscribe_form(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = public(request).forms.get(clean_form_id(request.match_info["form"]))
    nonce = secrets.token_urlsafe(12)
    response = render_page(
        "subscribe_form.html",
        title=form.title or f"Subscribe to {rt.settings.from_name}",
        intro=form.intro,
        snippet=snippet(form, rt.settings.base_url, nonce=nonce),
        sender_name=rt.settings.from_name,
    )
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        f"script-src 'nonce-{nonce}'; connect-src 'self' {rt.settings.base_url}; "
        f"form-action 'self' {rt.settings.base_url}; frame-ancestors 'none'; base-uri 'none'"
    )
    # The post names this page (Referer) for the consent record, and carries this origin.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@routes.get("/subscribe/{form}/challenge")
async def pow_challenge(request: web.Request) -> web.Response:
    state = public(request)
    form = state.forms.get(clean_form_id(request.match_info["form"]))
    return web.json_response(
        {"challenge": state.pow.challenge(form.id), "bits": form.pow_bits}, headers={"Cache-Control": "no-store"}
    )


@routes.post("/subscribe")
async def subscribe_post(request: web.Request) -> web.StreamResponse:
    rt, state = runtime(request), public(request)
    data, form, redirect = await state.form_post(request)
    data.setdefault("ref", request.cookies.get(REF_COOKIE, ""))
    if form.pow_bits:
        state.pow.verify(form.id, form.pow_bits, data.get("pow_challenge"), data.get("pow_nonce"))
    if not data.get(HONEYPOT):  # a bot filled the hidden field: same answer, nothing stored
        req = SubscribeRequest.from_input(
            data,
            client_ip(request),
            request.headers.get("User-Agent"),
            referer=request.headers.get("Referer"),
            allowed_attributes=form.attributes,
            default_consent=form.consent,
            default_version=form.consent_version,
        )
        state.limit_address(request, req.email)
        await with_deadline(request, subscribe(rt, req))
    # The same answer whether the address is new, pending or already active: no enumeration.
    if wants_json(request):
        return web.json_response(
            {"status": "pending", "message": "Check your inbox to confirm your subscription."}, status=202
        )
    raise web.HTTPSeeOther(redirect or f"/subscribe/{form.id}/thanks")


@routes.get("/subscribe/{form}/thanks")
async def subscribe_thanks(request: web.Request) -> web.Response:
    return _page(
        request,
        "Almost there",
        "We have sent you an email. Open the link in it and press the button on the page to confirm.",
    )


CONFIRM_PAGES = {
    "confirmed": ("Welcome aboard", "Thank you for confirming. Your first email is on its way."),
    "already": ("Already confirmed", "Your subscription is confirmed. There is nothing more to do."),
    "unsubscribed": (
        "Not subscribed",
        "This address has left the list. Subscribe again from our form if you want our emails.",
    ),
}


def _expired_page(request: web.Request) -> web.Response:
    rt = runtime(request)
    return render_page(
        "confirm_expired.html",
        status=410,
        title="This link has expired",
        days=max(1, rt.settings.confirm_max_age_s // 86400),
        action=f"/confirm/{request.match_info['token']}/renew",
        sender_name=rt.settings.from_name,
    )


@routes.get("/confirm/{token}")
async def confirm_page(request: web.Request) -> web.Response:
    """The page the confirmation mail's link opens: a button that POSTs here. Only looks: mail
    scanners, link previews and prefetches fetch every link in a mail (GET or HEAD)."""
    rt = runtime(request)
    try:
        state = await confirmation_page_state(rt, request.match_info["token"])
    except TokenRejected as exc:
        if exc.expired:
            return _expired_page(request)
        raise
    if state == "pending":
        response = render_page(
            "confirm.html", title="Confirm your subscription", action=request.path, sender_name=rt.settings.from_name
        )
    else:
        response = _page(request, *CONFIRM_PAGES[state])
    # The button's POST must carry this origin (no-referrer would make it "Origin: null").
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@routes.post("/confirm/{token}")
async def confirm_post(request: web.Request) -> web.Response:
    """The page's button: confirms, once; the consent record holds this request's address and agent."""
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    rt = runtime(request)
    await request.read()
    try:
        outcome = await with_deadline(
            request,
            confirm(rt, request.match_info["token"], client_ip(request), request.headers.get("User-Agent")),
        )
    except TokenRejected as exc:
        if exc.expired:
            return _expired_page(request)
        raise
    return _page(request, *CONFIRM_PAGES[outcome])


@routes.post("/confirm/{token}/renew")
async def confirm_renew(request: web.Request) -> web.Response:
    state = public(request)
    state.limit_ip(request)
    await request.read()
    await with_deadline(request, renew_confirmation(runtime(request), request.match_info["token"]))
    return _page(
        request, "Check your inbox", "If this address is still waiting for confirmation, a new link is on its way."
    )


@routes.get("/v/{token}")
async def view_online(request: web.Request) -> web.Response:
    rt = runtime(request)
    message_pk = rt.tokens.read_view(request.match_info["token"])
    async with rt.db.read() as session:
        message = (
            await session.execute(
                select(Message).where(Message.id == message_pk, Message.state.in_(("sending", "sent")))
            )
        ).scalar_one_or_none()
        if message is None:
            raise InvalidToken("this mail cannot be shown")
        rendered = (await render_message(rt, session, message, tracked=False)).rendered
    return web.Response(
        text=rendered.html,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src *"},
    )


@routes.get("/r/{token}")
async def referral_link(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    token = request.match_info["token"]
    read_referral(rt, token)
    response = web.HTTPSeeOther("/subscribe/default")
    response.set_cookie(
        REF_COOKIE, token, max_age=REF_COOKIE_MAX_AGE_S, httponly=True, samesite="Lax", secure=request.secure
    )
    raise response
