"""Admin API for sending as a whole: its state, and pause and resume; the complaint governor's
rates and held layers, and resuming them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...core.governor import PROVIDERS
from ...delivery.controls import PauseState, pause_state, queue_depth, set_paused
from ...errors import NotFound, ValidationError
from ...funnel import governor
from ...validation import clean_text
from ..http import read_input, runtime
from .openapi import describe, error, json_body

PREFIX = "/api/v1"
routes = web.RouteTableDef()

DELIVERY = {
    "type": "object",
    "required": ["paused", "reason", "since", "queue"],
    "properties": {
        "paused": {"type": "boolean"},
        "reason": {"type": "string"},
        "since": {"type": ["string", "null"]},
        "queue": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "messages in the outbox by state",
        },
    },
}


async def _body(request: web.Request, state: PauseState) -> dict[str, Any]:
    queue = await queue_depth(runtime(request).db)
    return {
        "paused": state.paused,
        "reason": state.reason,
        "since": state.since.isoformat() if state.since else None,
        "queue": queue,
    }


@routes.get(PREFIX + "/delivery")
async def get_delivery(request: web.Request) -> web.Response:
    state = await pause_state(runtime(request).db)
    return web.json_response(await _body(request, state))


@routes.post(PREFIX + "/delivery/pause")
async def pause(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request) if request.can_read_body else {}
    reason = clean_text(data.get("reason"), "reason", max_len=255)
    state = await set_paused(rt.db, True, rt.clock.now(), reason)
    return web.json_response(await _body(request, state))


@routes.post(PREFIX + "/delivery/resume")
async def resume(request: web.Request) -> web.Response:
    rt = runtime(request)
    state = await set_paused(rt.db, False, rt.clock.now())
    rt.wake_outbox()
    return web.json_response(await _body(request, state))


_STATE = {"200": json_body(DELIVERY)}
describe(
    PREFIX + "/delivery",
    "get",
    {"summary": "Whether sending is paused, and the outbox by state", "responses": dict(_STATE)},
)
describe(
    PREFIX + "/delivery/pause",
    "post",
    {
        "summary": "Pause all sending: no worker claims new messages; claimed ones finish",
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 255}}}
                }
            },
        },
        "responses": dict(_STATE, **{"400": error("invalid input")}),
    },
)
describe(PREFIX + "/delivery/resume", "post", {"summary": "Resume sending at once", "responses": dict(_STATE)})


WINDOW = {
    "type": "object",
    "required": ["sent", "complaints", "rate"],
    "properties": {"sent": {"type": "integer"}, "complaints": {"type": "integer"}, "rate": {"type": "number"}},
}
GOVERNOR_STATE: dict[str, Any] = {
    "type": "object",
    "required": ["layer_id", "provider", "level", "reason", "day", "week"],
    "properties": {
        "layer_id": {"type": ["integer", "null"], "description": "null: the provider's mail over every layer"},
        "layer": {"type": ["string", "null"]},
        "provider": {"enum": list(PROVIDERS)},
        "level": {"enum": ["ok", "warn", "paused"]},
        "reason": {"type": "string"},
        "day": WINDOW,
        "week": WINDOW,
        "changed_at": {"type": "string"},
        "resumed_at": {"type": ["string", "null"]},
        "resumed_by": {"type": ["string", "null"]},
    },
}


async def _governor_body(request: web.Request) -> dict[str, Any]:
    rt = runtime(request)
    async with rt.db.read() as session:
        found = await governor.states(session)
    s = rt.settings
    return {
        "warn_rate": s.governor_warn_rate,
        "pause_rate": s.governor_pause_rate,
        "min_sent": s.governor_min_sent,
        "states": found,
    }


@routes.get(PREFIX + "/governor")
async def get_governor(request: web.Request) -> web.Response:
    return web.json_response(await _governor_body(request))


@routes.post(PREFIX + "/governor/resume")
async def resume_governed(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    layer_id, provider = data.get("layer_id"), data.get("provider")
    if isinstance(layer_id, str) and layer_id.isdigit():
        layer_id = int(layer_id)
    if not isinstance(layer_id, int) or isinstance(layer_id, bool) or layer_id < 1:
        raise ValidationError("layer_id must be a layer's id", field="layer_id")
    if provider not in PROVIDERS:
        raise ValidationError(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
    async with rt.db.transaction() as session:
        if not await governor.resume(session, layer_id, provider, rt.clock.now(), "api"):
            raise NotFound(f"mail to {provider} in layer {layer_id} is not paused")
    rt.wake_outbox()
    rt.wake_webhooks()
    return web.json_response(await _governor_body(request))


_GOVERNOR = json_body(
    {
        "type": "object",
        "required": ["warn_rate", "pause_rate", "min_sent", "states"],
        "properties": {
            "warn_rate": {"type": "number"},
            "pause_rate": {"type": "number"},
            "min_sent": {"type": "integer"},
            "states": {"type": "array", "items": GOVERNOR_STATE},
        },
    }
)
describe(
    PREFIX + "/governor",
    "get",
    {
        "summary": "The complaint governor: complaint rates per layer and mailbox provider over a day and a "
        "week, and which layers' newsletters and drip steps are held",
        "responses": {"200": _GOVERNOR},
    },
)
describe(
    PREFIX + "/governor/resume",
    "post",
    {
        "summary": "Resume newsletters and drip steps the governor held for one layer at one provider; "
        "the held mail goes out",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["layer_id", "provider"],
                        "properties": {
                            "layer_id": {"type": "integer", "minimum": 1},
                            "provider": {"enum": list(PROVIDERS)},
                        },
                    }
                }
            },
        },
        "responses": {"200": _GOVERNOR, "400": error("no layer id or an unknown provider"), "404": error("not paused")},
    },
)
