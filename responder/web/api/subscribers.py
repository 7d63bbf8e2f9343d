"""Admin API for subscribers: search, timeline, layer moves, tags, CSV import and export."""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web
from sqlalchemy import select

from ...audience.directory import (
    MAX_PAGE,
    SubscriberFilter,
    get_subscriber,
    list_subscribers,
    move_subscriber,
    parse_int,
    set_tag,
    timeline,
)
from ...audience.importer import Enroll, ImportJobs, add_one, get_job, job_json, spool
from ...errors import ValidationError
from ...models import Layer, Subscriber
from ..http import read_input, runtime
from .handlers import PREFIX, _path_id, subscriber_json
from .openapi import describe, error, json_body

routes = web.RouteTableDef()
IMPORTS = web.AppKey("imports", ImportJobs)
EXPORT_COLUMNS = ("email", "name", "status", "layer", "tags", "created_at", "confirmed_at")

ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
FILTERS = [
    {"name": "layer", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 99}},
    {"name": "tag", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"}},
    {
        "name": "status",
        "in": "query",
        "schema": {"enum": ["pending", "active", "unsubscribed", "bounced", "complained"]},
    },
    {
        "name": "q",
        "in": "query",
        "description": "text in the address or name",
        "schema": {"type": "string", "maxLength": 200},
    },
]
PAGING = [
    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 200}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
]
SUBSCRIBER_REF = {"$ref": "#/components/schemas/Subscriber"}
JOB = {
    "type": "object",
    "required": ["id", "state", "progress", "rows_read", "imported", "rejected", "rejected_rows"],
    "properties": {
        "id": {"type": "integer"},
        "state": {"enum": ["running", "done", "failed"]},
        "consent_source": {"type": ["string", "null"]},
        "enroll": {
            "type": "object",
            "properties": {"mode": {"enum": ["none", "next", "start"]}, "spread_s": {"type": "integer"}},
        },
        "they_get": {"type": "string", "description": "what the imported get of their layer's sequence"},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "rows_read": {"type": "integer"},
        "imported": {"type": "integer"},
        "rejected": {"type": "integer"},
        "rejected_rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "row": {"type": "integer"},
                    "email": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                    "reason": {"type": "string"},
                },
            },
        },
        "error": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "finished_at": {"type": ["string", "null"]},
    },
}


def page_limit(request: web.Request) -> int:
    return parse_int(request.query.get("limit"), "limit", low=1, high=MAX_PAGE) or 50


@routes.get(PREFIX + "/subscribers")
async def search(request: web.Request) -> web.Response:
    flt = SubscriberFilter.from_query(request.query)
    async with runtime(request).db.read() as session:
        page = await list_subscribers(session, flt, cursor=request.query.get("cursor"), limit=page_limit(request))
        return web.json_response(
            {"subscribers": [subscriber_json(s, layer) for s, layer in page.items], "next_cursor": page.next_cursor}
        )


describe(
    PREFIX + "/subscribers",
    "get",
    {
        "summary": "Subscribers newest first, filtered by layer, tag, status and text",
        "parameters": FILTERS + PAGING,
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["subscribers", "next_cursor"],
                    "properties": {
                        "subscribers": {"type": "array", "items": SUBSCRIBER_REF},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                }
            ),
            "400": error("a filter or the cursor is invalid"),
        },
    },
)


@routes.get(PREFIX + "/subscribers/{id}/timeline")
async def subscriber_timeline(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        subscriber = await get_subscriber(session, _path_id(request))
        items = await timeline(session, subscriber.id)
    return web.json_response({"items": [item.json() for item in items]})


describe(
    PREFIX + "/subscribers/{id}/timeline",
    "get",
    {
        "summary": "Events, messages and layer moves of one subscriber, newest first",
        "parameters": [ID],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["at", "kind", "type", "summary"],
                                "properties": {
                                    "at": {"type": "string"},
                                    "kind": {"enum": ["event", "message", "layer"]},
                                    "type": {"type": "string"},
                                    "summary": {"type": "string"},
                                    "machine": {"type": "boolean"},
                                },
                            },
                        }
                    },
                }
            ),
            "404": error("no such subscriber"),
        },
    },
)


async def _subscriber_body(request: web.Request, subscriber_id: int) -> dict[str, Any]:
    async with runtime(request).db.read() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
        return subscriber_json(subscriber, layer)


@routes.post(PREFIX + "/subscribers")
async def add(request: web.Request) -> web.Response:
    data = await read_input(request)
    enroll = Enroll.parse(_text(data.get("enroll")), _text(data.get("spread")))
    tags = data.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ValidationError("tags must be a list of tags", field="tags")
    fields = {**data, "tags": ";".join(tags or [])}
    subscriber_id = await add_one(
        runtime(request), fields, consent_source=_text(data.get("consent_source")), enroll=enroll
    )
    return web.json_response(await _subscriber_body(request, subscriber_id), status=201)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


describe(
    PREFIX + "/subscribers",
    "post",
    {
        "summary": "Add one subscriber who agreed elsewhere (a shop, an event): active at once, the consent "
        "source on record; what they get of their layer's sequence as for an import",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["email", "consent_source"],
                        "properties": {
                            "email": {"type": "string", "format": "email"},
                            "name": {"type": "string", "maxLength": 200},
                            "layer": {"type": "integer", "minimum": 1, "maximum": 99},
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "consent_source": {"type": "string", "maxLength": 64},
                            "consented_at": {"type": "string", "format": "date-time"},
                            "enroll": {"enum": ["none", "next", "start"], "default": "none"},
                            "spread": {"type": "string"},
                        },
                    }
                }
            },
        },
        "responses": {
            "201": json_body({"$ref": "#/components/schemas/Subscriber"}, "added"),
            "400": error("a field is not valid (named in the error)"),
            "409": error("the address is already a subscriber"),
        },
    },
)


@routes.post(PREFIX + "/subscribers/{id}/layer")
async def move(request: web.Request) -> web.Response:
    data = await read_input(request)
    subscriber, _ = await move_subscriber(runtime(request), _path_id(request), data.get("position"), data.get("reason"))
    return web.json_response(await _subscriber_body(request, subscriber.id))


describe(
    PREFIX + "/subscribers/{id}/layer",
    "post",
    {
        "summary": "Move an active subscriber to another layer: the old sequence ends, the new layer's starts",
        "parameters": [ID],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["position"],
                        "properties": {
                            "position": {"type": "integer", "minimum": 1, "maximum": 99},
                            "reason": {"type": "string", "maxLength": 200},
                        },
                    }
                }
            },
        },
        "responses": {
            "200": json_body(SUBSCRIBER_REF, "moved"),
            "400": error("invalid input"),
            "404": error("no such subscriber"),
            "409": error("not active, or already in that layer"),
        },
    },
)

TAG_PARAMS = [
    ID,
    {"name": "tag", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"}},
]


@routes.put(PREFIX + "/subscribers/{id}/tags/{tag}")
async def add_tag(request: web.Request) -> web.Response:
    subscriber = await set_tag(runtime(request), _path_id(request), request.match_info["tag"], present=True)
    return web.json_response(await _subscriber_body(request, subscriber.id))


@routes.delete(PREFIX + "/subscribers/{id}/tags/{tag}")
async def remove_tag(request: web.Request) -> web.Response:
    subscriber = await set_tag(runtime(request), _path_id(request), request.match_info["tag"], present=False)
    return web.json_response(await _subscriber_body(request, subscriber.id))


for _method, _summary in (
    ("put", "Tag a subscriber (e.g. 'preferred'); idempotent"),
    ("delete", "Remove a tag from a subscriber; idempotent"),
):
    describe(
        PREFIX + "/subscribers/{id}/tags/{tag}",
        _method,
        {
            "summary": _summary,
            "parameters": TAG_PARAMS,
            "responses": {
                "200": json_body(SUBSCRIBER_REF),
                "400": error("not a valid tag"),
                "404": error("no such subscriber"),
            },
        },
    )


@routes.post(PREFIX + "/imports")
async def start_import(request: web.Request) -> web.Response:
    rt = runtime(request)
    enroll = Enroll.parse(request.query.get("enroll"), request.query.get("spread"))
    path = await spool(request.content.iter_chunked(65536), rt.settings.import_max_bytes)
    job_id = await request.app[IMPORTS].start(rt, path, request.query.get("consent_source"), enroll)
    return web.json_response(job_json(await get_job(rt, job_id)), status=202)


describe(
    PREFIX + "/imports",
    "post",
    {
        "summary": "Import subscribers from CSV (header row; email, name, layer, tags, "
        "consent_source, consented_at); runs in the background, follow its progress",
        "parameters": [
            {
                "name": "consent_source",
                "in": "query",
                "description": "where these people consented; required unless every row has a consent_source column",
                "schema": {"type": "string", "maxLength": 64},
            },
            {
                "name": "enroll",
                "in": "query",
                "description": "what the imported get of their layer's sequence: none (default: newsletters only), "
                "next (every step after the welcome) or start (every step)",
                "schema": {"enum": ["none", "next", "start"], "default": "none"},
            },
            {
                "name": "spread",
                "in": "query",
                "description": "spread their first sequence mail evenly over this long (e.g. 7d)",
                "schema": {"type": "string", "pattern": "^[0-9]+[smhdw]$"},
            },
        ],
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
        "responses": {
            "202": json_body(JOB, "started"),
            "400": error("empty file, invalid consent source, enroll or spread"),
            "413": error("the file is too large"),
        },
    },
)


@routes.get(PREFIX + "/imports/{id}")
async def import_status(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    job_id = int(raw) if raw.isdigit() and len(raw) < 10 else 0
    return web.json_response(job_json(await get_job(runtime(request), job_id)))


describe(
    PREFIX + "/imports/{id}",
    "get",
    {
        "summary": "Progress of an import and the report of rejected rows",
        "parameters": [ID],
        "responses": {"200": json_body(JOB), "404": error("no such import")},
    },
)


def export_row(subscriber: Subscriber, layer_position: int | None) -> list[str]:
    return [
        subscriber.email,
        subscriber.name,
        subscriber.status,
        str(layer_position or ""),
        ";".join(subscriber.tags),
        subscriber.created_at.isoformat(),
        subscriber.confirmed_at.isoformat() if subscriber.confirmed_at else "",
    ]


@routes.get(PREFIX + "/subscribers.csv")
async def export(request: web.Request) -> web.StreamResponse:
    flt = SubscriberFilter.from_query(request.query)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
        }
    )
    await response.prepare(request)
    async for chunk in export_chunks(runtime(request), flt):
        await response.write(chunk)
    await response.write_eof()
    return response


async def export_chunks(rt: Any, flt: SubscriberFilter, batch: int = 2000):  # type: ignore[no-untyped-def]
    """CSV in chunks of ``batch`` rows, walking the id index so memory stays flat."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    after: int | None = None
    while True:
        stmt = flt.apply(select(Subscriber, Layer.position).outerjoin(Layer, Layer.id == Subscriber.layer_id))
        if after is not None:
            stmt = stmt.where(Subscriber.id > after)
        async with rt.db.read() as session:
            rows = (await session.execute(stmt.order_by(Subscriber.id).limit(batch))).all()
        for subscriber, position in rows:
            writer.writerow(export_row(subscriber, position))
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < batch:
            return
        after = rows[-1][0].id


describe(
    PREFIX + "/subscribers.csv",
    "get",
    {
        "summary": "Export subscribers as CSV, with the same filters as the list",
        "parameters": FILTERS,
        "responses": {
            "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
            "400": error("a filter is invalid"),
        },
    },
)
