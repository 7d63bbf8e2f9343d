"""Admin API for API tokens, the dashboard's stats and the event log."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from ...audience.directory import decode_cursor, encode_cursor, parse_int
from ...errors import ValidationError
from ...funnel.apart import build_apart
from ...funnel.dashboard import dashboard_stats
from ...funnel.events import EVENT_TYPES
from ...models import Event
from ..http import read_input, runtime
from .handlers import PREFIX, iso
from .openapi import describe, error, json_body
from .subscribers import PAGING, page_limit
from .tokens import create_token, list_tokens, revoke_token

routes = web.RouteTableDef()

TOKEN: dict[str, Any] = {
    "type": "object",
    "required": ["name", "scope"],
    "properties": {
        "name": {"type": "string"},
        "scope": {"enum": ["read", "write"]},
        "created_at": {"type": ["string", "null"]},
    },
}


@routes.get(PREFIX + "/tokens")
async def tokens(request: web.Request) -> web.Response:
    return web.json_response({"tokens": [t.json() for t in await list_tokens(runtime(request))]})


describe(
    PREFIX + "/tokens",
    "get",
    {
        "summary": "Named API tokens (never their secrets)",
        "responses": {
            "200": json_body(
                {"type": "object", "required": ["tokens"], "properties": {"tokens": {"type": "array", "items": TOKEN}}}
            )
        },
    },
)


@routes.post(PREFIX + "/tokens")
async def new_token(request: web.Request) -> web.Response:
    data = await read_input(request)
    info, secret = await create_token(runtime(request), data.get("name"), data.get("scope"))
    return web.json_response({**info.json(), "token": secret}, status=201)


describe(
    PREFIX + "/tokens",
    "post",
    {
        "summary": "Create a named token; its secret is in this answer only",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "scope"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                            "scope": {"enum": ["read", "write"]},
                        },
                    }
                }
            },
        },
        "responses": {
            "201": json_body(
                {
                    **TOKEN,
                    "required": ["name", "scope", "token"],
                    "properties": {**TOKEN["properties"], "token": {"type": "string"}},
                },
                "created",
            ),
            "400": error("invalid name or scope"),
            "409": error("the name is taken"),
        },
    },
)


@routes.delete(PREFIX + "/tokens/{name}")
async def delete_token(request: web.Request) -> web.Response:
    await revoke_token(runtime(request), request.match_info["name"])
    return web.Response(status=204)


describe(
    PREFIX + "/tokens/{name}",
    "delete",
    {
        "summary": "Revoke a named token; it stops working at once",
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            }
        ],
        "responses": {"204": {"description": "revoked"}, "404": error("no such token")},
    },
)


@routes.get(PREFIX + "/dashboard")
async def stats(request: web.Request) -> web.Response:
    rt = runtime(request)
    now = rt.clock.now()
    figures = await build_apart(rt.db, ("dashboard",), dashboard_stats, now)
    return web.json_response(figures.json())


ENGAGEMENT = {
    "type": "object",
    "required": ["human", "machine"],
    "properties": {"human": {"type": "integer"}, "machine": {"type": "integer"}},
}
describe(
    PREFIX + "/dashboard",
    "get",
    {
        "summary": "Funnel figures: subscribers per layer, moves per week, churn per layer, human "
        "versus machine opens and clicks and the reasons of their verdicts, complaint rate and its alarm",
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": [
                        "layers",
                        "moves",
                        "opens",
                        "clicks",
                        "reasons",
                        "sent",
                        "complaints",
                        "complaint_rate",
                        "complaint_alarm",
                    ],
                    "properties": {
                        "layers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "position": {"type": "integer"},
                                    "name": {"type": "string"},
                                    "label": {"type": "string"},
                                    "subscribers": {"type": "integer"},
                                    "churned": {"type": "integer"},
                                    "churn_rate": {"type": "number"},
                                },
                            },
                        },
                        "moves": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "week_start": {"type": "string"},
                                    "up": {"type": "integer"},
                                    "down": {"type": "integer"},
                                },
                            },
                        },
                        "opens": ENGAGEMENT,
                        "clicks": ENGAGEMENT,
                        "reasons": {
                            "type": "array",
                            "description": "opens and clicks by the reason of their human-or-machine verdict",
                            "items": {
                                "type": "object",
                                "required": ["reason", "machine", "meaning", "opens", "clicks"],
                                "properties": {
                                    "reason": {"type": "string"},
                                    "machine": {"type": "boolean"},
                                    "meaning": {"type": "string"},
                                    "opens": {"type": "integer"},
                                    "clicks": {"type": "integer"},
                                },
                            },
                        },
                        "sent": {"type": "integer"},
                        "complaints": {"type": "integer"},
                        "complaint_rate": {"type": "number"},
                        "complaint_alarm": {"type": "boolean"},
                        "bounces": {"type": "integer", "description": "hard bounces: the address refused"},
                        "soft_bounces": {"type": "integer", "description": "full mailboxes, policy refusals: retried"},
                        "bounce_rate": {"type": "number", "description": "hard bounces per mail sent"},
                        "window_days": {"type": "integer"},
                        "alarm_threshold": {"type": "number"},
                    },
                }
            )
        },
    },
)


@routes.get(PREFIX + "/events")
async def events(request: web.Request) -> web.Response:
    query = request.query
    stmt = select(Event)
    type_ = query.get("type")
    if type_:
        if type_ not in EVENT_TYPES:
            raise ValidationError("not an event type", field="type")
        stmt = stmt.where(Event.type == type_)
    subscriber_id = parse_int(query.get("subscriber_id"), "subscriber_id", low=1, high=10**9 - 1)
    if subscriber_id is not None:
        stmt = stmt.where(Event.subscriber_id == subscriber_id)
    machine = query.get("machine")
    if machine:
        if machine not in ("true", "false"):
            raise ValidationError("machine is true or false", field="machine")
        stmt = stmt.where(Event.machine.is_(machine == "true"))
    after = decode_cursor(query.get("cursor"))
    if after is not None:
        stmt = stmt.where(Event.id < after)
    limit = page_limit(request)
    async with runtime(request).db.read() as session:
        rows = list((await session.execute(stmt.order_by(Event.id.desc()).limit(limit + 1))).scalars())
    body = [
        {
            "id": e.id,
            "subscriber_id": e.subscriber_id,
            "message_id": e.message_id,
            "type": e.type,
            "url": e.url,
            "machine": e.machine,
            "verdict": e.verdict,
            "data": e.data,
            "at": iso(e.created_at),
        }
        for e in rows[:limit]
    ]
    return web.json_response(
        {"events": body, "next_cursor": encode_cursor(rows[limit - 1].id) if len(rows) > limit else None}
    )


describe(
    PREFIX + "/events",
    "get",
    {
        "summary": "The event log newest first, filtered by type, subscriber and origin",
        "parameters": [
            {"name": "type", "in": "query", "schema": {"enum": sorted(EVENT_TYPES)}},
            {"name": "subscriber_id", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10**9 - 1}},
            {"name": "machine", "in": "query", "schema": {"enum": ["true", "false"]}},
            *PAGING,
        ],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["events", "next_cursor"],
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "type", "at"],
                                "properties": {
                                    "id": {"type": "integer"},
                                    "subscriber_id": {"type": "integer"},
                                    "message_id": {"type": ["integer", "null"]},
                                    "type": {"type": "string"},
                                    "url": {"type": ["string", "null"]},
                                    "machine": {"type": "boolean"},
                                    "verdict": {
                                        "type": ["string", "null"],
                                        "description": "why an open or click counted as human or machine",
                                    },
                                    "data": {"type": "object"},
                                    "at": {"type": "string"},
                                },
                            },
                        },
                        "next_cursor": {"type": ["string", "null"]},
                    },
                }
            ),
            "400": error("a filter or the cursor is invalid"),
        },
    },
)
