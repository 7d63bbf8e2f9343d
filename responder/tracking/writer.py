"""Tracking events turned into rows and written to SQLite by a child process, beside the event
loop.

On SQLite the tracking queue's inserts were the one steady database load of the serving process:
the sqlite3 module binds each batch's parameters holding the interpreter lock, and its thread
took CPU and the lock from the loop answering pixels (bench/track.py). Turning a batch of hits
into rows (the message's subscriber and send time, the human-or-machine verdict, the stored
time text, index order) was the other tenth of the loop's time under load. The child
(``python -m responder.tracking.writer DATABASE PRAGMA…``, importing nothing heavy so it is ready
in a few tens of milliseconds; a ``framed.FramedChild``) does both: it opens its own connection
with the writer's pragmas, reads the messages it has not seen, judges each hit with
``machine.classify``, writes the batch in one transaction and answers which subscribers had
human events of which promoting types that some layer's rule watches (the server then judges
promotion; by default no rule watches opens, so most batches need no judgement at all). A
refused batch is rolled back and answered with the error's text (a locked or full database).
If the child is gone the tracker does all of it in process, as it does on PostgreSQL.

    first  := marshal of (after_send_s, promoting types)
    batch  := marshal of a list of hits, each a tuple in ``HIT`` order, the time as integer
              microseconds since the epoch (exact: a float timestamp holds today's times to
              well under half a µs)
    answer := b"+" and the marshal of {subscriber id: [promoting type, …]} for human events
              of watched types, or b"-" and the error's text
"""

from __future__ import annotations

import datetime as dt
import json
import marshal
import sqlite3
import sys
import time
from collections import OrderedDict
from typing import Any

from ..clock import from_micros, micros_of
from ..core.machine import SWEEPING, Request, classify, machine_data, reach
from ..core.promotion import rule_watches
from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame

COLUMNS = ("subscriber_id", "message_id", "type", "url", "ip", "user_agent", "machine", "data", "created_at")
HIT = ("message_pk", "kind", "method", "user_agent", "ip", "micros", "trap", "burst", "url")
INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join('?' * len(COLUMNS))}"
    " WHERE EXISTS (SELECT 1 FROM messages WHERE messages.id = ?)"
)  # a deleted message's rows are dropped
SWEEP = (
    "UPDATE events SET machine = 1, data = ? WHERE message_id = ? AND type = 'click'"
    " AND machine = 0 AND created_at >= ? AND created_at <= ?"
)
# Each subscriber's last human activity, never moved backwards (as ``funnel.ledger.touch_activity``).
TOUCH = "UPDATE subscribers SET last_human_at = ? WHERE id = ? AND (last_human_at IS NULL OR last_human_at < ?)"
KNOWN_MESSAGES = 100_000  # sent messages whose subscriber and send time the child remembers


class WriterUnavailable(ChildGone):
    """The child is not running; write in process instead."""


class WriteFailed(Exception):
    """The database refused the batch (locked, full, read-only); nothing of it was written."""

    @property
    def transient(self) -> bool:
        """Locked, busy, full or unreachable: worth retrying as it is."""
        return str(self).startswith("OperationalError")


class RowWriter(FramedChild):
    gone = WriterUnavailable
    what = "tracking writer"

    def __init__(self, path: str, pragmas: tuple[str, ...], *, after_send_s: int, promoting: frozenset[str]) -> None:
        super().__init__(
            "responder.tracking.writer", path, *pragmas, first=marshal.dumps((after_send_s, tuple(sorted(promoting))))
        )

    async def write(self, hits: list[tuple[Any, ...]]) -> dict[int, list[str]]:
        """Write the hits' events; the subscribers with human events of types some layer's
        rule watches, by type."""
        answer = await self.ask(marshal.dumps(hits))
        if answer[:1] != b"+":
            raise WriteFailed(answer[1:].decode(errors="replace"))
        human: dict[int, list[str]] = marshal.loads(answer[1:])
        return human


class _Seconds:
    """The stored text of the second last asked for: a batch's events share a few seconds."""

    second = -1
    text = ""


def stored_text(micros: int) -> str:
    """Microseconds since the epoch as the UTCDateTime column stores them on SQLite: naive UTC
    text, ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    second, fraction = divmod(micros, 1_000_000)
    if second != _Seconds.second:
        _Seconds.text = time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(second))
        _Seconds.second = second
    return f"{_Seconds.text}{fraction:06d}"


class Batches:
    """The child's state: its connection, the settings the verdicts need, known messages."""

    def __init__(self, conn: sqlite3.Connection, after_send_s: int, promoting: frozenset[str]) -> None:
        self.conn = conn
        self.after_send_s = after_send_s
        self.promoting = promoting
        # message id -> (subscriber id, sent at): fixed once a mail is sent, and opens cluster
        # on recent mails, so each batch reads only the messages it has not seen.
        self.known: OrderedDict[int, tuple[int, dt.datetime | None]] = OrderedDict()

    def messages(self, pks: set[int]) -> dict[int, tuple[int, dt.datetime | None]]:
        """Subscriber and send time of each message that exists; a message not yet recorded
        as sent (its batch's outcomes are written after the sends) is not remembered, so a
        later hit sees its send time."""
        known = self.known
        found = {pk: known[pk] for pk in pks if pk in known}
        ask = [pk for pk in pks if pk not in found]
        for start in range(0, len(ask), 500):
            chunk = ask[start : start + 500]
            for pk, subscriber_id, sent_at in self.conn.execute(
                f"SELECT id, subscriber_id, sent_at FROM messages WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                if sent_at is None:
                    found[pk] = (subscriber_id, None)
                else:
                    found[pk] = known[pk] = (subscriber_id, dt.datetime.fromisoformat(sent_at).replace(tzinfo=dt.UTC))
        while len(known) > KNOWN_MESSAGES:
            known.popitem(last=False)
        return found

    def write(self, hits: list[tuple[Any, ...]]) -> dict[int, list[str]]:
        """The hits' rows and sweeps, written in one transaction; the subscribers with human
        events of promoting types some layer's rule watches (``watched``)."""
        made = EventRows(self.after_send_s, self.promoting, text_times=True)
        made.add(hits, self.messages({hit[0] for hit in hits}))
        write_batch(
            self.conn,
            [(*row, row[1]) for row in made.in_index_order()],
            [
                (machine_data(reason), message_pk, _stored(at - reach(reason)), _stored(at + reach(reason)))
                for message_pk, at, reason in made.sweeps
            ],
            [(_stored(at), subscriber_id, _stored(at)) for subscriber_id, at in made.latest.items()],
        )
        watched = self.watched(set().union(*made.human.values())) if made.human else set()
        back = self.sunset(list(made.human))
        return {
            subscriber_id: sorted(kinds if subscriber_id in back else kinds & watched)
            for subscriber_id, kinds in made.human.items()
            if kinds & watched or subscriber_id in back
        }

    def sunset(self, subscriber_ids: list[int]) -> set[int]:
        """Which of these subscribers are sunset: their human event brings them back, which
        the server does (``funnel.events.follow_activity``)."""
        found: set[int] = set()
        for start in range(0, len(subscriber_ids), 500):
            chunk = subscriber_ids[start : start + 500]
            found.update(
                subscriber_id
                for (subscriber_id,) in self.conn.execute(
                    f"SELECT id FROM subscribers WHERE status = 'sunset' AND id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
            )
        return found

    def watched(self, kinds: set[str]) -> set[str]:
        """Which of these event types some layer's promotion rule watches: the server judges
        promotion only for those, and by default no rule watches opens, the most of events.
        If the rules cannot be read, all of them (the server's judgement looks again)."""
        try:
            rules = [json.loads(text) if text else {} for (text,) in self.conn.execute("SELECT rule FROM layers")]
            return {kind for kind in kinds if any(rule_watches(rule, kind) for rule in rules)}
        except Exception:
            return kinds


class EventRows:
    """Hits (tuples in ``HIT`` order) turned into event rows in ``COLUMNS`` order: each judged
    human or machine from its message's send time, the sweeps its machine clicks call for
    (message, time, reason), and the subscribers with human events of each promoting type.
    The writer process and the server (PostgreSQL, or without that process) both use it; rows
    carry their time as stored text for SQLite (``text_times``), else as an aware datetime."""

    def __init__(self, after_send_s: int, promoting: frozenset[str], *, text_times: bool) -> None:
        self.after_send_s = after_send_s
        self.promoting = promoting
        self.text_times = text_times
        self.rows: list[tuple[Any, ...]] = []
        self.sweeps: list[tuple[int, dt.datetime, str]] = []
        self.human: dict[int, set[str]] = {}
        self.latest: dict[int, dt.datetime] = {}  # each subscriber's latest human event

    def add(self, hits: list[tuple[Any, ...]], messages: dict[int, tuple[int, dt.datetime | None]]) -> None:
        for message_pk, kind, method, agent, ip, micros, trap, burst, url in hits:
            message = messages.get(message_pk)
            if message is None:  # a validly signed token for a message since deleted
                continue
            subscriber_id, sent_at = message
            at = from_micros(micros)
            verdict = classify(
                Request(kind, method, agent, ip, at, trap, burst), sent_at, after_send_s=self.after_send_s
            )
            if verdict.machine:
                data = machine_data(verdict.reason)
                if verdict.reason in SWEEPING:
                    self.sweeps.append((message_pk, at, verdict.reason))
            else:
                data = "{}"
                if kind in self.promoting:
                    self.human.setdefault(subscriber_id, set()).add(kind)
                    if subscriber_id not in self.latest or self.latest[subscriber_id] < at:
                        self.latest[subscriber_id] = at
            self.rows.append(
                (
                    subscriber_id,
                    message_pk,
                    kind,
                    url,
                    ip,
                    agent or None,
                    verdict.machine,
                    data,
                    stored_text(micros) if self.text_times else at,
                )
            )

    def in_index_order(self) -> list[tuple[Any, ...]]:
        """The rows by subscriber and message, the keys of the events table's indexes: SQLite
        then spends about 10 µs a row on a 400,000-event table instead of 17 µs for the same
        rows in arrival order."""
        self.rows.sort(key=_index_order)
        return self.rows


def hit_of(message_pk: int, request: Request, url: str | None = None) -> tuple[Any, ...]:
    """One open or click as the tracking queue holds it: a tuple in ``HIT`` order. (The pixel
    builds its tuple in place: it answers most requests.)"""
    return (
        message_pk,
        request.kind,
        request.method,
        request.user_agent,
        request.ip,
        micros_of(request.at),
        request.trap,
        request.burst,
        url,
    )


def _index_order(row: tuple[Any, ...]) -> tuple[int, int]:
    return row[0], row[1]


def _stored(at: dt.datetime) -> str:
    return stored_text(micros_of(at))


def write_batch(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    sweeps: list[tuple[Any, ...]],
    touches: list[tuple[Any, ...]],
) -> None:
    """One batch in one transaction: rows in ``COLUMNS`` order then the message id again,
    sweeps as ``SWEEP``'s parameters, subscribers' latest human events as ``TOUCH``'s. No
    other thread shares this process, so the sqlite3 module's lock hand-off around each row
    costs nothing and ``executemany`` is the cheapest."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, rows)
        for sweep in sweeps:
            conn.execute(SWEEP, sweep)
        conn.executemany(TOUCH, touches)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _child(path: str, pragmas: list[str]) -> None:
    child_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = read_frame(stdin)
    if first is None:
        return
    after_send_s, promoting = marshal.loads(first)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}")
    batches = Batches(conn, after_send_s, frozenset(promoting))
    while (frame := read_frame(stdin)) is not None:
        try:
            human = batches.write(marshal.loads(frame))
            write_frame(stdout, b"+" + marshal.dumps(human))
        except Exception as exc:  # the batch is refused, the writer stays
            write_frame(stdout, f"-{type(exc).__name__}: {exc}".encode())
    conn.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
