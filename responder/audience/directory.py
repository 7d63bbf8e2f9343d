"""What an admin does with subscribers, shared by the JSON API and the web UI: search with
filters and cursor pagination, the timeline of one subscriber, moving layers, tagging."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from ..core.status import STATUSES
from ..dbutil import get_or_404, has_element
from ..errors import Conflict, ValidationError
from ..funnel.enrollments import move_layer
from ..models import Event, Layer, LayerHistory, Message, Subscriber
from ..runtime import Runtime
from ..validation import clean_text

_S = TypeVar("_S", bound=Select)  # type: ignore[type-arg]
TAG = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
MAX_PAGE = 200
DEFAULT_PAGE = 50
TIMELINE_LIMIT = 200


def clean_tag(value: object, field: str = "tag") -> str:
    if not isinstance(value, str) or not TAG.match(value):
        raise ValidationError("a tag is 1-40 letters, digits, '-' or '_'", field=field)
    return value


def parse_int(value: str | None, field: str, *, low: int, high: int) -> int | None:
    if value in (None, ""):
        return None
    assert value is not None
    if not re.fullmatch(r"\d{1,9}", value) or not low <= int(value) <= high:
        raise ValidationError(f"{field} must be a whole number from {low} to {high}", field=field)
    return int(value)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"id": last_id}).encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> int | None:
    if not value:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        last_id = raw["id"]
        if not isinstance(last_id, int) or isinstance(last_id, bool) or last_id < 0:
            raise ValueError
        return last_id
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationError("cursor is not one this API handed out", field="cursor") from exc


@dataclass(frozen=True)
class SubscriberFilter:
    layer: int | None = None  # layer position
    tag: str | None = None
    status: str | None = None
    text: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> SubscriberFilter:
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}", field="status")
        tag = query.get("tag") or None
        return cls(
            layer=parse_int(query.get("layer"), "layer", low=1, high=99),
            tag=clean_tag(tag) if tag is not None else None,
            status=status,
            text=clean_text(query.get("q"), "q", max_len=200) or None,
        )

    def apply(self, stmt: _S) -> _S:
        if self.layer is not None:
            stmt = stmt.where(
                Subscriber.layer_id == select(Layer.id).where(Layer.position == self.layer).scalar_subquery()
            )
        if self.status is not None:
            stmt = stmt.where(Subscriber.status == self.status)
        if self.tag is not None:
            stmt = stmt.where(has_element(Subscriber.tags, self.tag))
        if self.text is not None:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(
                or_(Subscriber.email.ilike(pattern, escape="\\"), Subscriber.name.ilike(pattern, escape="\\"))
            )
        return stmt


@dataclass(frozen=True)
class Page:
    items: list[tuple[Subscriber, Layer | None]]
    next_cursor: str | None


async def list_subscribers(
    session: AsyncSession, flt: SubscriberFilter, *, cursor: str | None = None, limit: int = DEFAULT_PAGE
) -> Page:
    """Newest first; the cursor is the last id seen, so pages stay stable while rows arrive."""
    after = decode_cursor(cursor)
    stmt = flt.apply(select(Subscriber, Layer).outerjoin(Layer, Layer.id == Subscriber.layer_id))
    if after is not None:
        stmt = stmt.where(Subscriber.id < after)
    rows = (await session.execute(stmt.order_by(Subscriber.id.desc()).limit(limit + 1))).all()
    items: list[tuple[Subscriber, Layer | None]] = [(s, layer) for s, layer in rows[:limit]]
    return Page(items, encode_cursor(items[-1][0].id) if len(rows) > limit else None)


async def get_subscriber(session: AsyncSession, subscriber_id: int) -> Subscriber:
    subscriber = await get_or_404(session, Subscriber, subscriber_id, "subscriber")
    return subscriber


@dataclass(frozen=True)
class TimelineItem:
    at: dt.datetime
    kind: str  # event | message | layer
    type: str
    summary: str
    machine: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "type": self.type,
            "summary": self.summary,
            "machine": self.machine,
        }


async def timeline(session: AsyncSession, subscriber_id: int, limit: int = TIMELINE_LIMIT) -> list[TimelineItem]:
    """Events, messages and layer moves of one subscriber, newest first."""
    items: list[TimelineItem] = []
    # A delivered mail is its message's line; its "sent" event would say the same again.
    for event in (
        await session.execute(
            select(Event)
            .where(Event.subscriber_id == subscriber_id, Event.type.not_in(("promoted", "sent")))
            .order_by(Event.created_at.desc(), Event.id.desc())
            .limit(limit)
        )
    ).scalars():
        detail = event.url or ""
        items.append(
            TimelineItem(event.created_at, "event", event.type, f"{event.type} {detail}".strip(), event.machine)
        )
    for message in (
        await session.execute(
            select(Message).where(Message.subscriber_id == subscriber_id).order_by(Message.id.desc()).limit(limit)
        )
    ).scalars():
        items.append(
            TimelineItem(
                message.sent_at or message.created_at,
                "message",
                message.state,
                f"{message.kind} '{message.template_name}': {_message_state(message)}",
            )
        )
    for move in (
        await session.execute(
            select(LayerHistory)
            .where(LayerHistory.subscriber_id == subscriber_id)
            .order_by(LayerHistory.id.desc())
            .limit(limit)
        )
    ).scalars():
        items.append(TimelineItem(move.created_at, "layer", _change_type(move), _change_summary(move)))
    items.sort(key=lambda item: item.at, reverse=True)
    return items[:limit]


def _message_state(message: Message) -> str:
    """What became of a mail, with its times: when it was queued, and when it goes if it waits."""
    queued = f"queued {message.created_at:%Y-%m-%d %H:%M} UTC"
    if message.state == "sent" and message.sent_at is not None:
        return f"delivered {message.sent_at:%Y-%m-%d %H:%M} UTC ({queued})"
    if message.state in ("queued", "deferred") and message.next_attempt_at > message.created_at:
        when = "goes" if message.state == "queued" else "next try"  # held (caps, window, pause) or retried
        return f"{message.state}, {when} {message.next_attempt_at:%Y-%m-%d %H:%M} UTC ({queued})"
    return f"{message.state} ({queued})"


def _layer_name(position: int | None, name: str | None) -> str:
    return f"layer {position if position is not None else '?'}" + (f" ({name})" if name else "")


def _change_type(move: LayerHistory) -> str:
    """up | down (a move), or the kind: enter, relocate, sunset, revive."""
    if move.kind != "move":
        return move.kind
    start, end = move.from_position, move.to_position
    return "down" if start is not None and end is not None and end < start else "up"


def _change_summary(move: LayerHistory) -> str:
    """The change as it read then: positions and names are the layers' at the time."""
    to = _layer_name(move.to_position, move.to_name)
    if move.kind in ("enter", "sunset", "revive"):
        return f"{move.kind} {to}: {move.reason}"
    return f"{_layer_name(move.from_position, move.from_name)} → {to}: {move.reason}"


async def move_subscriber(
    rt: Runtime, subscriber_id: int, position: object, reason: object = None
) -> tuple[Subscriber, Layer]:
    """An admin's explicit move: the old sequence ends, the new layer's sequence starts."""
    if not isinstance(position, int) or isinstance(position, bool):
        if isinstance(position, str) and position.isdigit() and len(position) < 4:
            position = int(position)
        else:
            raise ValidationError("position must be a layer position", field="position")
    why = clean_text(reason, "reason", max_len=200) or "moved by an admin"
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        target = (
            await session.execute(select(Layer).where(Layer.position == position, Layer.removed_at.is_(None)))
        ).scalar_one_or_none()
        if target is None:
            raise ValidationError(f"there is no layer {position}", field="position")
        if subscriber.status != "active":
            raise Conflict(f"only active subscribers move; this one is {subscriber.status}")
        if subscriber.layer_id == target.id:
            raise Conflict(f"the subscriber is already in layer {position}", field="position")
        await move_layer(session, subscriber, target, reason=f"admin: {why}", event_ids=[], now=now)
    rt.wake_scheduler()
    return subscriber, target


async def set_tag(rt: Runtime, subscriber_id: int, tag: object, *, present: bool) -> Subscriber:
    tag = clean_tag(tag)
    async with rt.db.transaction() as session:
        subscriber = await get_subscriber(session, subscriber_id)
        tags = [t for t in subscriber.tags if t != tag]
        # A new list, not an in-place change: the JSON column only notices assignment.
        subscriber.tags = [*tags, tag] if present else tags
    return subscriber
