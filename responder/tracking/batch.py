"""Batched tracking writes: opens and clicks go to a bounded in-process queue that one task
flushes in a single transaction every ``track_flush_ms`` or ``track_batch`` events.

The endpoints never wait for the database: when it is locked or down the queue keeps what it
holds (retrying the same batch) and, once full, drops new events and counts them, so memory
stays bounded and the pixel keeps answering. Whether a batch's human events promote their
subscribers is judged once per subscriber (``funnel.events.follow_activity``), but only when no later hit can turn
those events machine any more: ``machine_window_s`` after the batch's last hit, once every hit
up to then is written (a trap hit or the end of a sweep seconds later re-marks clicks already
written, and the judgement must see that, not undo a promotion).

On a SQLite file a child process (``writer.RowWriter``) turns the batch's hits into rows (the
verdicts included) and writes them; on PostgreSQL, or when that child is gone, this process
builds the rows and writes them. Either way the judgement follows here, in a transaction of its
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import from_micros
from ..core.promotion import PROMOTING_TYPES
from ..db import SQLITE_PRAGMAS, WRITER_PRAGMAS
from ..funnel.events import follow_activity
from ..funnel.facts import touch_activity
from ..models import Event, Message
from ..runtime import Runtime
from .writer import (
    COLUMNS,
    KNOWN_MESSAGES,
    EventRows,
    RecentClicks,
    RowWriter,
    Stored,
    WriteFailed,
    WriterUnavailable,
)

log = logging.getLogger(__name__)
RETRY_PAUSE_S = 0.25
REFUSALS_BEFORE_SPLIT = 3
JUDGE_PAUSE_MAX_S = 60.0  # a judgement failing again and again is retried at most this far apart
BACKLOG_FACTOR = 10


Hit = tuple[Any, ...]  # one open or click, in ``writer.HIT`` order (``writer.hit_of``)


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
        self.window = dt.timedelta(seconds=settings.machine_window_s)
        self._recent = RecentClicks()
        # message id -> (subscriber id, sent at): fixed once a mail is sent, so a flush asks the
        # database only about messages it has not seen (opens cluster on recent mails).
        self._known: OrderedDict[int, tuple[int, dt.datetime | None]] = OrderedDict()
        self._writer = _row_writer(self.rt)
        self._unjudged: dict[int, set[str]] = {}
        # (judge after, subscribers with human events by type): held until no later hit can
        # turn those events machine (``_take_due``).
        self._held: deque[tuple[dt.datetime, dict[int, set[str]]]] = deque()
        self._judge_pause = RETRY_PAUSE_S  # doubles while judging the left subscribers fails

    def offer(self, hit: Hit) -> bool:
        """Queue one open or click; False (and counted) when the queue is full."""
        if len(self._items) >= self.max_items:
            self.stats.dropped += 1
            return False
        items = self._items
        items.append(hit)
        self.stats.queued += 1
        # Wake the writer only when it has something new to decide: the first event (start the
        # flush timer) and a full batch. Waking it on every pixel cost more than the write.
        if len(items) == 1 or len(items) == self.batch:
            self._idle.clear()
            self._arrived.set()
        return True

    @property
    def pending(self) -> int:
        return len(self._items)

    async def drained(self) -> None:
        """Wait until everything queued so far is on disk, and the judgements due by now are
        done (tests and shutdown; a moved fake clock makes judgements due without waking the
        writer, so this wakes it)."""
        if self._held and self._held[0][0] < self._horizon():
            self._idle.clear()
            self._arrived.set()
        await self._idle.wait()

    def _hold(self, human: dict[int, set[str]], batch: list[Hit]) -> None:
        """Hold the batch's judgement until ``window`` after its last hit (``_take_due``)."""
        if human:
            self._held.append((from_micros(max(hit[5] for hit in batch)) + self.window, human))

    def _horizon(self) -> dt.datetime:
        """Every hit before this time is written: the oldest one queued, or now."""
        return from_micros(self._items[0][5]) if self._items else self.rt.clock.now()

    def _take_due(self) -> None:
        """Move the held judgements no later hit can change any more to those to judge now."""
        horizon = self._horizon()
        while self._held and self._held[0][0] < horizon:
            self._unjudged = self._with_unjudged(self._held.popleft()[1])

    def _until_due_s(self) -> float | None:
        """Seconds until the first held judgement is due, if one is held."""
        if not self._held:
            return None
        return max((self._held[0][0] - self.rt.clock.now()).total_seconds(), 0.0) + 0.01

    async def run(self) -> None:
        if self._writer is not None:
            await self._writer.start()
        refusals = 0  # times in a row the database refused the batch for what it holds
        while True:
            if not self._items:
                self._take_due()
                if self._unjudged:
                    if await self._judge_left() or self._items:
                        continue  # events may have arrived while it judged
                    if not self._stopping:  # again after a pause, or with the next batch
                        self._idle.set()  # the events themselves are on disk
                        self._arrived.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._arrived.wait(), self._judge_pause)
                        self._judge_pause = min(self._judge_pause * 2, JUDGE_PAUSE_MAX_S)
                        continue
                    log.error(
                        "tracking: stopping with %d subscribers not judged for promotion; their next event judges them",
                        len(self._unjudged),
                    )
                self._idle.set()
                if self._stopping:
                    if self._held:
                        log.error(
                            "tracking: stopping with %d batches' judgements held; their subscribers' next event"
                            " judges them",
                            len(self._held),
                        )
                    return
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):  # until new events, or a held judgement is due
                    await asyncio.wait_for(self._arrived.wait(), self._until_due_s())
                continue
            if len(self._items) < self.batch and not self._stopping:
                # Let a batch gather, but never hold the first event longer than flush_s.
                try:
                    await asyncio.wait_for(self._full(), timeout=self.flush_s)
                except TimeoutError:
                    pass
            # A flush starts at `batch` events; under load it takes what has piled up meanwhile
            # (up to BACKLOG_FACTOR batches), so the writer keeps pace with the requests.
            batch = [self._items[i] for i in range(min(self.batch * BACKLOG_FACTOR, len(self._items)))]
            try:
                await self.flush(batch)
            except Exception as exc:  # database locked, down or full: keep the batch, try again
                self.stats.failed_flushes += 1
                refusals = refusals + 1 if refused_for_good(exc) else 0
                if refusals >= REFUSALS_BEFORE_SPLIT:  # not the database's state: the data
                    await self._flush_one_by_one(batch, exc)
                    refusals = 0
                    continue
                log.exception("tracking: writing %d events failed; retrying", len(batch))
                if self._stopping:
                    return
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            refusals = 0
            for _ in batch:
                self._items.popleft()
            self.stats.written += len(batch)
            self._take_due()
            if self._unjudged:
                await self._judge_left()

    async def _flush_one_by_one(self, batch: list[Hit], exc: Exception) -> None:
        """A batch refused again and again for what it holds: write its events one by one and
        drop (and count) only those refused, instead of stalling every later event."""
        log.error(
            "tracking: the database keeps refusing a batch of %d events (%s); writing them one by one", len(batch), exc
        )
        for hit in batch:
            try:
                await self.flush([hit])
            except Exception as one:
                if not refused_for_good(one):  # the database's state again: back to batches
                    log.warning("tracking: writing one by one stopped: %s", one)
                    return
                log.error("tracking: dropped an event the database refuses: %s", one)
                self.stats.dropped += 1
            else:
                self.stats.written += 1
            self._items.popleft()

    async def _full(self) -> None:
        while len(self._items) < self.batch and not self._stopping:
            self._arrived.clear()
            await self._arrived.wait()

    def stop(self) -> None:
        self._stopping = True
        self._arrived.set()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

    async def flush(self, batch: list[Hit]) -> None:
        written = False  # by the writer process before it died: then only judged here
        if self._writer is not None:
            try:
                await self._flush_through_writer(batch)
                return
            except WriterUnavailable as exc:  # from now on this process writes, as on PostgreSQL
                log.error("tracking: %s; writing in process", exc)
                self._writer = None
                if exc.in_flight and await self._committed(batch):  # died after COMMIT
                    log.warning(
                        "tracking: the writer process had written its last batch of %d events; judging it here",
                        len(batch),
                    )
                    written = True
        rt = self.rt
        sqlite = rt.db.is_sqlite
        async with rt.db.transaction() as session:
            messages = await self._messages(session, {hit[0] for hit in batch}, sqlite)
            made = EventRows(
                rt.settings.machine_after_send_s, rt.settings.machine_window_s, PROMOTING_TYPES, text_times=sqlite
            )
            async for part in self._in_turns(batch):
                made.add(part, messages)
            check = made.to_check(self._recent)
            if check is not None:
                made.mark(await stored_events(session, *check))
            if not written:
                await touch_activity(session, made.latest())
                if made.rows:
                    await insert_events(session, made.in_index_order(), sqlite=sqlite)
                if made.remarks:
                    await session.execute(
                        update(Event), [{"id": pk, "machine": True, "verdict": reason} for reason, pk in made.remarks]
                    )
        self._hold(made.human(), batch)

    async def _committed(self, batch: list[Hit]) -> bool:
        """Whether a batch the writer process died holding is on disk already (it may die
        between COMMIT and its answer). It writes a batch in one transaction, so the batch's
        first event with a message still there tells: on disk at least as many times (same
        message, type and time to the µs) as the batch holds it."""
        async with self.rt.db.read() as session:
            for hit in batch[:8]:
                message_pk, kind, micros = hit[0], hit[1], hit[5]  # see writer.HIT
                stored = (
                    await session.execute(
                        select(func.count())
                        .select_from(Event)
                        .where(
                            Event.message_id == message_pk, Event.type == kind, Event.created_at == from_micros(micros)
                        )
                    )
                ).scalar_one()
                if stored:
                    return stored >= sum(
                        1 for other in batch if other[0] == message_pk and other[1] == kind and other[5] == micros
                    )
        return False

    async def _flush_through_writer(self, batch: list[Hit]) -> None:
        """SQLite: the hits go to the writer process, which turns them into rows and writes
        them; promotion is judged here later (``_hold``), in a transaction of its own, for the
        subscribers it answers (those with human events some layer's rule watches)."""
        assert self._writer is not None
        written = await self._writer.write(batch)
        self._hold({subscriber_id: set(kinds) for subscriber_id, kinds in written.items()}, batch)

    async def _judge_left(self) -> bool:
        """Judge the subscribers whose judgement is due (``_take_due``) or a failed judgement
        left, without waiting for another event (a quiet list may see none for hours); False if
        it failed."""
        human, self._unjudged = self._unjudged, {}
        try:
            async with self.rt.db.transaction() as session:
                moves = await follow_activity(session, human, self.rt.clock.now())
        except Exception as exc:
            if self._judge_pause == RETRY_PAUSE_S:  # the traceback once, then a line per try
                log.exception("tracking: judging %d subscribers for promotion failed; again shortly", len(human))
            else:
                log.warning("tracking: judging %d subscribers for promotion failed again: %s", len(human), exc)
            self._unjudged = self._with_unjudged(human)
            return False
        self._judge_pause = RETRY_PAUSE_S
        if moves:
            self.rt.wake_scheduler()
        return True

    def _with_unjudged(self, human: dict[int, set[str]]) -> dict[int, set[str]]:
        """``human`` and the subscribers a failed judgement left for a later flush."""
        for subscriber_id, types in self._unjudged.items():
            human.setdefault(subscriber_id, set()).update(types)
        return human

    async def _in_turns(self, batch: list[Hit]) -> AsyncIterator[list[Hit]]:
        """The batch in slices of ``batch`` hits, letting the pixel in between: a
        backlog-sized flush must not stall it."""
        for start in range(0, len(batch), self.batch):
            if start:
                await asyncio.sleep(0)
            yield batch[start : start + self.batch]

    async def _messages(
        self, session: AsyncSession, pks: set[int], sqlite: bool
    ) -> dict[int, tuple[int, dt.datetime | None]]:
        """Subscriber and send time of each message, from memory where known.

        PostgreSQL is asked about every message of the batch (one round trip), so a message
        deleted since it was remembered is never written to. On SQLite each row read hands the
        interpreter lock back and forth with the thread that answers the pixel, so only unknown
        messages are read, and ``insert_events`` itself skips rows of deleted messages.
        """
        known = self._known
        ask = [pk for pk in pks if pk not in known] if sqlite else list(pks)
        found: dict[int, tuple[int, dt.datetime | None]] = {}
        for start in range(0, len(ask), 5000):
            for row in (
                await session.execute(
                    select(Message.id, Message.subscriber_id, Message.sent_at).where(
                        Message.id.in_(ask[start : start + 5000])
                    )
                )
            ).all():
                found[row.id] = (row.subscriber_id, row.sent_at)
        if not sqlite:
            return found
        for pk, value in found.items():
            if value[1] is not None:  # not yet recorded as sent: read again next time
                known[pk] = value
        while len(known) > KNOWN_MESSAGES:
            known.popitem(last=False)
        return {pk: known[pk] for pk in pks if pk in known} | found


async def stored_events(session: AsyncSession, pks: list[int], since: dt.datetime, until: dt.datetime) -> list[Stored]:
    """The opens and clicks already written of these mails between the two times."""
    found: list[Stored] = []
    for start in range(0, len(pks), 5000):
        found += (
            await session.execute(
                select(
                    Event.id,
                    Event.message_id,
                    Event.type,
                    Event.url,
                    Event.ip,
                    Event.machine,
                    Event.verdict,
                    Event.created_at,
                ).where(
                    Event.message_id.in_(pks[start : start + 5000]),
                    Event.type.in_(("open", "click")),
                    Event.created_at >= since,
                    Event.created_at <= until,
                )
            )
        ).all()
    return found


# Rows per statement on SQLite: a batch goes in chunks of these sizes, largest first, so the
# driver compiles each statement once and reuses it (a VALUES list of any other length is a new
# statement to compile, about a quarter of the insert's cost). 9 parameters a row.
SQLITE_CHUNKS = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


def refused_for_good(exc: BaseException) -> bool:
    """An error about the rows themselves (a constraint, text no column can store), which no
    retry will change; a locked, busy, full or unreachable database is not one."""
    if isinstance(exc, WriteFailed):
        return not exc.transient
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    seen: BaseException | None = exc  # drivers wrap the cause (asyncpg: DataError from ValueError)
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, (ValueError, TypeError)) or type(seen).__name__ == "DataError":
            return True
        seen = (seen.orig if isinstance(seen, StatementError) else None) or seen.__cause__
    return False


def _row_writer(rt: Runtime) -> RowWriter | None:
    """A writer process for a SQLite file (``RESPONDER_TRACK_WRITER=process``, the default);
    None writes in process (PostgreSQL, an in-memory database, a ``file:`` URI, or ``=inline``)."""
    url = make_url(rt.db.url)
    path = url.database
    if (
        not rt.db.is_sqlite
        or not path
        or path == ":memory:"
        or url.query.get("mode") == "memory"
        or url.query.get("uri")
        or rt.settings.track_writer != "process"
    ):
        return None
    return RowWriter(
        path,
        SQLITE_PRAGMAS + WRITER_PRAGMAS,
        after_send_s=rt.settings.machine_after_send_s,
        window_s=rt.settings.machine_window_s,
        promoting=PROMOTING_TYPES,
    )


async def insert_events(session: AsyncSession, rows: list[tuple[Any, ...]], *, sqlite: bool) -> None:
    """One batch of events (tuples in ``COLUMNS`` order, JSON as text, times as the
    column stores them), written at driver level: SQLAlchemy's per-row parameter processing
    cost more than the database did.

    SQLite gets one multi-row statement per chunk, not an executemany: the sqlite3 module
    releases the interpreter lock around every row it steps, and under load each re-acquisition
    waits for the thread serving HTTP. The statement also drops rows whose message is gone.
    PostgreSQL (asyncpg, no thread) takes a pipelined executemany.
    """
    conn = await session.connection()
    names = ", ".join(COLUMNS)
    if not sqlite:
        marks = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        await conn.exec_driver_sql(f"INSERT INTO events ({names}) VALUES ({marks})", rows)
        return
    start = 0
    for size in SQLITE_CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            await conn.exec_driver_sql(_sqlite_insert(size), tuple(itertools.chain.from_iterable(chunk)))
            start += size


@functools.cache
def _sqlite_insert(rows: int) -> str:
    names = ", ".join(COLUMNS)
    row_marks = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    picked = ", ".join(f"column{i}" for i in range(1, len(COLUMNS) + 1))
    return (
        f"INSERT INTO events ({names}) SELECT {picked} FROM (VALUES {', '.join([row_marks] * rows)})"
        " WHERE EXISTS (SELECT 1 FROM messages WHERE messages.id = column2)"
    )
