"""Subscribers: search, add one by hand, one subscriber's timeline, move layer, tag preferred,
CSV import."""

from __future__ import annotations

import re

from aiohttp import web
from sqlalchemy import select

from ....audience.directory import (
    STATUSES,
    SubscriberFilter,
    get_subscriber,
    list_subscribers,
    move_subscriber,
    set_tag,
    timeline,
)
from ....audience.importer import Enroll, add_one, get_job, job_json, spool
from ....audience.subscribers import consent_records
from ....errors import Conflict, ValidationError
from ....models import Layer
from ...api.subscribers import IMPORTS
from ...http import runtime
from ..auth import form_parts, see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Subscribers", "/admin/subscribers", 20)
routes = web.RouteTableDef()
PREFERRED = "preferred"


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


async def _layers(request: web.Request) -> list[Layer]:
    async with runtime(request).db.read() as session:
        return list((await session.execute(select(Layer).order_by(Layer.position))).scalars())


@routes.get("/subscribers")
async def search(request: web.Request) -> web.Response:
    flt = SubscriberFilter.from_query(request.query)
    async with runtime(request).db.read() as session:
        page = await list_subscribers(session, flt, cursor=request.query.get("cursor"))
    query = {k: v for k, v in request.query.items() if k != "cursor" and v}
    return render(
        request, "subscribers.html", page=page, flt=flt, query=query, layers=await _layers(request), statuses=STATUSES
    )


ADD_FIELDS = ("email", "name", "layer", "tags", "consent_source", "enroll")


@routes.get("/subscribers/new")
async def add_form(request: web.Request) -> web.Response:
    return render(request, "subscriber_new.html", layers=await _layers(request), form={}, error=None, error_field=None)


@routes.post("/subscribers/new")
async def add(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    kept = {key: str(form.get(key, ""))[:400] for key in ADD_FIELDS}
    try:
        enroll = Enroll.parse(kept["enroll"], None)
        fields = {**kept, "tags": ";".join(t for t in re.split(r"[,\s]+", kept["tags"]) if t)}
        subscriber_id = await add_one(rt, fields, consent_source=kept["consent_source"], enroll=enroll)
    except (ValidationError, Conflict) as exc:
        return render(
            request,
            "subscriber_new.html",
            status=exc.status,
            layers=await _layers(request),
            form=kept,
            error=exc.message,
            error_field=exc.field,
        )
    return see_other(f"/admin/subscribers/{subscriber_id}?notice=added")


@routes.get("/subscribers/{id:\\d+}")
async def detail(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        subscriber = await get_subscriber(session, _id(request))
        items = await timeline(session, subscriber.id)
        consent = await consent_records(session, subscriber.id)
    layers = await _layers(request)
    current = next((layer for layer in layers if layer.id == subscriber.layer_id), None)
    return render(
        request,
        "subscriber.html",
        subscriber=subscriber,
        layer=current,
        layers=layers,
        items=items,
        consent=consent,
        preferred=PREFERRED in subscriber.tags,
        notice=request.query.get("notice"),
    )


@routes.post("/subscribers/{id:\\d+}/layer")
async def move(request: web.Request) -> web.Response:
    form = await request.post()
    _, target = await move_subscriber(runtime(request), _id(request), form.get("position"), form.get("reason"))
    return see_other(f"/admin/subscribers/{_id(request)}?notice=moved-{target.position}")


@routes.post("/subscribers/{id:\\d+}/preferred")
async def preferred(request: web.Request) -> web.Response:
    form = await request.post()
    await set_tag(runtime(request), _id(request), PREFERRED, present=form.get("on") == "1")
    return see_other(f"/admin/subscribers/{_id(request)}")


@routes.get("/imports/new")
async def import_form(request: web.Request) -> web.Response:
    return render(request, "import_new.html")


@routes.post("/imports")
async def start_import(request: web.Request) -> web.Response:
    rt = runtime(request)
    reader = await form_parts(request)
    source: str | None = None
    fields: dict[str, str] = {}
    path = None
    try:
        async for part in reader:
            if part.name == "consent_source":  # type: ignore[union-attr]
                source = (await part.text())[:200]  # type: ignore[union-attr]
            elif part.name in ("enroll", "spread"):  # type: ignore[union-attr,operator]
                fields[str(part.name)] = (await part.text())[:16]  # type: ignore[union-attr]
            elif part.name == "file" and path is None:  # type: ignore[union-attr]
                path = await spool(_chunks(part), rt.settings.import_max_bytes)
        if path is None:
            return render(request, "import_new.html", status=400, error="Choose a CSV file.")
        try:
            enroll = Enroll.parse(fields.get("enroll"), fields.get("spread"))
        except ValidationError as exc:
            path.unlink(missing_ok=True)
            return render(request, "import_new.html", status=400, error=exc.message)
        job_id = await request.app[IMPORTS].start(rt, path, source, enroll)
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    return see_other(f"/admin/imports/{job_id}")


async def _chunks(part):  # type: ignore[no-untyped-def]
    while chunk := await part.read_chunk(65536):
        yield chunk


@routes.get("/imports/{id:\\d+}")
async def import_page(request: web.Request) -> web.Response:
    job = await get_job(runtime(request), _id(request))
    return render(request, "import_job.html", job=job_json(job))


@routes.get("/imports/{id:\\d+}.json")
async def import_progress(request: web.Request) -> web.Response:
    job = await get_job(runtime(request), _id(request))
    return web.json_response(job_json(job), headers={"Cache-Control": "no-store"})
