"""Sequences: each layer's main sequence and every triggered one (purchase, enquiry, referral)
with their steps and each step's figures; create a triggered sequence; the step editor (add,
change, move up or down, remove). Calls the service functions of ``funnel/sequences.py``, which
validate and write, as the API does; this module only turns forms into their input and their
answers into plain words.

What an edit does to people already in a sequence is decided there and in the stepper (the
outbox keeps each (subscriber, step) pair once; an enrollment waits for the first step at or
after its next position). ``ON_ENROLLED`` and ``SAVED`` say it in plain words, beside the forms
and after saving.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from sqlalchemy import select

from ....core.pacing import DAY_NAMES, _days
from ....core.schedule import format_duration
from ....errors import Conflict, TemplateError, ValidationError
from ....funnel import sequences
from ....funnel.dashboard import StepFigures, step_figures
from ....funnel.triggers import TRIGGERS
from ....models import Layer, Sequence, Step
from ....templating import service
from ....templating.context import pickable
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Sequences", "/admin/sequences", 35)
routes = web.RouteTableDef()

PURPOSE_WORDS = {
    "seed": "Plant a seed: welcome, who we are, what to expect",
    "educate": "Teach: how-tos, tips, quick wins",
    "case_study": "Tell a customer's story",
    "sample": "Give a sample of what comes next",
    "offer": "Make an offer",
    "referral": "Ask for a referral",
}
STARTS = {
    "layer": "they enter the layer",
    "purchase": "the purchase",
    "enquiry": "the enquiry",
    "referral": "the referral",
}
UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
DAY_WORDS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# What an edit does to people already in the sequence (see the module docstring).
ON_ENROLLED = (
    "Nobody gets a step twice, whatever you change.",
    "A change to a step's template, purpose, window or condition applies to everyone who has not had that step yet.",
    "A new delay counts for people who have not yet had the step before it; people already "
    "waiting for the step keep the time they were given.",
    "A new step goes at the end: people still in the sequence get it when they get there; "
    "people who have finished the sequence do not.",
    "A step moved up reaches the people who have not yet passed its new place; people already past it do not get it.",
    "Only a step nobody has been sent can be removed; people waiting for it get the next step "
    "instead, when it was due.",
)
SAVED = {
    "created": "Sequence created. Add its steps now: someone who joins a sequence without steps gets nothing from it.",
    "added": "Step added at the end. People already in this sequence get it when they get there; "
    "people who have finished the sequence do not.",
    "changed": "Step saved. It applies to everyone who has not had this step yet; nobody gets it "
    "twice, and people already waiting for it keep the time they were given.",
    "moved": "Step moved. It reaches the people who have not yet passed its new place; nobody gets a step twice.",
    "removed": "Step removed. People who were waiting for it get the next step instead, when it was due.",
}


def _int(raw: str) -> int:
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


def duration_words(seconds: int) -> str:
    """``172800`` → "2 days" (the unit ``format_duration`` picks)."""
    text = format_duration(seconds)
    count, unit = int(text[:-1]), text[-1]
    return f"{count} {UNIT_WORDS[unit]}{'' if count == 1 else 's'}"


def when_words(delay_s: int, *, first: bool, trigger: str) -> str:
    if first:
        return "at once" if delay_s == 0 else f"{duration_words(delay_s)} after {STARTS.get(trigger, 'it starts')}"
    return "right after the previous step" if delay_s == 0 else f"{duration_words(delay_s)} after the previous step"


def _day_set(window: dict[str, Any]) -> list[str]:
    return [DAY_NAMES[i] for i in sorted(_days(window.get("days")))]


def window_words(window: dict[str, Any] | None) -> str:
    if not window:
        return "any day, any time"
    days = _day_set(window)
    indexes = [DAY_NAMES.index(d) for d in days]
    if len(days) == 7:
        named = "every day"
    elif len(days) > 2 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        named = f"{DAY_WORDS[indexes[0]]}–{DAY_WORDS[indexes[-1]]}"
    else:
        named = ", ".join(DAY_WORDS[i] for i in indexes)
    return f"{named}, {window.get('start', '00:00')}–{window.get('end', '23:59')} their time"


def condition_words(condition: dict[str, Any] | None) -> str:
    if not condition:
        return "everyone"
    parts = []
    if condition.get("skip_if_purchased"):
        parts.append("skipped for people who have bought")
    if condition.get("require_tags"):
        parts.append("only for people tagged " + ", ".join(condition["require_tags"]))
    if condition.get("skip_if_tags"):
        parts.append("not for people tagged " + ", ".join(condition["skip_if_tags"]))
    return "; ".join(parts)


def sequence_title(sequence: Sequence) -> str:
    if sequence.trigger == "purchase":
        return f"After a purchase of “{sequence.product}”" if sequence.product else "After any purchase"
    if sequence.trigger == "enquiry":
        return "After an enquiry (a question or a reply)"
    if sequence.trigger == "referral":
        return "After a referral (thanks the person who referred)"
    return "Main sequence"


def _tags(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text) if t]


def step_input(form: Any) -> dict[str, Any]:
    """The editor's form as the service's step input: days ticked and times as the send window
    (none of either: any time), the condition's boxes and tag lists (none: everyone)."""
    ticked = [d for d in DAY_NAMES if d in form.getall("days", [])]
    start, end = str(form.get("start", "")).strip(), str(form.get("end", "")).strip()
    window: dict[str, Any] | None = None
    if ticked or start or end:
        indexes = [DAY_NAMES.index(d) for d in ticked]
        days: str | list[str]
        if not ticked or len(ticked) == 7:
            days = "mon-sun"
        elif indexes == list(range(indexes[0], indexes[-1] + 1)):
            days = f"{ticked[0]}-{ticked[-1]}"
        else:
            days = ticked
        window = {"days": days, "start": start or "00:00", "end": end or "23:59"}
    condition: dict[str, Any] = {}
    if form.get("skip_if_purchased") == "1":
        condition["skip_if_purchased"] = True
    for key in ("require_tags", "skip_if_tags"):
        tags = _tags(str(form.get(key, "")))
        if tags:
            condition[key] = tags
    return {
        "delay": str(form.get("delay", "")).strip(),
        "template": str(form.get("template", "")),
        "purpose": str(form.get("purpose", "")),
        "send_window": window,
        "condition": condition or None,
    }


def _form_of(step: Step | None, *, first: bool) -> dict[str, Any]:
    """The editor's fields for a step (a new one: at once when first, else two days later)."""
    if step is None:
        return {"delay": "0s" if first else "2d", "template": "", "purpose": "educate", "days": []}
    window, condition = step.send_window or {}, step.condition or {}
    return {
        "delay": format_duration(step.delay_s),
        "template": step.template_name,
        "purpose": step.purpose,
        "days": _day_set(window) if window else [],
        "start": window.get("start", ""),
        "end": window.get("end", ""),
        "skip_if_purchased": bool(condition.get("skip_if_purchased")),
        "require_tags": ", ".join(condition.get("require_tags", [])),
        "skip_if_tags": ", ".join(condition.get("skip_if_tags", [])),
    }


def _kept(form: Any) -> dict[str, Any]:
    """What was typed, to show again beside an error."""
    kept: dict[str, Any] = {
        key: str(form.get(key, ""))[:400]
        for key in ("delay", "template", "purpose", "start", "end", "require_tags", "skip_if_tags")
    }
    kept["days"] = [d for d in form.getall("days", []) if d in DAY_NAMES]
    kept["skip_if_purchased"] = form.get("skip_if_purchased") == "1"
    return kept


def _step_view(
    step: Step, sequence: Sequence, index: int, count: int, figures: StepFigures, waiting: int, subjects: dict[str, str]
) -> dict[str, Any]:
    return {
        "id": step.id,
        "number": index + 1,
        "position": step.position,
        "when": when_words(step.delay_s, first=index == 0, trigger=sequence.trigger),
        "delay": format_duration(step.delay_s),
        "purpose": PURPOSE_WORDS.get(step.purpose, step.purpose),
        "template": step.template_name,
        "subject": subjects.get(step.template_name),
        "window": window_words(step.send_window),
        "condition": condition_words(step.condition),
        "figures": figures,
        "waiting": waiting,
        "first": index == 0,
        "last": index == count - 1,
    }


async def _sequence_views(request: web.Request) -> tuple[list[Layer], list[dict[str, Any]]]:
    rt = runtime(request)
    async with rt.db.read() as session:
        layers = list(
            (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
        )
        rows = list((await session.execute(select(Sequence).order_by(Sequence.id))).scalars())
        steps = list((await session.execute(select(Step).order_by(Step.sequence_id, Step.position))).scalars())
        figures = await step_figures(session)
        people, waiting = await sequences.enrolled_now(session, rt.clock.now())
    subjects = {t["name"]: t["subject"] for t in await service.list_templates(rt)}
    views = []
    for sequence in rows:
        own = [s for s in steps if s.sequence_id == sequence.id]
        views.append(
            {
                "id": sequence.id,
                "name": sequence.name,
                "trigger": sequence.trigger,
                "layer_id": sequence.layer_id,
                "title": sequence_title(sequence),
                "people": people.get(sequence.id, 0),
                "steps": [
                    _step_view(
                        step,
                        sequence,
                        i,
                        len(own),
                        figures.get(step.id, StepFigures()),
                        waiting.get(step.id, 0),
                        subjects,
                    )
                    for i, step in enumerate(own)
                ],
            }
        )
    return layers, views


async def _overview(
    request: web.Request,
    *,
    status: int = 200,
    error: str | None = None,
    error_field: str | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    layers, views = await _sequence_views(request)
    # A layer's main sequence is its first one (as ``enrollments.layer_sequence`` picks it).
    main: dict[int, dict[str, Any]] = {}
    for view in views:
        if view["trigger"] == "layer" and view["layer_id"] is not None:
            main.setdefault(view["layer_id"], view)
    saved = request.query.get("saved", "")
    return render(
        request,
        "sequences.html",
        status=status,
        layers=[{"layer": layer, "sequence": main.get(layer.id)} for layer in layers],
        triggered=[v for v in views if v["trigger"] in TRIGGERS],
        on_enrolled=ON_ENROLLED,
        notice=SAVED.get(saved) if saved != "created" else None,
        notice_sequence=_int(request.query.get("sequence", "")),
        error=error,
        error_field=error_field,
        form=form or {"trigger": "purchase"},
    )


@routes.get("/sequences")
async def index(request: web.Request) -> web.Response:
    return await _overview(request)


@routes.post("/sequences")
async def create(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    kept = {key: str(form.get(key, ""))[:400] for key in ("name", "trigger", "product")}
    data: dict[str, Any] = {"name": kept["name"], "trigger": kept["trigger"]}
    if kept["product"].strip():
        data["product"] = kept["product"]
    try:
        async with rt.db.transaction() as session:
            sequence = await sequences.create_sequence(session, data, rt.clock.now(), rt.settings, rt.renderer)
            sequence_id = sequence.id
    except ValidationError as exc:
        return await _overview(request, status=exc.status, error=exc.message, error_field=exc.field, form=kept)
    return see_other(f"/admin/sequences/{sequence_id}/steps/new?saved=created")


async def _editor(
    request: web.Request,
    sequence_id: int,
    step_id: int | None,
    *,
    status: int = 200,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    error_field: str | None = None,
) -> web.Response:
    rt = runtime(request)
    _, views = await _sequence_views(request)
    view = next((v for v in views if v["id"] == sequence_id), None)
    async with rt.db.read() as session:
        sequence = await sequences.get_sequence(session, sequence_id)
        step = await sequences.get_step(session, sequence_id, step_id) if step_id else None
        layer = await session.get(Layer, sequence.layer_id) if sequence.layer_id else None
    assert view is not None
    step_view = next((s for s in view["steps"] if s["id"] == step_id), None)
    first = step_view["first"] if step_view else not view["steps"]
    values = form or _form_of(step, first=first)
    # Only templates written for list mail: not the confirmation or the acknowledgement.
    templates = [t for t in await service.list_templates(rt) if pickable(t["name"], t["purpose"], "step")]
    if values.get("template") and all(t["name"] != values["template"] for t in templates):
        templates.append({"name": values["template"], "subject": ""})
    if not values.get("template") and templates:
        values["template"] = templates[0]["name"]
    saved = request.query.get("saved", "")
    return render(
        request,
        "sequences_step.html",
        status=status,
        sequence=view,
        layer=layer,
        step=step_view,
        form=values,
        templates=templates,
        purposes=PURPOSE_WORDS,
        days=list(zip(DAY_NAMES, DAY_WORDS, strict=True)),
        on_enrolled=ON_ENROLLED,
        notice=SAVED.get(saved) if saved == "created" else None,
        error=error,
        error_field=error_field,
    )


@routes.get("/sequences/{sequence:\\d+}/steps/new")
async def new_step(request: web.Request) -> web.Response:
    return await _editor(request, _int(request.match_info["sequence"]), None)


@routes.post("/sequences/{sequence:\\d+}/steps")
async def add_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    sequence_id = _int(request.match_info["sequence"])
    form = await request.post()
    try:
        async with rt.db.transaction() as session:
            await sequences.add_step(session, sequence_id, step_input(form), rt.settings, rt.renderer)
    except (ValidationError, TemplateError) as exc:
        return await _editor(
            request, sequence_id, None, status=exc.status, form=_kept(form), error=exc.message, error_field=exc.field
        )
    return see_other(f"/admin/sequences?saved=added&sequence={sequence_id}#sequence-{sequence_id}")


@routes.get("/sequences/{sequence:\\d+}/steps/{step:\\d+}")
async def edit_step(request: web.Request) -> web.Response:
    return await _editor(request, _int(request.match_info["sequence"]), _int(request.match_info["step"]))


@routes.post("/sequences/{sequence:\\d+}/steps/{step:\\d+}")
async def change_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    sequence_id, step_id = _int(request.match_info["sequence"]), _int(request.match_info["step"])
    form = await request.post()
    try:
        async with rt.db.transaction() as session:
            await sequences.update_step(session, sequence_id, step_id, step_input(form), rt.settings, rt.renderer)
    except (ValidationError, TemplateError) as exc:
        return await _editor(
            request, sequence_id, step_id, status=exc.status, form=_kept(form), error=exc.message, error_field=exc.field
        )
    return see_other(f"/admin/sequences?saved=changed&sequence={sequence_id}#step-{step_id}")


@routes.post("/sequences/{sequence:\\d+}/steps/{step:\\d+}/move")
async def move_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    sequence_id, step_id = _int(request.match_info["sequence"]), _int(request.match_info["step"])
    form = await request.post()
    try:
        async with rt.db.transaction() as session:
            await sequences.move_step(session, sequence_id, step_id, str(form.get("direction", "")))
    except ValidationError as exc:
        return await _overview(request, status=exc.status, error=exc.message)
    return see_other(f"/admin/sequences?saved=moved&sequence={sequence_id}#step-{step_id}")


@routes.post("/sequences/{sequence:\\d+}/steps/{step:\\d+}/remove")
async def remove_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    sequence_id, step_id = _int(request.match_info["sequence"]), _int(request.match_info["step"])
    try:
        async with rt.db.transaction() as session:
            await sequences.delete_step(session, sequence_id, step_id)
    except Conflict as exc:
        return await _overview(request, status=exc.status, error=exc.message)
    return see_other(f"/admin/sequences?saved=removed&sequence={sequence_id}#sequence-{sequence_id}")
