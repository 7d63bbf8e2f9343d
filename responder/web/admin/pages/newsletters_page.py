"""Newsletters: the list with state and progress, compose from a template for chosen layers
(required) and tags with the audience counted as they are chosen, keep as a draft (the default),
send now or at a time in the admin's own time zone — both only after a page naming how many it
will reach; one newsletter's live progress and its pause / resume / cancel buttons. A newsletter
may be an A/B test (variants, split, test share, wait): its page shows the variants' figures and
the verdict, with a button sending the winner to the rest. Calls the same service functions as
the API."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from sqlalchemy import select

from ....errors import Conflict, NotFound, TemplateError, ValidationError
from ....funnel import abtests, newsletters
from ....funnel.apart import build_apart
from ....funnel.reports import HOURS, report_of
from ....models import Layer
from ....templating import service
from ....templating.context import pickable
from ....templating.sendable import sendable_template
from ...http import runtime
from .. import abform
from ..auth import see_other
from ..charts import HUMAN, UP, paired_columns
from ..nav import NavItem
from ..render import render

NAV = NavItem("Newsletters", "/admin/newsletters", 50)
routes = web.RouteTableDef()
WHEN = ("now", "at", "draft")


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


async def _layers(request: web.Request) -> list[Layer]:
    async with runtime(request).db.read() as session:
        return list(
            (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
        )


def _layer_names(progress: dict[str, Any]) -> str:
    """The newsletter's layers by name, as they were when it started sending (see
    ``newsletters.target_layers``): a layer removed since keeps its place."""
    return ", ".join(
        f"{entry['position'] if entry['position'] is not None else '?'} · {entry['name'] or 'unknown'}"
        for entry in progress["layers"]
    )


def admin_zone(form: Any) -> ZoneInfo:
    """The admin's time zone, as their browser names it in the form (``tz``); UTC without it."""
    name = str(form.get("tz", "") or "UTC")
    try:
        return ZoneInfo(name) if re.fullmatch(r"[A-Za-z0-9_+/-]{1,64}", name) else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _positions(form: Any) -> list[int]:
    return [int(p) for p in form.getall("layers", []) if isinstance(p, str) and p.isdigit() and len(p) < 6]


def _tag_list(form: Any) -> list[str]:
    return [t for t in re.split(r"[,\s]+", str(form.get("tags", ""))) if t]


def compose_input(form: Any) -> dict[str, Any]:
    """The compose form as the service's input: layers as positions, tags split on commas or
    spaces, a ``datetime-local`` time read in the admin's time zone (stored as UTC)."""
    positions = _positions(form)
    tags = _tag_list(form)
    data: dict[str, Any] = {
        "name": form.get("name"),
        "template": form.get("template"),
        "layers": positions,
        "tags": tags,
    }
    when = form.get("when", "draft")
    if when == "now":
        data["send_now"] = True
    elif when == "at":
        send_at = str(form.get("send_at", "")).strip()
        if not send_at:
            raise ValidationError("choose the time to send at", field="send_at")
        if re.search(r"(Z|[+-]\d\d:\d\d)$", send_at):
            data["send_at"] = send_at
        else:
            try:
                local = dt.datetime.fromisoformat(send_at).replace(tzinfo=admin_zone(form))
            except ValueError as exc:
                raise ValidationError("the time to send at is not a date and time", field="send_at") from exc
            data["send_at"] = local.astimezone(dt.UTC).isoformat()
    ab = abform.newsletter_input(form)
    if ab is not None:
        data["ab"] = ab
    return data


KEPT = ("name", "template", "tags", "when", "send_at", "tz")


def _kept(form: Any) -> dict[str, Any]:
    kept: dict[str, Any] = {k: str(form.get(k, "")) for k in KEPT}
    kept["layers"] = [str(p) for p in form.getall("layers", [])]
    kept |= abform.kept(form, abform.NEWSLETTER_FIELDS)
    return kept


async def _list(
    request: web.Request, *, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> web.Response:
    layers = await _layers(request)
    async with runtime(request).db.read() as session:
        rows = await newsletters.recent(session)
    for row in rows:
        row["layers"] = _layer_names(row)
    return render(
        request,
        "newsletters.html",
        status=status,
        error=error,
        newsletters=rows,
        layers=layers,
        # Only templates written for list mail: not the confirmation or the acknowledgement.
        templates=[
            t for t in await service.list_templates(runtime(request)) if pickable(t["name"], t["purpose"], "newsletter")
        ],
        form=form or {"layers": [], "when": "draft"},
    )


@routes.get("/newsletters")
async def index(request: web.Request) -> web.Response:
    return await _list(request)


@routes.get("/newsletters/audience.json")
async def audience(request: web.Request) -> web.Response:
    """How many the compose form's layers and tags reach now (the form shows it as they change)."""
    try:
        async with runtime(request).db.read() as session:
            count = await newsletters.count_audience(session, _positions(request.query), _tag_list(request.query))
    except ValidationError as exc:
        return web.json_response({"count": None, "message": exc.message}, headers={"Cache-Control": "no-store"})
    return web.json_response({"count": count}, headers={"Cache-Control": "no-store"})


@routes.post("/newsletters")
async def compose(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    try:
        data = compose_input(form)
        if "send_now" in data or "send_at" in data:
            async with rt.db.read() as session:
                count = await newsletters.count_audience(session, data["layers"], data["tags"])
                await sendable_template(session, rt.settings, str(data["template"] or ""), "newsletter", rt.renderer)
            if form.get("confirmed") != "yes":
                return _confirm(request, form, data, count)
        async with rt.db.transaction() as session:
            newsletter = await newsletters.create(session, data, rt.clock.now(), rt.settings, rt.renderer)
            newsletter_id = newsletter.id
    except (ValidationError, TemplateError) as exc:
        # Shown beside the form, which keeps what was typed: 400 for bad input, 422 for a
        # template that is missing or does not render as a newsletter.
        return await _list(request, status=exc.status, error=exc.message, form=_kept(form))
    rt.wake_scheduler()
    return see_other(f"/admin/newsletters/{newsletter_id}")


def _confirm(request: web.Request, form: Any, data: dict[str, Any], count: int) -> web.Response:
    """The page between composing and sending: what goes, to how many, when (in the admin's
    time zone and in UTC); its button posts the same form once more, confirmed."""
    zone = admin_zone(form)
    when_utc = dt.datetime.fromisoformat(data["send_at"]) if "send_at" in data else None
    return render(
        request,
        "newsletter_confirm.html",
        form=_kept(form),
        ab_fields=abform.NEWSLETTER_FIELDS,
        count=count,
        zone=str(zone),
        local=when_utc.astimezone(zone).strftime("%Y-%m-%d %H:%M") if when_utc else None,
        utc=when_utc.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if when_utc else None,
        data=data,
    )


async def _progress(request: web.Request) -> dict[str, Any]:
    async with runtime(request).db.read() as session:
        return await newsletters.progress(session, await newsletters.get(session, _id(request)))


async def _report_context(request: web.Request) -> dict[str, Any]:
    db = runtime(request).db
    report = await build_apart(db, ("newsletter report", _id(request)), report_of, _id(request))
    async with db.read() as session:
        newsletter = await newsletters.get(session, _id(request))
        try:
            test = await abtests.test_of(session, newsletter_id=newsletter.id)
            ab: dict[str, Any] | None = await abtests.test_json(session, test)
        except NotFound:
            ab = None
    rows = [(f"{row['hour']}h", row["open"], row["click"]) for row in report["hourly"]]
    chart = paired_columns(rows, (HUMAN, UP), "human opens and clicks by the hour", every=max(1, len(rows) // 12))
    return {"report": report, "hourly_chart": chart, "hours": HOURS, "ab": ab, "decided_by": abform.DECIDED_BY}


@routes.get("/newsletters/{id:\\d+}")
async def detail(request: web.Request) -> web.Response:
    progress = await _progress(request)
    progress["layers"] = _layer_names(progress)
    return render(
        request,
        "newsletter.html",
        news=progress,
        error=None,
        notice=request.query.get("notice"),
        **await _report_context(request),
    )


@routes.get("/newsletters/{id:\\d+}.json")
async def progress_json(request: web.Request) -> web.Response:
    return web.json_response(await _progress(request), headers={"Cache-Control": "no-store"})


@routes.post("/newsletters/{id:\\d+}/{action:schedule|pause|resume|cancel|winner}")
async def action(request: web.Request) -> web.Response:
    rt = runtime(request)
    name = request.match_info["action"]
    try:
        async with rt.db.transaction() as session:
            if name == "winner":  # send the chosen variant to the rest
                test = await abtests.test_of(session, newsletter_id=_id(request))
                await abtests.pick_winner(session, test, (await request.post()).get("variant"), rt.clock.now())
            else:
                await newsletters.act(session, _id(request), name, rt.clock.now())
    except (Conflict, ValidationError) as exc:
        progress = await _progress(request)
        progress["layers"] = _layer_names(progress)
        return render(
            request,
            "newsletter.html",
            status=exc.status,
            news=progress,
            error=exc.message,
            notice=None,
            **await _report_context(request),
        )
    rt.wake_scheduler()
    return see_other(f"/admin/newsletters/{_id(request)}?notice={name}")
