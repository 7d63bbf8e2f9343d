"""Batched tracking writes: opens and clicks go to a bounded in-process queue that one task
flushes in a single transaction every ``track_flush_ms`` or ``track_batch`` events.

The endpoints never wait for the database: when it is locked or down the queue keeps what it
holds (retrying the same batch) and, once full, drops new events and counts them, so memory
stays bounded and the pixel keeps answering. Each flush judges, once per subscriber, whether
the batch's human events promote them (``judge_many``), so promotion happens within a flush of
the event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..events import judge_many
from ..models import Event, Message
from ..runtime import Runtime
from ..sequences.promotion import PROMOTING_TYPES
from .machine import BURST_WINDOW_S, Request, classify

log = logging.getLogger(__name__)
RETRY_PAUSE_S = 0.25
BACKLOG_FACTOR = 10
RECENT_MESSAGES = 10_000
TRAP_REACH_S = 5.0  # a trap hit marks the message's other clicks this close to it as machine


@dataclass(slots=True)
class Hit:
    message_pk: int
    request: Request
    url: str | None = None


@dataclass
class Stats:
    queued: int = 0
    written: int = 0
    dropped: int = 0
    failed_flushes: int = 0


@dataclass
class Tracker:
    rt: Runtime
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        settings = self.rt.settings
        self.max_items = settings.track_queue_max
        self.batch = settings.track_batch
        self.flush_s = settings.track_flush_ms / 1000
        self._items: deque[Hit] = deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._recent_clicks: OrderedDict[int, deque[tuple[dt.datetime, str]]] = OrderedDict()

    def offer(self, hit: Hit) -> bool:
        """Queue one open or click; False (and counted) when the queue is full."""
        if len(self._items) >= self.max_items:
            self.stats.dropped += 1
            return False
        self._items.append(hit)
        self.stats.queued += 1
        self._idle.clear()
        self._arrived.set()
        return True

    def is_burst(self, message_pk: int, url: str, at: dt.datetime) -> bool:
        """Another link of the same mail was clicked within a second: a scanner's sweep."""
        recent = self._recent_clicks.setdefault(message_pk, deque(maxlen=16))
        self._recent_clicks.move_to_end(message_pk)
        while len(self._recent_clicks) > RECENT_MESSAGES:
            self._recent_clicks.popitem(last=False)
        burst = any(abs((at - when).total_seconds()) < BURST_WINDOW_S and other != url
                    for when, other in recent)
        recent.append((at, url))
        return burst

    @property
    def pending(self) -> int:
        return len(self._items)

    async def drained(self) -> None:
        """Wait until everything queued so far is on disk (tests and shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            if not self._items:
                self._idle.set()
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(self._items) < self.batch and not self._stopping:
                # Let a batch gather, but never hold the first event longer than flush_s.
                try:
                    await asyncio.wait_for(self._full(), timeout=self.flush_s)
                except TimeoutError:
                    pass
            # A flush starts at `batch` events; under load it takes what has piled up meanwhile
            # (up to BACKLOG_FACTOR batches), so the writer keeps pace with the requests.
            batch = [self._items[i]
                     for i in range(min(self.batch * BACKLOG_FACTOR, len(self._items)))]
            try:
                await self.flush(batch)
            except Exception:  # database locked, down or full: keep the batch, try again
                self.stats.failed_flushes += 1
                log.exception("tracking: writing %d events failed; retrying", len(batch))
                if self._stopping:
                    return
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            for _ in batch:
                self._items.popleft()
            self.stats.written += len(batch)

    async def _full(self) -> None:
        while len(self._items) < self.batch and not self._stopping:
            self._arrived.clear()
            await self._arrived.wait()

    def stop(self) -> None:
        self._stopping = True
        self._arrived.set()

    async def flush(self, batch: list[Hit]) -> None:
        rt = self.rt
        async with rt.db.transaction() as session:
            pks = {hit.message_pk for hit in batch}
            messages = {row.id: row for row in (await session.execute(
                select(Message.id, Message.subscriber_id, Message.sent_at)
                .where(Message.id.in_(pks)))).all()}
            rows: list[dict[str, object]] = []
            sweeps: list[tuple[int, dt.datetime, str]] = []
            for n, hit in enumerate(batch, start=1):
                if n % self.batch == 0:  # a backlog-sized flush must not stall the pixel
                    await asyncio.sleep(0)
                message = messages.get(hit.message_pk)
                if message is None:  # a validly signed token for a message since deleted
                    continue
                verdict = classify(hit.request, message.sent_at,
                                   after_send_s=rt.settings.machine_after_send_s)
                rows.append(dict(
                    subscriber_id=message.subscriber_id, message_id=message.id,
                    type=hit.request.kind, url=hit.url, ip=hit.request.ip,
                    user_agent=hit.request.user_agent[:512] or None, machine=verdict.machine,
                    data={"machine_reason": verdict.reason} if verdict.machine else {},
                    created_at=hit.request.at))
                if verdict.reason in ("burst", "trap"):
                    sweeps.append((message.id, hit.request.at, verdict.reason))
            if rows:
                await insert_events(session, rows)
            for message_pk, at, reason in sweeps:
                await self._mark_neighbours(session, message_pk, at, reason)
            human: dict[int, set[str]] = {}
            for r in rows:
                if not r["machine"] and r["type"] in PROMOTING_TYPES:
                    human.setdefault(r["subscriber_id"], set()).add(r["type"])  # type: ignore[arg-type]
            moves = await judge_many(session, set(human), rt.clock.now(), human)
        if moves:
            rt.wake_scheduler()

    async def _mark_neighbours(self, session: object, message_pk: int, at: dt.datetime,
                               reason: str) -> None:
        """Clicks already written that belong to the same sweep become machine clicks too."""
        reach = dt.timedelta(seconds=BURST_WINDOW_S if reason == "burst" else TRAP_REACH_S)
        await session.execute(  # type: ignore[attr-defined]
            update(Event)
            .where(Event.message_id == message_pk, Event.type == "click",
                   Event.machine.is_(False), Event.created_at >= at - reach,
                   Event.created_at <= at + reach)
            .values(machine=True, data={"machine_reason": reason})
        )


EVENT_COLUMNS = ("subscriber_id", "message_id", "type", "url", "ip", "user_agent", "machine", "data",
                 "created_at")


async def insert_events(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One driver-level executemany for a batch of events. SQLAlchemy's per-row parameter
    processing cost more than the database did, so values are converted here once: JSON as text,
    timestamps as the UTCDateTime column stores them (naive UTC text on SQLite)."""
    conn = await session.connection()
    sqlite = conn.dialect.name == "sqlite"
    marks = ", ".join("?" if sqlite else f"${i}" for i in range(1, len(EVENT_COLUMNS) + 1))
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})"

    def when(value: dt.datetime) -> object:
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else value

    await conn.exec_driver_sql(sql, [
        (r["subscriber_id"], r["message_id"], r["type"], r["url"], r["ip"], r["user_agent"],
         r["machine"], json.dumps(r["data"]), when(r["created_at"])) for r in rows])
