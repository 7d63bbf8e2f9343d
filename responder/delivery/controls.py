"""Pause and resume of all sending, kept in the database so every worker on every host obeys.

Pausing stops new claims; messages already claimed finish. Resuming lets the next poll claim.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select

from ..db import Database
from ..models import DeliveryControl, Message

PAUSED = "paused"


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str
    since: dt.datetime | None


async def pause_state(db: Database) -> PauseState:
    async with db.read() as session:
        row = await session.get(DeliveryControl, PAUSED)
    if row is None:
        return PauseState(False, "", None)
    return PauseState(row.value == "1", row.reason, row.updated_at)


async def set_paused(db: Database, paused: bool, now: dt.datetime, reason: str = "") -> PauseState:
    async with db.transaction() as session:
        row = await session.get(DeliveryControl, PAUSED)
        if row is None:
            row = DeliveryControl(name=PAUSED, value="0", reason="", updated_at=now)
            session.add(row)
        if (row.value == "1") != paused:
            row.updated_at = now
        row.value = "1" if paused else "0"
        row.reason = reason[:255]
    return PauseState(paused, row.reason, row.updated_at)


async def queue_depth(db: Database) -> dict[str, int]:
    """Messages in the outbox by state."""
    async with db.read() as session:
        rows = await session.execute(select(Message.state, func.count()).group_by(Message.state))
        return {state: count for state, count in rows}
