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
``machine.classify``, reads the stored opens and clicks of the mails whose neighbours may give a
scanner away and lets ``machine.neighbours`` turn hits machine (stored ones too), writes the
batch in one transaction and answers which subscribers had human events of which promoting
types that some layer's rule watches (the server then judges promotion, once no later hit can
turn those events machine; by default no rule watches opens, so most batches need no judgement
at all). A refused batch is rolled back and answered with the error's text (a locked or full
database). If the child is gone the tracker does all of it in process, as it does on PostgreSQL.

    first  := marshal of (after_send_s, window_s, promoting types)
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
from collections.abc import Iterable
from typing import Any

from ..clock import from_micros, micros_of
from ..core.machine import HUMAN, Request, Seen, classify, neighbours
from ..core.promotion import rule_watches
from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame

COLUMNS = (
    "subscriber_id",
    "message_id",
    "type",
    "url",
    "ip",
    "user_agent",
    "machine",
    "verdict",
    "data",
    "created_at",
)
MACHINE, VERDICT = COLUMNS.index("machine"), COLUMNS.index("verdict")
HIT = ("message_pk", "kind", "method", "user_agent", "ip", "micros", "trap", "prefetch", "url")
INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join('?' * len(COLUMNS))}"
    " WHERE EXISTS (SELECT 1 FROM messages WHERE messages.id = ?)"
)  # a deleted message's rows are dropped
REMARK = "UPDATE events SET machine = 1, verdict = ? WHERE id = ?"
NEIGHBOURS = (
    "SELECT id, message_id, type, url, ip, machine, verdict, created_at FROM events"
    " WHERE message_id IN ({marks}) AND type IN ('open', 'click') AND created_at >= ? AND created_at <= ?"
)
# Each subscriber's last human activity, never moved backwards (as ``funnel.facts.touch_activity``).
TOUCH = "UPDATE subscribers SET last_human_at = ? WHERE id = ? AND (last_human_at IS NULL OR last_human_at < ?)"
KNOWN_MESSAGES = 100_000  # sent messages whose subscriber and send time the child remembers
RECENT_MESSAGES = 10_000  # mails clicked lately, whose opens are checked against their clicks

Stored = tuple[int, int | None, str, str | None, str | None, bool, str | None, dt.datetime]
"""An open or click already written: id, message, type, url, ip, machine, verdict, time."""


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

    def __init__(
        self,
        path: str,
        pragmas: tuple[str, ...],
        *,
        after_send_s: int,
        window_s: float,
        promoting: frozenset[str],
    ) -> None:
        super().__init__(
            "responder.tracking.writer",
            path,
            *pragmas,
            first=marshal.dumps((after_send_s, window_s, tuple(sorted(promoting)))),
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


class RecentClicks:
    """Mails clicked lately (message id → time of the latest click or trap hit). A batch's
    opens of these mails are checked against their clicks (a scanner fetches the pixel in the
    sweep of the links, and may fetch it after them); opens of other mails, most of all hits,
    cost no read."""

    def __init__(self) -> None:
        self._last: OrderedDict[int, dt.datetime] = OrderedDict()

    def note(self, message_pk: int, at: dt.datetime) -> None:
        last = self._last.get(message_pk)
        self._last[message_pk] = at if last is None or at > last else last
        self._last.move_to_end(message_pk)
        while len(self._last) > RECENT_MESSAGES:
            self._last.popitem(last=False)

    def near(self, message_pk: int, at: dt.datetime, window: dt.timedelta) -> bool:
        last = self._last.get(message_pk)
        return last is not None and at - last <= window


class Batches:
    """The child's state: its connection, the settings the verdicts need, known messages."""

    def __init__(self, conn: sqlite3.Connection, after_send_s: int, window_s: float, promoting: frozenset[str]) -> None:
        self.conn = conn
        self.after_send_s = after_send_s
        self.window_s = window_s
        self.promoting = promoting
        # message id -> (subscriber id, sent at): fixed once a mail is sent, and opens cluster
        # on recent mails, so each batch reads only the messages it has not seen.
        self.known: OrderedDict[int, tuple[int, dt.datetime | None]] = OrderedDict()
        self.recent = RecentClicks()

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
                    found[pk] = known[pk] = (subscriber_id, _parsed(sent_at))
        while len(known) > KNOWN_MESSAGES:
            known.popitem(last=False)
        return found

    def stored(self, pks: list[int], since: dt.datetime, until: dt.datetime) -> list[Stored]:
        """The opens and clicks already written of these mails between the two times."""
        found: list[Stored] = []
        for start in range(0, len(pks), 500):
            chunk = pks[start : start + 500]
            for pk, message_pk, kind, url, ip, machine, verdict, at in self.conn.execute(
                NEIGHBOURS.format(marks=", ".join("?" * len(chunk))), (*chunk, _stored(since), _stored(until))
            ):
                found.append((pk, message_pk, kind, url, ip, bool(machine), verdict, _parsed(at)))
        return found

    def write(self, hits: list[tuple[Any, ...]]) -> dict[int, list[str]]:
        """The hits' rows, and the stored events their neighbours turn machine, written in one
        transaction; the subscribers with human events of promoting types some layer's rule
        watches (``watched``)."""
        made = EventRows(self.after_send_s, self.window_s, self.promoting, text_times=True)
        made.add(hits, self.messages({hit[0] for hit in hits}))
        check = made.to_check(self.recent)
        if check is not None:
            made.mark(self.stored(*check))
        touches = [(_stored(at), subscriber_id, _stored(at)) for subscriber_id, at in made.latest().items()]
        write_batch(self.conn, [(*row, row[1]) for row in made.in_index_order()], made.remarks, touches)
        human = made.human()
        watched = self.watched(set().union(*human.values())) if human else set()
        back = self.sunset(list(human))
        return {
            subscriber_id: sorted(kinds if subscriber_id in back else kinds & watched)
            for subscriber_id, kinds in human.items()
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
    """Hits (tuples in ``HIT`` order) turned into event rows in ``COLUMNS`` order, each judged
    human or machine with its reason: first alone from its message's send time (``add``), then
    beside the mail's other opens and clicks (``to_check`` says which mails and times to read,
    ``mark`` takes the stored ones), which may turn new rows and stored events (``remarks``:
    reason and event id) machine. ``human`` is then the subscribers with human events of each
    promoting type. The writer process and the server (PostgreSQL, or without that process)
    both use it; rows carry their time as stored text for SQLite (``text_times``), else as an
    aware datetime."""

    def __init__(self, after_send_s: int, window_s: float, promoting: frozenset[str], *, text_times: bool) -> None:
        self.after_send_s = after_send_s
        self.window = dt.timedelta(seconds=window_s)
        self.promoting = promoting
        self.text_times = text_times
        self.rows: list[tuple[Any, ...]] = []
        self.remarks: list[tuple[str, int]] = []
        self._times: list[dt.datetime] = []  # per row: its time (the row may hold it as text)
        self._checked: set[int] = set()  # the mails ``to_check`` asked to read

    def add(self, hits: list[tuple[Any, ...]], messages: dict[int, tuple[int, dt.datetime | None]]) -> None:
        for message_pk, kind, method, agent, ip, micros, trap, prefetch, url in hits:
            message = messages.get(message_pk)
            if message is None:  # a validly signed token for a message since deleted
                continue
            subscriber_id, sent_at = message
            at = from_micros(micros)
            verdict = classify(
                Request(kind, method, agent, ip, at, trap, prefetch), sent_at, after_send_s=self.after_send_s
            )
            self._times.append(at)
            self.rows.append(
                (
                    subscriber_id,
                    message_pk,
                    kind,
                    url,
                    ip,
                    agent or None,
                    verdict.machine,
                    verdict.reason,
                    "{}",
                    stored_text(micros) if self.text_times else at,
                )
            )

    def to_check(self, recent: RecentClicks) -> tuple[list[int], dt.datetime, dt.datetime] | None:
        """The mails whose stored opens and clicks may change a verdict (those clicked in this
        batch, and those opened here and clicked lately), and the times to read them between."""
        rows, times = self.rows, self._times
        clicked = [n for n, row in enumerate(rows) if row[2] == "click"]
        for n in clicked:
            recent.note(rows[n][1], times[n])
        checked = clicked + [
            n for n, row in enumerate(rows) if row[2] == "open" and recent.near(row[1], times[n], self.window)
        ]
        if not checked:
            return None
        self._checked = {rows[n][1] for n in checked}
        span = [times[n] for n in checked]
        return sorted(self._checked), min(span) - self.window, max(span) + self.window

    def mark(self, stored: Iterable[Stored]) -> None:
        """Judge each checked mail's hits beside its stored opens and clicks: the new rows and
        the stored events that ``neighbours`` turns machine."""
        mails: dict[int, tuple[list[Seen], list[int]]] = {pk: ([], []) for pk in self._checked}
        for n, row in enumerate(self.rows):  # per mail: what is seen, and whose (row, or -event id)
            mail = mails.get(row[1])
            if mail is not None:
                mail[0].append(Seen(row[2], row[3], row[4], self._times[n], row[VERDICT]))
                mail[1].append(n)
        for event_id, stored_pk, kind, url, ip, machine, verdict, at in stored:
            mail = mails.get(stored_pk) if stored_pk is not None else None
            if mail is not None:
                reason = verdict or ("machine" if machine else HUMAN)  # a verdict is kept since i16_verdict
                mail[0].append(Seen(kind, url, ip, at, reason))
                mail[1].append(-event_id)
        for seen_list, owners in mails.values():
            if not any(seen.kind == "click" for seen in seen_list):
                continue
            for i, reason in neighbours(seen_list, window_s=self.window.total_seconds()).items():
                owner = owners[i]
                if owner < 0:
                    self.remarks.append((reason, -owner))
                else:
                    row = self.rows[owner]
                    self.rows[owner] = (*row[:MACHINE], True, reason, *row[VERDICT + 1 :])

    def human(self) -> dict[int, set[str]]:
        """The subscribers with human events of promoting types, by type."""
        human: dict[int, set[str]] = {}
        for row in self.rows:
            if not row[MACHINE] and row[2] in self.promoting:
                human.setdefault(row[0], set()).add(row[2])
        return human

    def latest(self) -> dict[int, dt.datetime]:
        """Each subscriber's latest human event of a promoting type: their last activity.
        Call it before ``in_index_order``, which reorders the rows."""
        latest: dict[int, dt.datetime] = {}
        for row, at in zip(self.rows, self._times, strict=True):
            if not row[MACHINE] and row[2] in self.promoting and (row[0] not in latest or latest[row[0]] < at):
                latest[row[0]] = at
        return latest

    def in_index_order(self) -> list[tuple[Any, ...]]:
        """The rows by subscriber and message, the keys of the events table's indexes: SQLite
        then spends about 10 µs a row on a 400,000-event table instead of 17 µs for the same
        rows in arrival order. Call it last: ``mark`` finds rows by their place."""
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
        request.prefetch,
        url,
    )


def _index_order(row: tuple[Any, ...]) -> tuple[int, int]:
    return row[0], row[1]


def _stored(at: dt.datetime) -> str:
    return stored_text(micros_of(at))


def _parsed(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def write_batch(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    remarks: list[tuple[str, int]],
    touches: list[tuple[str, int, str]],
) -> None:
    """One batch in one transaction: rows in ``COLUMNS`` order then the message id again, the
    stored events turned machine (reason, id), and subscribers' latest human events as
    ``TOUCH``'s parameters. No other thread shares this process, so the sqlite3 module's lock
    hand-off around each row costs nothing and ``executemany`` is the cheapest."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, rows)
        if remarks:
            conn.executemany(REMARK, remarks)
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
    after_send_s, window_s, promoting = marshal.loads(first)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}")
    batches = Batches(conn, after_send_s, window_s, frozenset(promoting))
    while (frame := read_frame(stdin)) is not None:
        try:
            human = batches.write(marshal.loads(frame))
            write_frame(stdout, b"+" + marshal.dumps(human))
        except Exception as exc:  # the batch is refused, the writer stays
            write_frame(stdout, f"-{type(exc).__name__}: {exc}".encode())
    conn.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
