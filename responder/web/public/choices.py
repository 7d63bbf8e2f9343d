"""Unsubscribe page and preference center: the GET pages only show; every change is a POST.

RFC 8058: a mail client POSTs ``List-Unsubscribe=One-Click`` to the List-Unsubscribe URL; that
unsubscribes from everything at once and answers 200 (no redirect), however often it comes.
"""

from __future__ import annotations

import json

from aiohttp import web

from ...audience import preferences
from ...audience.subscribers import subscriber_for_token
from ...errors import Forbidden, InvalidToken, ValidationError
from ...models import Layer, Subscriber
from ..http import client_ip, runtime, same_origin
from ..pages import render_page
from .common import read_body, with_deadline

routes = web.RouteTableDef()
DONE = {
    "all": "{email} will get no more mail from {sender}. Sorry to see you go.",
    "pause": "Paused: no mail to {email} for 30 days.",
    "fewer": "Done: {email} will get fewer mails.",
    "down": "Done: {email} now gets the basics only.",
}


async def _page(request: web.Request, *, done: str = "") -> web.Response:
    rt = runtime(request)
    token = request.match_info["token"]
    subscriber = await subscriber_for_token(rt, token)
    async with rt.db.read() as session:
        layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    return render_page(
        "unsubscribe.html",
        title="Unsubscribe" if not done else "Done",
        email=subscriber.email,
        sub_status=subscriber.status,
        done=done,
        can_move_down=bool(layer and layer.position > 1),
        action=request.path,
        preferences=f"/preferences/{token}",
        sender_name=rt.settings.from_name,
    )


@routes.get("/unsubscribe/{token}")
async def unsubscribe_page(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/unsubscribe/{token}")
async def unsubscribe_post(request: web.Request) -> web.Response:
    rt = runtime(request)
    rt.tokens.read_unsubscribe(request.match_info["token"])  # a forged link is 404 before all else
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data", "application/json"):
        data = await read_body(request)
    else:  # some mail clients post the one-click body with another type: the URL decides
        await request.read()
        data = {"List-Unsubscribe": "One-Click"}
    one_click = data.get("List-Unsubscribe") == "One-Click"
    choice = "all" if one_click or not data.get("choice") else str(data["choice"])
    subscriber = await with_deadline(
        request,
        preferences.choose(
            rt, request.match_info["token"], choice, client_ip(request), request.headers.get("User-Agent")
        ),
    )
    if one_click:
        return web.Response(text="unsubscribed\n", content_type="text/plain")
    return await _page(request, done=DONE[choice].format(email=subscriber.email, sender=rt.settings.from_name))


async def _preferences_page(request: web.Request, notice: str = "") -> web.Response:
    rt = runtime(request)
    token = request.match_info["token"]
    subscriber = await subscriber_for_token(rt, token)
    async with rt.db.read() as session:
        layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    return render_page(
        "preferences.html",
        title="Your preferences",
        notice=notice,
        email=subscriber.email,
        sub_name=subscriber.name,
        frequency=subscriber.frequency,
        sub_status=subscriber.status,
        layer=layer.label if layer else None,
        paused_until=subscriber.paused_until.date().isoformat() if subscriber.paused_until else None,
        action=f"/preferences/{token}",
        privacy_action=f"/preferences/{token}/privacy",
        unsubscribe_action=f"/unsubscribe/{token}",
        sender_name=rt.settings.from_name,
    )


@routes.get("/preferences/{token}")
async def preferences_page(request: web.Request) -> web.Response:
    return await _preferences_page(request)


@routes.post("/preferences/{token}")
async def preferences_post(request: web.Request) -> web.Response:
    data = await read_body(request)
    await with_deadline(
        request,
        preferences.update_preferences(
            runtime(request), request.match_info["token"], name=data.get("name"), frequency=data.get("frequency")
        ),
    )
    return await _preferences_page(request, notice="Saved.")


@routes.post("/preferences/{token}/privacy")
async def privacy_request(request: web.Request) -> web.Response:
    """Mail the link that opens download and erasure: the preference link alone does neither."""
    rt = runtime(request)
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    await read_body(request)
    email = await with_deadline(request, preferences.request_privacy_link(rt, request.match_info["token"]))
    return render_page(
        "message.html",
        title="Check your mail",
        message=f"We have mailed a link to {email}. It opens your data for download or erasure and works for an hour.",
        sender_name=rt.settings.from_name,
    )


async def _privacy_subscriber(request: web.Request) -> Subscriber:
    rt = runtime(request)
    subscriber_id = rt.tokens.read_privacy(request.match_info["token"])
    async with rt.db.read() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.email.endswith("@erased.invalid"):
        raise InvalidToken("this link is not valid")
    return subscriber


@routes.get("/privacy/{token}")
async def privacy_page(request: web.Request) -> web.Response:
    """Shows the buttons only: a mail scanner opening the link downloads and erases nothing."""
    subscriber = await _privacy_subscriber(request)
    token = request.match_info["token"]
    return render_page(
        "privacy.html",
        title="Your data",
        email=subscriber.email,
        export_action=f"/privacy/{token}/export",
        erase_action=f"/privacy/{token}/erase",
        sender_name=runtime(request).settings.from_name,
    )


@routes.post("/privacy/{token}/export")
async def export(request: web.Request) -> web.Response:
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    subscriber = await _privacy_subscriber(request)
    body = await preferences.export(runtime(request), subscriber.id)
    return web.json_response(
        body,
        headers={"Content-Disposition": 'attachment; filename="my-data.json"', "Cache-Control": "no-store"},
        dumps=_dumps,
    )


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@routes.post("/privacy/{token}/erase")
async def erase(request: web.Request) -> web.Response:
    rt = runtime(request)
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    subscriber = await _privacy_subscriber(request)
    data = await read_body(request)
    if data.get("confirm") != "yes":
        raise ValidationError("tick the box to confirm the erasure", field="confirm")
    await with_deadline(request, preferences.erase(rt, subscriber.id))
    return render_page(
        "message.html",
        title="Erased",
        message="We have erased your data. This address will not be mailed again.",
        sender_name=rt.settings.from_name,
    )
