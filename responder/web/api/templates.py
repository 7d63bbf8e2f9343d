"""Admin API for templates: upload (JSON or multipart), list, versions, preview, test send.

Uploads may be larger than the public endpoints' body limit, so this module reads its own
request bodies with its own cap (``MAX_UPLOAD_BYTES``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ...errors import DeliveryError, MailUnavailable, ValidationError
from ...templating import service
from ...templating.sandbox import MAX_SOURCE_BYTES
from ...validation import parse_id
from ..http import runtime
from .openapi import describe, error, json_body

PREFIX = "/api/v1/templates"
MAX_UPLOAD_BYTES = 2 * MAX_SOURCE_BYTES + 64 * 1024
routes = web.RouteTableDef()


TEMPLATE = {
    "type": "object",
    "required": ["id", "name", "version", "subject", "format", "purpose", "text", "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "subject": {"type": "string"},
        "format": {"enum": ["mjml", "html"]},
        "purpose": {"type": "string"},
        "text": {"enum": ["explicit", "generated"]},
        "created_at": {"type": "string"},
        "versions": {"type": "integer"},
    },
}
UPLOAD_FIELDS = {
    "name": {"type": "string", "maxLength": 120},
    "subject": {"type": "string", "description": "a Jinja template itself"},
    "body": {"type": "string", "description": "MJML or HTML with Jinja, up to 512 KB"},
    "format": {"enum": ["mjml", "html"], "description": "default: mjml if the body starts <mjml"},
    "text": {"type": "string", "description": "explicit plain-text body; generated if absent"},
    "purpose": {"type": "string", "maxLength": 32},
}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


async def _read_limited(stream: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(64 * 1024):
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise ValidationError(f"upload is larger than {MAX_UPLOAD_BYTES // 1024} KB")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_fields(request: web.Request) -> dict[str, str]:
    if request.content_type == "application/json":
        try:
            data = json.loads(await _read_limited(request.content) or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError("body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ValidationError("body must be a JSON object")
        return {k: v for k, v in data.items() if isinstance(v, str)}
    if request.content_type != "multipart/form-data":
        raise ValidationError("send JSON or multipart/form-data (a 'file' part plus fields)")
    try:
        reader = await request.multipart()
        return await read_multipart_fields(reader)
    except (ValueError, HttpProcessingError) as exc:  # no boundary, malformed part headers
        raise ValidationError(f"malformed multipart body: {exc}") from exc


async def read_multipart_fields(reader: MultipartReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            continue
        raw = await part.read(decode=True)
        total += len(raw)
        if total > MAX_UPLOAD_BYTES:
            raise ValidationError(f"upload is larger than {MAX_UPLOAD_BYTES // 1024} KB")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{part.name} is not UTF-8 text", field=part.name) from exc
        if part.name == "file":
            fields["body"] = value
            fields["_filename"] = part.filename or ""
        else:
            fields[part.name] = value
    return fields


@routes.post(PREFIX)
async def upload(request: web.Request) -> web.Response:
    fields = await _upload_fields(request)
    name = fields.get("name") or fields.get("_filename", "").rsplit(".", 1)[0].lower()
    if not fields.get("subject"):
        raise ValidationError("subject is required", field="subject")
    stored = await service.upload_template(
        runtime(request),
        service.Upload(
            name=name,
            subject=fields["subject"],
            source=fields.get("body", ""),
            source_format=fields.get("format") or None,
            text=fields.get("text") or None,
            purpose=fields.get("purpose", ""),
        ),
    )
    return web.json_response(stored, status=201)


describe(
    PREFIX,
    "post",
    {
        "summary": "Upload a template (MJML or HTML with Jinja); an existing name gets a new version",
        "description": "Compiled once and rendered against the sample context of the kind of mail it "
        "is for (the confirmation if named or purposed confirm, the enquiry acknowledgement if named "
        "enquiry-ack or purposed enquiry, else list mail) and of every step or unfinished newsletter "
        "that sends its name, before anything is stored; a template that fails is refused with 422 "
        "naming the part, the line and the problem.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["name", "subject", "body"], "properties": UPLOAD_FIELDS}
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "subject"],
                        "properties": {**UPLOAD_FIELDS, "file": {"type": "string", "format": "binary"}},
                    }
                },
            },
        },
        "responses": {
            "201": json_body(TEMPLATE, "stored as a new version"),
            "400": error("malformed request"),
            "422": error("does not compile or render; nothing stored"),
        },
    },
)


@routes.get(PREFIX)
async def list_templates(request: web.Request) -> web.Response:
    return web.json_response({"templates": await service.list_templates(runtime(request))})


describe(
    PREFIX,
    "get",
    {
        "summary": "Every template name with its newest version",
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["templates"],
                    "properties": {"templates": {"type": "array", "items": TEMPLATE}},
                }
            )
        },
    },
)


@routes.get(PREFIX + "/{name}")
async def get_template(request: web.Request) -> web.Response:
    return web.json_response(await service.template_versions(runtime(request), request.match_info["name"]))


describe(
    PREFIX + "/{name}",
    "get",
    {
        "summary": "The newest version with its source and compiled HTML, and the version history",
        "parameters": [NAME_PARAM],
        "responses": {"200": json_body({"type": "object"}), "404": error("no such template")},
    },
)


def _optional_int(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    value = parse_id(raw)
    if value is None:
        raise ValidationError(f"{key} must be a positive whole number", field=key)
    return value


@routes.get(PREFIX + "/{name}/preview")
async def preview(request: web.Request) -> web.Response:
    return web.json_response(
        await service.preview(
            runtime(request),
            request.match_info["name"],
            subscriber_id=_optional_int(request, "subscriber_id"),
            version=_optional_int(request, "version"),
        )
    )


describe(
    PREFIX + "/{name}/preview",
    "get",
    {
        "summary": "Subject, HTML and text as a subscriber (default: a sample subscriber) would get "
        "them, links not tracked",
        "parameters": [
            NAME_PARAM,
            {"name": "subscriber_id", "in": "query", "schema": {"type": "integer"}},
            {"name": "version", "in": "query", "schema": {"type": "integer"}},
        ],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["subject", "html", "text"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "subject": {"type": "string"},
                        "html": {"type": "string"},
                        "text": {"type": "string"},
                    },
                }
            ),
            "400": error("subscriber_id or version is not a whole number"),
            "404": error("no such template or subscriber"),
            "422": error("does not render for this subscriber"),
        },
    },
)


@routes.post(PREFIX + "/{name}/test")
async def test_send(request: web.Request) -> web.Response:
    try:
        data = json.loads(await _read_limited(request.content) or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValidationError("body must be a JSON object")
    subscriber_id = data.get("subscriber_id")
    if subscriber_id is not None and (isinstance(subscriber_id, bool) or not isinstance(subscriber_id, int)):
        raise ValidationError("subscriber_id must be a whole number", field="subscriber_id")
    try:
        sent = await service.test_send(
            runtime(request), request.match_info["name"], data.get("email"), subscriber_id=subscriber_id
        )
    except DeliveryError as exc:
        raise MailUnavailable(f"the test mail was not accepted: {exc.message}") from exc
    return web.json_response(sent, status=202)


describe(
    PREFIX + "/{name}/test",
    "post",
    {
        "summary": "Send one test mail of the newest version to an address, subject marked [Test]",
        "parameters": [NAME_PARAM],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["email"],
                        "properties": {"email": {"type": "string"}, "subscriber_id": {"type": "integer"}},
                    }
                }
            },
        },
        "responses": {
            "202": json_body({"type": "object"}, "handed to the mail transport"),
            "400": error("invalid address"),
            "404": error("no such template"),
            "422": error("does not render"),
            "503": error("the mail server refused or could not be reached"),
        },
    },
)
