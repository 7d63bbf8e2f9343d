"""Admin API for sending as a whole: its state, and pause and resume."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...delivery.controls import PauseState, pause_state, queue_depth, set_paused
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
