"""Layers as the admin sees them: list, create, edit, reorder, remove, and manual moves.

There are always 4 to 7 layers, in positions 1..N without gaps. Removing a layer requires
naming where its subscribers go; each of them is moved (and recorded in the layer history)
like any other move. A removed layer keeps its row, because history points at it, with
``removed_at`` set and its position parked at 1000 + id.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.promotion import DEFAULT_RULE, validate_rule
from ..dbutil import get_or_404
from ..errors import NotFound, ValidationError
from ..models import Layer, Sequence, Subscriber
from ..validation import clean_text
from .enrollments import move_layer
from .flow import open_stays

MIN_LAYERS, MAX_LAYERS = 4, 7
PARKED = 1000


async def active_layers(session: AsyncSession) -> list[Layer]:
    return list(
        (await session.execute(select(Layer).where(Layer.removed_at.is_(None)).order_by(Layer.position))).scalars()
    )


async def layer_at(session: AsyncSession, position: Any) -> Layer:
    if isinstance(position, bool) or not isinstance(position, int):
        raise ValidationError("a layer position (integer) is required", field="position")
    layer = (
        await session.execute(select(Layer).where(Layer.position == position, Layer.removed_at.is_(None)))
    ).scalar_one_or_none()
    if layer is None:
        raise NotFound(f"no layer at position {position}")
    return layer


async def counts(session: AsyncSession) -> dict[int, int]:
    """Active subscribers per layer id (kept by triggers, not counted)."""
    return await open_stays(session)


def _fields(data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if not partial or "name" in data:
        values["name"] = clean_text(data.get("name"), "name", max_len=120, required=True)
    if not partial or "label" in data:
        values["label"] = clean_text(data.get("label"), "label", max_len=60, required=True)
    if "description" in data or not partial:
        description = data.get("description") or ""
        if not isinstance(description, str) or len(description) > 2000:
            raise ValidationError("description must be text of at most 2000 characters", field="description")
        values["description"] = description
    if "rule" in data:
        values["rule"] = validate_rule(data["rule"])
    return values


async def _name_free(session: AsyncSession, name: str, layer_id: int | None) -> None:
    other = (await session.execute(select(Layer.id).where(Layer.name == name))).scalar()
    if other is not None and other != layer_id:
        raise ValidationError(f"a layer named {name!r} exists already", field="name")


async def _renumber(session: AsyncSession, ordered: list[Layer]) -> None:
    """Give ``ordered`` the positions 1..N (two steps: positions are unique at every moment)."""
    for layer in ordered:
        await session.execute(update(Layer).where(Layer.id == layer.id).values(position=-layer.id))
    for index, layer in enumerate(ordered, start=1):
        await session.execute(update(Layer).where(Layer.id == layer.id).values(position=index))
        layer.position = index


async def create_layer(session: AsyncSession, data: dict[str, Any], now: dt.datetime) -> Layer:
    """A new layer at ``position`` (default: the top), with an empty main sequence."""
    layers = await active_layers(session)
    if len(layers) >= MAX_LAYERS:
        raise ValidationError(f"there can be at most {MAX_LAYERS} layers", field="position")
    values = _fields(data, partial=False)
    values.setdefault("rule", dict(DEFAULT_RULE))
    await _name_free(session, values["name"], None)
    position = data.get("position", len(layers) + 1)
    if isinstance(position, bool) or not isinstance(position, int) or not (1 <= position <= len(layers) + 1):
        raise ValidationError(f"position must be between 1 and {len(layers) + 1}", field="position")
    layer = Layer(position=PARKED * 10 + len(layers), created_at=now, **values)
    session.add(layer)
    await session.flush()
    layers.insert(position - 1, layer)
    await _renumber(session, layers)
    name = f"{layer.name}: main"
    if (await session.execute(select(Sequence.id).where(Sequence.name == name))).scalar():
        name = f"{name} #{layer.id}"  # a renamed or removed layer's sequence kept the name
    session.add(Sequence(name=name, layer_id=layer.id, trigger="layer", created_at=now))
    await session.flush()
    return layer


async def update_layer(session: AsyncSession, position: int, data: dict[str, Any]) -> Layer:
    layer = await layer_at(session, position)
    values = _fields(data, partial=True)
    if "name" in values:
        await _name_free(session, values["name"], layer.id)
    for key, value in values.items():
        setattr(layer, key, value)
    await session.flush()
    return layer


async def reorder_layers(session: AsyncSession, order: Any) -> list[Layer]:
    """``order`` lists the current positions in their new order, e.g. ``[1, 3, 2, 4, 5]``."""
    layers = await active_layers(session)
    if (
        not isinstance(order, list)
        or sorted(order) != list(range(1, len(layers) + 1))
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in order)
    ):
        raise ValidationError(f"order must list each position 1..{len(layers)} once", field="order")
    by_position = {layer.position: layer for layer in layers}
    ordered = [by_position[p] for p in order]
    await _renumber(session, ordered)
    return ordered


async def remove_layer(session: AsyncSession, position: int, move_to: Any, now: dt.datetime) -> int:
    """Remove a layer, moving its subscribers to the layer at ``move_to``; how many moved."""
    layers = await active_layers(session)
    if len(layers) <= MIN_LAYERS:
        raise ValidationError(f"there must be at least {MIN_LAYERS} layers", field="position")
    layer = await layer_at(session, position)
    if move_to is None:
        raise ValidationError("say where its subscribers go: move_to (a layer position)", field="move_to")
    target = await layer_at(session, move_to)
    if target.id == layer.id:
        raise ValidationError("move_to must be another layer", field="move_to")
    moved = 0
    last_id = 0
    while True:
        batch = list(
            (
                await session.execute(
                    select(Subscriber)
                    .where(Subscriber.layer_id == layer.id, Subscriber.id > last_id)
                    .order_by(Subscriber.id)
                    .limit(500)
                )
            ).scalars()
        )
        for subscriber in batch:
            await move_layer(
                session,
                subscriber,
                target,
                now=now,
                event_ids=[],
                reason=f"layer {layer.position} ({layer.name}) removed",
            )
            moved += 1
        if len(batch) < 500:
            break
        last_id = batch[-1].id
    # Its name is freed for a new layer; history keeps pointing at this row.
    removed_name = f"{layer.name} (removed #{layer.id})"[-120:]
    await session.execute(
        update(Layer).where(Layer.id == layer.id).values(position=PARKED + layer.id, removed_at=now, name=removed_name)
    )
    layer.removed_at, layer.name = now, removed_name
    await _renumber(session, [other for other in layers if other.id != layer.id])
    return moved


async def set_preferred(session: AsyncSession, subscriber_id: int, preferred: Any) -> Subscriber:
    if not isinstance(preferred, bool):
        raise ValidationError("preferred must be true or false", field="preferred")
    subscriber = await get_or_404(session, Subscriber, subscriber_id, "subscriber")
    tags = [t for t in (subscriber.tags or []) if t != "preferred"]
    subscriber.tags = [*tags, "preferred"] if preferred else tags
    return subscriber
