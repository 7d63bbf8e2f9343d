"""Layers: the funnel's rungs, built by the admin. Add, rename, relabel, describe, reorder and
remove layers (removal after a page saying what happens to the layer's subscribers), and write
each layer's rule in plain words or as JSON, with a what-if before saving.

Every change goes through the service functions the API uses (``funnel.layers``; a rule is
checked by ``core.promotion.validate_rule`` only), the what-if through the judge in read-only
mode (``funnel.judge.what_if``), the words through ``core.rule_words``. Forms carry the layer's
id beside its position, so a form from a page loaded before the layers were reordered or
removed changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ....core.promotion import validate_rule
from ....core.rule_words import (
    EVENT_WORDS,
    FORM_FIELDS,
    UNIT_WORDS,
    duration_words,
    error_in_words,
    fields_from_rule,
    rule_from_fields,
    rule_sentences,
)
from ....core.schedule import format_duration
from ....errors import ValidationError
from ....funnel import layers as service
from ....funnel.judge import WhatIf, judge, what_if
from ....models import Layer, Sequence, Step, Subscriber, SubscriberCount
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Layers", "/admin/layers", 30)
routes = web.RouteTableDef()
LAYER = "/layers/{position:\\d{1,3}}"
NOTICES = {
    "added": "Layer added, with an empty sequence and the default rule.",
    "saved": "Saved.",
    "moved": "Order changed. Each layer kept its subscribers, its sequence and its rule.",
}
UNITS = [(unit, f"{word}s") for unit, word in UNIT_WORDS.items()]


@dataclass
class Failed:
    """A form the admin sent that was refused: which form, the field at fault, what to say."""

    form: str
    message: str
    field: str | None = None
    values: dict[str, Any] = dataclasses.field(default_factory=dict)


def _failed(form: str, exc: ValidationError, values: dict[str, Any], fields: tuple[str, ...]) -> Failed:
    """``exc`` shown next to its field when the form has it, else above the form."""
    return Failed(form, exc.message, exc.field if exc.field in fields else None, values)


def _position(request: web.Request) -> int:
    return int(request.match_info["position"])


async def _layer(session: AsyncSession, position: int, form: MultiMapping[Any]) -> Layer:
    """The layer at ``position``, if it is still the one the form was made for."""
    layer = await service.layer_at(session, position)
    if str(form.get("layer_id", "")) != str(layer.id):
        raise ValidationError("The layers changed since this page was loaded: look at them again, then retry.")
    return layer


def _text(form: MultiMapping[Any], *names: str) -> dict[str, str]:
    return {name: str(form.get(name, ""))[:4000] for name in names}


# The list of layers


async def _overview(session: AsyncSession) -> list[dict[str, Any]]:
    layers = await service.active_layers(session)
    counts = await service.counts(session)
    steps = {
        layer_id: (int(count), int(span))
        for layer_id, count, span in await session.execute(
            select(Sequence.layer_id, func.count(Step.id), func.coalesce(func.sum(Step.delay_s), 0))
            .join(Step, Step.sequence_id == Sequence.id)
            .where(Sequence.trigger == "layer")
            .group_by(Sequence.layer_id)
        )
    }
    top = len(layers)
    return [
        {
            "layer": layer,
            "active": counts.get(layer.id, 0),
            "sentences": rule_sentences(layer.rule or {}, position=layer.position, top_position=top),
            "steps": steps.get(layer.id, (0, 0))[0],
            "span": duration_words(format_duration(steps.get(layer.id, (0, 0))[1])),
        }
        for layer in layers
    ]


async def _page(request: web.Request, *, status: int = 200, failed: Failed | None = None) -> web.Response:
    async with runtime(request).db.read() as session:
        rows = await _overview(session)
    notice = NOTICES.get(request.query.get("notice", ""))
    if request.query.get("notice") == "removed":
        moved, to = (request.query.get(k, "")[:9] for k in ("moved", "to"))
        if moved.isdigit() and to.isdigit():
            notice = f"Layer removed. {moved} subscriber{'' if moved == '1' else 's'} moved to layer {to}."
    return render(
        request,
        "layers.html",
        status=status,
        layers=rows,
        notice=notice,
        failed=failed,
        min_layers=service.MIN_LAYERS,
        max_layers=service.MAX_LAYERS,
    )


@routes.get("/layers")
async def index(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/layers")
async def add(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    values = _text(form, "name", "label", "description", "position")
    try:
        position = int(values["position"]) if values["position"].isdigit() else None
        data: dict[str, Any] = {k: values[k] for k in ("name", "label", "description")}
        if position is not None:
            data["position"] = position
        async with rt.db.transaction() as session:
            layer = await service.create_layer(session, data, rt.clock.now())
            placed = layer.position
    except ValidationError as exc:
        return await _page(request, status=exc.status, failed=_failed("add", exc, values, tuple(values)))
    return see_other(f"/admin/layers?notice=added#layer-{placed}")


@routes.post(LAYER)
async def edit(request: web.Request) -> web.Response:
    rt = runtime(request)
    position = _position(request)
    form = await request.post()
    values = _text(form, "name", "label", "description")
    try:
        async with rt.db.transaction() as session:
            await _layer(session, position, form)
            await service.update_layer(session, position, values)
    except ValidationError as exc:
        return await _page(request, status=exc.status, failed=_failed(f"edit-{position}", exc, values, tuple(values)))
    return see_other(f"/admin/layers?notice=saved#layer-{position}")


@routes.post(LAYER + "/move")
async def move(request: web.Request) -> web.Response:
    """Swap the layer with the one before (``direction=up``) or after it (``down``)."""
    rt = runtime(request)
    position = _position(request)
    form = await request.post()
    to = position - 1 if form.get("direction") == "up" else position + 1
    try:
        async with rt.db.transaction() as session:
            await _layer(session, position, form)
            count = len(await service.active_layers(session))
            if not 1 <= to <= count:
                where = "first" if to < 1 else "last"
                raise ValidationError(f"Layer {position} is the {where} already.", field="position")
            order = list(range(1, count + 1))
            order[position - 1], order[to - 1] = to, position
            await service.reorder_layers(session, order)
    except ValidationError as exc:
        return await _page(request, status=exc.status, failed=Failed(f"edit-{position}", exc.message))
    return see_other(f"/admin/layers?notice=moved#layer-{to}")


# Removing a layer: first a page saying what happens to its subscribers


async def _remove_page(
    request: web.Request, position: int, *, status: int = 200, failed: Failed | None = None
) -> web.Response:
    async with runtime(request).db.read() as session:
        layer = await service.layer_at(session, position)
        layers = await service.active_layers(session)
        by_status = dict(
            (
                await session.execute(
                    select(SubscriberCount.status, SubscriberCount.n).where(SubscriberCount.layer_id == layer.id)
                )
            ).all()
        )
        steps = (
            await session.execute(
                select(func.count(Step.id))
                .join(Sequence, Sequence.id == Step.sequence_id)
                .where(Sequence.layer_id == layer.id, Sequence.trigger == "layer")
            )
        ).scalar_one()
    others = [other for other in layers if other.id != layer.id]
    default_to = position - 1 if position > 1 else 2
    return render(
        request,
        "layer_remove.html",
        status=status,
        layer=layer,
        others=others,
        move_to=_move_to(failed.values.get("move_to", "")) or default_to if failed else default_to,
        active=by_status.get("active", 0),
        inactive=sum(by_status.values()) - by_status.get("active", 0),
        steps=steps,
        can_remove=len(layers) > service.MIN_LAYERS,
        min_layers=service.MIN_LAYERS,
        failed=failed,
    )


def _move_to(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and len(raw) < 4 else None


@routes.get(LAYER + "/remove")
async def remove_form(request: web.Request) -> web.Response:
    return await _remove_page(request, _position(request))


@routes.post(LAYER + "/remove")
async def remove(request: web.Request) -> web.Response:
    rt = runtime(request)
    position = _position(request)
    form = await request.post()
    values = _text(form, "move_to")
    move_to = _move_to(values["move_to"])
    try:
        async with rt.db.transaction() as session:
            await _layer(session, position, form)
            moved = await service.remove_layer(session, position, move_to, rt.clock.now())
    except ValidationError as exc:
        return await _remove_page(
            request, position, status=exc.status, failed=_failed("remove", exc, values, ("move_to",))
        )
    rt.wake_scheduler()  # the moved subscribers' first steps in their new layer
    assert move_to is not None
    to = move_to - 1 if move_to > position else move_to  # the layers above closed the gap
    return see_other(f"/admin/layers?notice=removed&moved={moved}&to={to}")


# A layer's rule: a form in words, the JSON for experts, a what-if before saving


def _no_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not a number JSON allows", field="rule_json")


@dataclass
class Candidate:
    """The rule a rule form describes, or why it does not describe one."""

    source: str  # form | json
    fields: dict[str, Any]
    json_text: str
    rule: dict[str, Any] | None = None
    failed: Failed | None = None


def _candidate(form: MultiMapping[Any]) -> Candidate:
    """Read a rule form: the words form (``source=form``) or the JSON textarea; validated by
    ``validate_rule``, the one check of rules."""
    if form.get("source") == "json":
        text = str(form.get("rule_json", ""))[:20000]
        candidate = Candidate("json", {}, text)
        try:
            rule = validate_rule(json.loads(text or "{}", parse_constant=_no_constant))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError, or nested too deep
            candidate.failed = Failed("rule", f"That is not JSON a rule can be: {exc}", "rule_json")
            return candidate
        except ValidationError as exc:
            candidate.failed = Failed("rule", exc.message, "rule_json")
            return candidate
        candidate.rule, candidate.fields = rule, fields_from_rule(rule)
        return candidate
    fields: dict[str, Any] = _text(form, *FORM_FIELDS)
    fields["up_on"] = [str(t) for t in form.getall("up_on", []) if t in EVENT_WORDS]
    candidate = Candidate("form", fields, "")
    try:
        rule = rule_from_fields(fields, fields["up_on"])
    except ValidationError as exc:
        candidate.failed = Failed("rule", exc.message, exc.field)
        return candidate
    candidate.json_text = json.dumps(rule, indent=2)
    try:
        candidate.rule = validate_rule(rule)
    except ValidationError as exc:
        at, message = error_in_words(exc)
        candidate.failed = Failed("rule", message, at)
        return candidate
    candidate.json_text = json.dumps(candidate.rule, indent=2)
    return candidate


async def _rule_page(
    request: web.Request,
    position: int,
    *,
    status: int = 200,
    candidate: Candidate | None = None,
    checked: WhatIf | None = None,
) -> web.Response:
    async with runtime(request).db.read() as session:
        layer = await service.layer_at(session, position)
        top = len(await service.active_layers(session))
        active = (await service.counts(session)).get(layer.id, 0)
    saved = layer.rule or {}
    if candidate is None:
        candidate = Candidate("form", fields_from_rule(saved), json.dumps(saved, indent=2), saved)
    # A refused form shows the other one as saved.
    candidate.fields = candidate.fields or fields_from_rule(saved)
    candidate.json_text = candidate.json_text or json.dumps(saved, indent=2)
    shown = candidate.rule if candidate.rule is not None else saved
    notice = None
    if request.query.get("notice") == "saved":
        moved = request.query.get("moved", "")[:9]
        notice = (
            f"Saved, and judged everyone in the layer now: {moved} moved."
            if moved.isdigit()
            else "Saved. Each person in this layer is judged by it at their next event; "
            "silence (moving down, stopping mail) at the hourly sweep."
        )
    return render(
        request,
        "layer_rule.html",
        status=status,
        layer=layer,
        top=top,
        active=active,
        c=candidate,
        f=candidate.fields,
        failed=candidate.failed,
        sentences=rule_sentences(shown, position=position, top_position=top),
        checked=checked,
        events=EVENT_WORDS,
        units=UNITS,
        notice=notice,
    )


@routes.get(LAYER + "/rule")
async def rule_form(request: web.Request) -> web.Response:
    return await _rule_page(request, _position(request))


@routes.post(LAYER + "/rule")
async def rule_post(request: web.Request) -> web.Response:
    """Check (the what-if, nothing written) or save the rule a form describes."""
    rt = runtime(request)
    position = _position(request)
    form = await request.post()
    candidate = _candidate(form)
    if candidate.rule is None:
        return await _rule_page(request, position, status=400, candidate=candidate)
    now = rt.clock.now()
    try:
        if form.get("do") != "save":
            async with rt.db.read() as session:
                checked = await what_if(session, await _layer(session, position, form), candidate.rule, now)
            return await _rule_page(request, position, candidate=candidate, checked=checked)
        async with rt.db.transaction() as session:
            layer = await _layer(session, position, form)
            await service.update_layer(session, position, {"rule": candidate.rule})
            moved = None
            if form.get("apply"):
                ids = (
                    await session.execute(
                        select(Subscriber.id).where(Subscriber.layer_id == layer.id, Subscriber.status == "active")
                    )
                ).scalars()
                moved = len(await judge(session, list(ids), now))
    except ValidationError as exc:
        candidate.failed = Failed("rule", exc.message)
        return await _rule_page(request, position, status=exc.status, candidate=candidate)
    if moved is None:
        return see_other(f"/admin/layers/{position}/rule?notice=saved")
    rt.wake_scheduler()  # the first steps of those who moved up or down
    return see_other(f"/admin/layers/{position}/rule?notice=saved&moved={moved}")


@routes.post(LAYER + "/rule/words")
async def rule_words(request: web.Request) -> web.Response:
    """The sentence a rule form describes, as it is being written (the page's live summary)."""
    position = _position(request)
    candidate = _candidate(await request.post())
    async with runtime(request).db.read() as session:
        await service.layer_at(session, position)
        top = len(await service.active_layers(session))
    if candidate.rule is None:
        assert candidate.failed is not None
        return web.json_response({"error": candidate.failed.message, "field": candidate.failed.field})
    return web.json_response(
        {
            "sentence": " ".join(rule_sentences(candidate.rule, position=position, top_position=top)),
            "json": json.dumps(candidate.rule, indent=2),
        }
    )
