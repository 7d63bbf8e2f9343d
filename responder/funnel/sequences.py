"""Sequences and their steps as the admin edits them.

Editing is safe for people already on the way: the outbox keeps each (subscriber, step) pair
once, and an enrollment only moves forward by position, so a changed delay, template or
condition applies to who has not had the step yet and nobody gets a step twice. A step that was
sent to someone cannot be deleted (the outbox points at it); change it instead. A step names a
template that exists and renders as a step (``templating.sendable``), or it is not written.
Moving a step swaps its position with its neighbour's and nothing else: a step moved up reaches
those who have not passed its new place, and one moved down past someone who had it is not sent
to them again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.pacing import validate_condition, validate_window
from ..core.schedule import StepPlan, advance, format_duration, parse_duration
from ..dbutil import get_or_404
from ..errors import Conflict, NotFound, ValidationError
from ..models import Enrollment, Layer, Message, Sequence, Step
from ..settings import Settings
from ..templating.pool import Renderer
from ..templating.sendable import sendable_template
from ..validation import clean_text
from .triggers import TRIGGERS

PURPOSES = ("seed", "educate", "case_study", "sample", "offer", "referral")
# Ten years: far beyond any drip, and within the 32-bit column that holds it.
MAX_DELAY_S = 3650 * 86400


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
        try:
            values["delay_s"] = parse_duration(delay)
        except ValidationError as exc:
            raise ValidationError(exc.message, field="delay") from exc
        if values["delay_s"] > MAX_DELAY_S:
            raise ValidationError("delay must be at most 3650d (ten years)", field="delay")
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


async def get_step(session: AsyncSession, sequence_id: int, step_id: int) -> Step:
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
    step = await get_step(session, sequence_id, step_id)
    values = _step_values(data, partial=True)
    if "template_name" in values:
        await sendable_template(session, settings, values["template_name"], "step", renderer)
    for key, value in values.items():
        setattr(step, key, value)
    await session.flush()
    return step


async def delete_step(session: AsyncSession, sequence_id: int, step_id: int) -> None:
    step = await get_step(session, sequence_id, step_id)
    used = (
        await session.execute(select(func.count()).select_from(Message).where(Message.step_id == step.id))
    ).scalar_one()
    if used:
        raise Conflict(
            f"this step was already sent {used} times; change its template or condition instead of deleting it"
        )
    await session.delete(step)


async def move_step(session: AsyncSession, sequence_id: int, step_id: int, direction: str) -> Step:
    """Swap a step with the one before it (``up``) or after it (``down``). Enrollments keep
    their next position, so who gets what follows from the new order (module docstring)."""
    if direction not in ("up", "down"):
        raise ValidationError("direction must be up or down", field="direction")
    step = await get_step(session, sequence_id, step_id)
    query = select(Step).where(Step.sequence_id == sequence_id)
    if direction == "up":
        query = query.where(Step.position < step.position).order_by(Step.position.desc())
    else:
        query = query.where(Step.position > step.position).order_by(Step.position)
    neighbour = (await session.execute(query.limit(1))).scalar_one_or_none()
    if neighbour is None:
        raise ValidationError(f"this step is already the {'first' if direction == 'up' else 'last'}", field="direction")
    mine, theirs = step.position, neighbour.position
    # One row at a time, through a free position: (sequence, position) is unique at every
    # statement on PostgreSQL, not only at commit.
    step.position = -mine
    await session.flush()
    neighbour.position = mine
    await session.flush()
    step.position = theirs
    await session.flush()
    return step


async def enrolled_now(session: AsyncSession, now: dt.datetime) -> tuple[dict[int, int], dict[int, int]]:
    """How many people each sequence has running now (by sequence id), and how many of them
    wait for each step (by step id): the step the stepper sends them next (``advance``)."""
    running = (
        await session.execute(
            select(Enrollment.sequence_id, Enrollment.next_position, func.count())
            .where(Enrollment.state == "active")
            .group_by(Enrollment.sequence_id, Enrollment.next_position)
        )
    ).all()
    positions: dict[int, dict[int, int]] = {}
    for step_id, sequence_id, position in (
        await session.execute(select(Step.id, Step.sequence_id, Step.position))
    ).all():
        positions.setdefault(sequence_id, {})[position] = step_id
    per_sequence: dict[int, int] = {}
    per_step: dict[int, int] = {}
    for sequence_id, next_position, count in running:
        per_sequence[sequence_id] = per_sequence.get(sequence_id, 0) + count
        own = positions.get(sequence_id, {})
        plan = advance([StepPlan(position, 0) for position in own], next_position, now)
        if plan is not None:
            waited = own[plan.send_position]
            per_step[waited] = per_step.get(waited, 0) + count
    return per_sequence, per_step
