"""Public endpoints a landing page and a subscriber touch."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from ..delivery.build import render_message
from ..errors import InvalidToken
from ..events import record_event
from ..models import Layer, Message, Subscriber
from ..pages import render_page
from ..subscribers import SubscribeRequest, confirm, subscribe, subscriber_for_token, unsubscribe
from ..tracking.tokens import TokenRejected
from ..validation import clean_form_id
from ..web import client_ip, read_input, runtime

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}
DEFAULT_CONSENT = "I agree to receive emails and can unsubscribe at any time with one click."
HONEYPOT = "hp_website"
# Fetches that are not a person reading: image proxies that prefetch, HEAD probes.
MACHINE_AGENTS = ("GoogleImageProxy", "YahooMailProxy", "bot", "Bot", "python-requests", "curl/")

routes = web.RouteTableDef()


def _page(request: web.Request, title: str, message: str, status: int = 200) -> web.Response:
    return render_page("message.html", status=status, title=title, message=message,
                       sender_name=runtime(request).settings.from_name)


@routes.get("/subscribe/{form}")
async def subscribe_form(request: web.Request) -> web.Response:
    rt = runtime(request)
    form_id = clean_form_id(request.match_info["form"])
    return render_page("subscribe_form.html", title=f"Subscribe to {rt.settings.from_name}",
                       intro="Get our emails: confirm once, unsubscribe any time.",
                       action="/subscribe", form_id=form_id, consent=DEFAULT_CONSENT,
                       sender_name=rt.settings.from_name)


@routes.post("/subscribe")
async def subscribe_post(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    data = await read_input(request)
    is_json = request.content_type == "application/json"
    if not data.get(HONEYPOT):
        req = SubscribeRequest.from_input(data, client_ip(request), request.headers.get("User-Agent"))
        await subscribe(rt, req)
    form_id = clean_form_id(data.get("form"))
    if is_json:
        return web.json_response(
            {"status": "pending", "message": "Check your inbox to confirm your subscription."},
            status=202)
    raise web.HTTPSeeOther(f"/subscribe/{form_id}/thanks")


@routes.get("/subscribe/{form}/thanks")
async def subscribe_thanks(request: web.Request) -> web.Response:
    return _page(request, "Almost there",
                 "We have sent you an email. Click the link in it to confirm your subscription.")


@routes.get("/confirm/{token}")
async def confirm_get(request: web.Request) -> web.Response:
    rt = runtime(request)
    try:
        outcome = await confirm(rt, request.match_info["token"], client_ip(request),
                                request.headers.get("User-Agent"))
    except TokenRejected as exc:
        if exc.expired:
            return _page(request, "This link has expired",
                         "Confirmation links last 7 days. Subscribe again from our form and "
                         "we will send you a fresh one.", status=410)
        raise
    messages = {
        "confirmed": ("Welcome aboard", "Thank you for confirming. Your first email is on its way."),
        "already": ("Already confirmed", "Your subscription was already confirmed."),
        "unsubscribed": ("Not subscribed", "This address has left the list. Subscribe again "
                         "from our form if you want our emails."),
    }
    title, message = messages[outcome]
    return _page(request, title, message)


def _is_machine(request: web.Request) -> bool:
    agent = request.headers.get("User-Agent", "")
    return request.method == "HEAD" or any(marker in agent for marker in MACHINE_AGENTS)


async def _record_tracking(request: web.Request, message_pk: int, type: str,
                           url: str | None = None) -> bool:
    """Record an open or click for a message; False if the message does not exist."""
    rt = runtime(request)
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        message = await session.get(Message, message_pk)
        if message is None:
            return False
        subscriber = await session.get(Subscriber, message.subscriber_id)
        assert subscriber is not None
        recorded = await record_event(
            session, subscriber, type, now, message_id=message.id, url=url,
            ip=client_ip(request), user_agent=(request.headers.get("User-Agent") or "")[:512],
            machine=_is_machine(request),
        )
    if recorded.history is not None:
        rt.wake_scheduler()
    return True


@routes.get("/o/{token}")
async def open_pixel(request: web.Request) -> web.Response:
    rt = runtime(request)
    try:
        message_pk = rt.tokens.read_open(request.match_info["token"])
    except InvalidToken:
        pass
    else:
        await _record_tracking(request, message_pk, "open")
    return web.Response(body=GIF, content_type="image/gif", headers=NO_CACHE)


@routes.get("/c/{token}")
async def click(request: web.Request) -> web.Response:
    rt = runtime(request)
    message_pk, target = rt.tokens.read_click(request.match_info["token"])
    if not target.lower().startswith(("http://", "https://")):
        raise InvalidToken("this link is not valid")
    if not await _record_tracking(request, message_pk, "click", url=target):
        raise InvalidToken("this link is not valid")
    raise web.HTTPFound(target)


@routes.get("/unsubscribe/{token}")
async def unsubscribe_page(request: web.Request) -> web.Response:
    rt = runtime(request)
    subscriber = await subscriber_for_token(rt, request.match_info["token"])
    return render_page("unsubscribe.html", title="Unsubscribe", email=subscriber.email,
                       done=subscriber.status == "unsubscribed", action=request.path,
                       sender_name=rt.settings.from_name)


@routes.post("/unsubscribe/{token}")
async def unsubscribe_post(request: web.Request) -> web.Response:
    # RFC 8058: mail clients POST "List-Unsubscribe=One-Click"; a browser posts the page's form.
    # Either way the token alone decides, so the body is read only to drain it.
    rt = runtime(request)
    await request.read()
    subscriber = await unsubscribe(rt, request.match_info["token"], client_ip(request),
                                   request.headers.get("User-Agent"))
    return render_page("unsubscribe.html", title="Unsubscribed", email=subscriber.email,
                       done=True, action=request.path, sender_name=rt.settings.from_name)


@routes.get("/preferences/{token}")
async def preferences(request: web.Request) -> web.Response:
    rt = runtime(request)
    token = request.match_info["token"]
    subscriber = await subscriber_for_token(rt, token)
    async with rt.db.read() as session:
        layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    return render_page("preferences.html", title="Your preferences", email=subscriber.email,
                       subscriber_status=subscriber.status, layer=layer.label if layer else None,
                       unsubscribe_action=f"/unsubscribe/{token}",
                       sender_name=rt.settings.from_name)


@routes.get("/v/{token}")
async def view_online(request: web.Request) -> web.Response:
    rt = runtime(request)
    message_pk = rt.tokens.read_view(request.match_info["token"])
    async with rt.db.read() as session:
        message = (await session.execute(
            select(Message).where(Message.id == message_pk, Message.state == "sent")
        )).scalar_one_or_none()
        if message is None:
            raise InvalidToken("this mail cannot be shown")
        rendered, _, _ = await render_message(rt, session, message, tracked=False)
    return web.Response(text=rendered.html, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src *"})
