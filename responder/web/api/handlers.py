"""Admin API routes. Each handler validates input, calls a service function, returns JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from ...audience.subscribers import consent_json, consent_records
from ...dbutil import get_or_404
from ...errors import Forbidden, NotFound, Unauthorized, ValidationError
from ...funnel.events import API_EVENT_TYPES, record_event
from ...funnel.flow import open_stays
from ...funnel.holds import hold_for_reply
from ...models import Enrollment, Event, Layer, LayerHistory, Subscriber
from ...validation import clean_email, parse_id
from ..http import read_input, runtime
from .openapi import document
from .tokens import scope_of

PREFIX = "/api/v1"
routes = web.RouteTableDef()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def authorize(request: web.Request) -> None:
    """Bearer tokens for /api/v1/: the bootstrap admin token or a named token; read scope may
    only read. Called for every request under the prefix by the app's middleware."""
    if request.path == PREFIX + "/openapi.json":
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    scope = await scope_of(runtime(request), given.strip()) if (scheme.lower() == "bearer" and given.strip()) else None
    if scope is None:
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    if request.method not in SAFE_METHODS and scope != "write":
        raise Forbidden("this token has read scope; a write-scope token is needed")


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def layer_json(layer: Layer, subscribers: int) -> dict[str, Any]:
    return {
        "id": layer.id,
        "position": layer.position,
        "name": layer.name,
        "label": layer.label,
        "description": layer.description,
        "rule": layer.rule,
        "subscribers": subscribers,
    }


@routes.get(PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(runtime(request).settings.base_url))


@routes.get(PREFIX + "/layers")
async def list_layers(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        counts = await open_stays(session)
        layers = (
            await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))
        ).scalars()
        return web.json_response({"layers": [layer_json(layer, counts.get(layer.id, 0)) for layer in layers]})


def subscriber_json(subscriber: Subscriber, layer: Layer | None) -> dict[str, Any]:
    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "name": subscriber.name,
        "status": subscriber.status,
        "layer": {"position": layer.position, "name": layer.name, "label": layer.label} if layer else None,
        "attributes": subscriber.attributes,
        "tags": subscriber.tags,
        "created_at": iso(subscriber.created_at),
        "confirmed_at": iso(subscriber.confirmed_at),
        "unsubscribed_at": iso(subscriber.unsubscribed_at),
    }


def history_json(h: LayerHistory) -> dict[str, Any]:
    """A layer history row: positions and names are the layers' when it happened."""
    return {
        "id": h.id,
        "subscriber_id": h.subscriber_id,
        "kind": h.kind,
        "from_layer": h.from_position,
        "to_layer": h.to_position,
        "from_layer_id": h.from_layer_id,
        "to_layer_id": h.to_layer_id,
        "from_name": h.from_name,
        "to_name": h.to_name,
        "reason": h.reason,
        "event_ids": h.event_ids,
        "at": iso(h.created_at),
    }


def _path_id(request: web.Request) -> int:
    value = parse_id(request.match_info["id"])
    if value is None:
        raise NotFound("no such subscriber")
    return value


@routes.get(PREFIX + "/subscribers/{id}")
async def get_subscriber(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        subscriber = await get_or_404(session, Subscriber, _path_id(request), "subscriber")
        layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
        history = (
            await session.execute(
                select(LayerHistory).where(LayerHistory.subscriber_id == subscriber.id).order_by(LayerHistory.id)
            )
        ).scalars()
        enrollments = (
            await session.execute(
                select(Enrollment).where(Enrollment.subscriber_id == subscriber.id).order_by(Enrollment.id)
            )
        ).scalars()
        body = subscriber_json(subscriber, layer)
        body["layer_history"] = [history_json(h) for h in history]
        body["consent"] = [consent_json(record) for record in await consent_records(session, subscriber.id)]
        body["enrollments"] = [
            {"sequence_id": e.sequence_id, "state": e.state, "next_position": e.next_position, "due_at": iso(e.due_at)}
            for e in enrollments
        ]
        return web.json_response(body)


@routes.post(PREFIX + "/events")
async def post_event(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    email = clean_email(data.get("email"))
    type_ = data.get("type")
    if type_ not in API_EVENT_TYPES:
        raise ValidationError(f"type must be one of {', '.join(API_EVENT_TYPES)}", field="type")
    extra = data.get("data", {})
    if not isinstance(extra, dict) or len(str(extra)) > 4096:
        raise ValidationError("data must be a JSON object under 4 KB", field="data")
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = (await session.execute(select(Subscriber).where(Subscriber.email == email))).scalar_one_or_none()
        if subscriber is None:
            raise NotFound(f"no subscriber with address {email}")
        recorded = await record_event(session, subscriber, type_, now, data=extra)
        if type_ == "reply":  # a conversation started elsewhere (a help desk): their mail waits
            await hold_for_reply(session, subscriber, now, rt.settings.reply_hold_s)
        event: Event = recorded.event
        body = {
            "event": {"id": event.id, "type": event.type, "at": iso(event.created_at)},
            "promoted_to": recorded.promoted_to,
        }
    # A move up, or a purchase, enquiry or referral that started a triggered sequence: its first
    # step goes now, not at the next poll.
    rt.wake_scheduler()
    return web.json_response(body, status=201)
