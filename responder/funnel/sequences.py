"""Sequences and their steps as the admin edits them.

Editing is safe for people already on the way: the outbox keeps each (subscriber, step) pair
once, and an enrollment only moves forward by position, so a changed delay, template or
condition applies to who has not had the step yet and nobody gets a step twice. A step that was
sent to someone cannot be deleted (the outbox points at it); change it instead. A step names a
template that exists and renders as a step (``templating.sendable``), or it is not written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.pacing import validate_condition, validate_window
from ..core.schedule import format_duration, parse_duration
from ..dbutil import get_or_404
from ..errors import Conflict, NotFound, ValidationError
from ..models import Layer, Message, Sequence, Step
from ..settings import Settings
from ..templating.pool import Renderer
from ..templating.sendable import sendable_template
from ..validation import clean_text
from .triggers import TRIGGERS

PURPOSES = ("seed", "educate", "case_study", "sample", "offer", "referral")


def step_json(step: Step) -> dict[str, Any]:
    return {
        "id": step.id,
        "position": step.position,
        "delay": format_duration(step.delay_s),
        "template": step.template_name,
        "purpose": step.purpose,
        "send_window": step.send_window,
        "condition": step.condition,
    }


async def sequence_json(session: AsyncSession, sequence: Sequence) -> dict[str, Any]:
    layer = await session.get(Layer, sequence.layer_id) if sequence.layer_id else None
    steps = (
        await session.execute(select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position))
    ).scalars()
    return {
        "id": sequence.id,
        "name": sequence.name,
        "trigger": sequence.trigger,
        "product": sequence.product,
        "layer": layer.position if layer and layer.removed_at is None else None,
        "steps": [step_json(s) for s in steps],
    }


async def list_sequences(session: AsyncSession) -> list[dict[str, Any]]:
    sequences = (await session.execute(select(Sequence).order_by(Sequence.id))).scalars().all()
    return [await sequence_json(session, s) for s in sequences]


async def get_sequence(session: AsyncSession, sequence_id: int) -> Sequence:
    sequence = await get_or_404(session, Sequence, sequence_id, "sequence")
    return sequence


async def create_sequence(
    session: AsyncSession, data: dict[str, Any], now: dt.datetime, settings: Settings, renderer: Renderer | None = None
) -> Sequence:
    """A triggered sequence (layers' main sequences come with their layers), with its steps."""
    name = clean_text(data.get("name"), "name", max_len=120, required=True)
    trigger = data.get("trigger")
    if trigger not in TRIGGERS:
        raise ValidationError(f"trigger must be one of {', '.join(TRIGGERS)}", field="trigger")
    product = data.get("product")
    if product is not None:
        if trigger != "purchase":
            raise ValidationError("product applies to purchase sequences only", field="product")
        product = clean_text(product, "product", max_len=120, required=True)
    if (await session.execute(select(Sequence.id).where(Sequence.name == name))).scalar():
        raise ValidationError(f"a sequence named {name!r} exists already", field="name")
    sequence = Sequence(name=name, layer_id=None, trigger=trigger, product=product, created_at=now)
    session.add(sequence)
    await session.flush()
    for step in data.get("steps") or []:
        await add_step(session, sequence.id, step, settings, renderer)
    return sequence


def _step_values(data: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("a step must be an object", field="steps")
    values: dict[str, Any] = {}
    if not partial or "delay" in data:
        delay = data.get("delay", "0s")
        if not isinstance(delay, str):
            raise ValidationError("delay must be a duration such as 90s, 2h, 3d", field="delay")
        values["delay_s"] = parse_duration(delay)
    if not partial or "template" in data:
        values["template_name"] = clean_text(data.get("template"), "template", max_len=120, required=True)
    if not partial or "purpose" in data:
        if data.get("purpose") not in PURPOSES:
            raise ValidationError(f"purpose must be one of {' | '.join(PURPOSES)}", field="purpose")
        values["purpose"] = data["purpose"]
    if "send_window" in data:
        values["send_window"] = validate_window(data["send_window"])
    if "condition" in data:
        values["condition"] = validate_condition(data["condition"])
    return values


async def add_step(
    session: AsyncSession, sequence_id: int, data: Any, settings: Settings, renderer: Renderer | None = None
) -> Step:
    """Append a step (positions only grow, so enrollments never go back over a sent step)."""
    await get_sequence(session, sequence_id)
    values = _step_values(data, partial=False)
    await sendable_template(session, settings, values["template_name"], "step", renderer)
    last = (await session.execute(select(func.max(Step.position)).where(Step.sequence_id == sequence_id))).scalar()
    step = Step(sequence_id=sequence_id, position=(last or 0) + 1, **values)
    session.add(step)
    await session.flush()
    return step


async def _step(session: AsyncSession, sequence_id: int, step_id: int) -> Step:
    step = await session.get(Step, step_id)
    if step is None or step.sequence_id != sequence_id:
        raise NotFound("no such step in this sequence")
    return step


async def update_step(
    session: AsyncSession,
    sequence_id: int,
    step_id: int,
    data: Any,
    settings: Settings,
    renderer: Renderer | None = None,
) -> Step:
    step = await _step(session, sequence_id, step_id)
    values = _step_values(data, partial=True)
    if "template_name" in values:
        await sendable_template(session, settings, values["template_name"], "step", renderer)
    for key, value in values.items():
        setattr(step, key, value)
    await session.flush()
    return step


async def delete_step(session: AsyncSession, sequence_id: int, step_id: int) -> None:
    step = await _step(session, sequence_id, step_id)
    used = (
        await session.execute(select(func.count()).select_from(Message).where(Message.step_id == step.id))
    ).scalar_one()
    if used:
        raise Conflict(
            f"step {step.position} was already sent {used} times; change its "
            "template or condition instead of deleting it"
        )
    await session.delete(step)
