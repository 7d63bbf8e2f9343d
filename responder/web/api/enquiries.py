"""Admin API for the follow-up queue: list enquiries oldest first, answer one, close one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...audience import enquiry_admin
from ...audience.enquiry_admin import MAX_ANSWER_LEN, STATES
from ...errors import NotFound, ValidationError
from ...models import Enquiry
from ...validation import parse_id
from ..http import read_input, runtime
from .handlers import PREFIX, iso
from .openapi import describe, error, json_body

routes = web.RouteTableDef()

ENQUIRY = {
    "type": "object",
    "required": ["id", "email", "body", "state"],
    "properties": {
        "id": {"type": "integer"},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "subject": {"type": "string"},
        "body": {"type": "string"},
        "state": {"enum": list(STATES)},
        "source": {"enum": ["form", "reply"]},
        "subscriber_id": {"type": ["integer", "null"]},
        "message_id": {"type": ["integer", "null"]},
        "ack_state": {"type": "string"},
        "answer": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "acknowledged_at": {"type": ["string", "null"]},
        "answered_at": {"type": ["string", "null"]},
        "closed_at": {"type": ["string", "null"]},
    },
}
ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]


def enquiry_json(e: Enquiry) -> dict[str, Any]:
    return {
        "id": e.id,
        "email": e.email,
        "name": e.name,
        "subject": e.subject,
        "body": e.body,
        "state": e.state,
        "source": e.source,
        "subscriber_id": e.subscriber_id,
        "message_id": e.message_id,
        "ack_state": e.ack_state,
        "answer": e.answer,
        "created_at": iso(e.created_at),
        "acknowledged_at": iso(e.acknowledged_at),
        "answered_at": iso(e.answered_at),
        "closed_at": iso(e.closed_at),
    }


def _id(request: web.Request) -> int:
    value = parse_id(request.match_info["id"])
    if value is None:
        raise NotFound("no such enquiry")
    return value


@routes.get(PREFIX + "/enquiries")
async def list_enquiries(request: web.Request) -> web.Response:
    state = request.query.get("state", "open")
    if state not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}", field="state")
    raw_limit = request.query.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
        raise ValidationError("limit must be 1..500", field="limit")
    rows = await enquiry_admin.queue(runtime(request), state, int(raw_limit))
    return web.json_response({"enquiries": [enquiry_json(e) for e in rows]})


describe(
    PREFIX + "/enquiries",
    "get",
    {
        "summary": "The follow-up queue: enquiries in one state, oldest first",
        "parameters": [
            {"name": "state", "in": "query", "schema": {"enum": list(STATES), "default": "open"}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
            },
        ],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["enquiries"],
                    "properties": {"enquiries": {"type": "array", "items": ENQUIRY}},
                }
            ),
            "400": error("bad state or limit"),
        },
    },
)


@routes.post(PREFIX + "/enquiries/{id}/answer")
async def answer_enquiry(request: web.Request) -> web.Response:
    data = await read_input(request)
    enquiry = await enquiry_admin.answer(runtime(request), _id(request), data.get("answer"))
    return web.json_response(enquiry_json(enquiry))


describe(
    PREFIX + "/enquiries/{id}/answer",
    "post",
    {
        "summary": "Answer an open enquiry: the answer is mailed to the customer and the enquiry leaves the queue",
        "parameters": ID_PARAM,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["answer"],
                        "properties": {"answer": {"type": "string", "maxLength": MAX_ANSWER_LEN}},
                    }
                }
            },
        },
        "responses": {
            "200": json_body(ENQUIRY),
            "400": error("empty answer or not open"),
            "404": error("no such enquiry"),
        },
    },
)


@routes.post(PREFIX + "/enquiries/{id}/close")
async def close_enquiry(request: web.Request) -> web.Response:
    enquiry = await enquiry_admin.close(runtime(request), _id(request))
    return web.json_response(enquiry_json(enquiry))


describe(
    PREFIX + "/enquiries/{id}/close",
    "post",
    {
        "summary": "Close an enquiry without a mailed answer (idempotent)",
        "parameters": ID_PARAM,
        "responses": {"200": json_body(ENQUIRY), "404": error("no such enquiry")},
    },
)
