"""Tracking rows written to SQLite by a child process, beside the event loop.

On SQLite the tracking queue's inserts were the one steady database load of the serving process:
the sqlite3 module binds each batch's parameters holding the interpreter lock, and its thread
took CPU and the lock from the loop answering pixels (bench/track.py). The child
(``python -m responder.tracking.writer DATABASE PRAGMA…``, importing nothing heavy so it is
ready in a few tens of milliseconds; a ``framed.FramedChild``) opens its own connection with the
writer's pragmas, receives each batch as a marshalled frame, writes it in one transaction and
answers with an empty frame, or with the error's text (a locked or full database) after rolling
back. If the child is gone the tracker writes in process, as it does on PostgreSQL.

    batch := marshal of (rows, sweeps); rows in ``COLUMNS`` order, the event time as integer
             microseconds since the epoch (stored as text, ``stored_text``); sweeps are
             (message id, from, to as stored text, data JSON) of clicks to mark as machine clicks
"""

from __future__ import annotations

import marshal
import sqlite3
import sys
import time
from typing import Any

from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame

COLUMNS = ("subscriber_id", "message_id", "type", "url", "ip", "user_agent", "machine", "data",
           "created_at")
INSERT = (f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join('?' * len(COLUMNS))}"
          " WHERE EXISTS (SELECT 1 FROM messages WHERE messages.id = ?)")  # a deleted message's rows are dropped
SWEEP = ("UPDATE events SET machine = 1, data = ? WHERE message_id = ? AND type = 'click'"
         " AND machine = 0 AND created_at >= ? AND created_at <= ?")


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

    def __init__(self, path: str, pragmas: tuple[str, ...]) -> None:
        super().__init__("responder.tracking.writer", path, *pragmas)

    async def write(self, rows: list[tuple[Any, ...]], sweeps: list[tuple[Any, ...]]) -> None:
        error = await self.ask(marshal.dumps((rows, sweeps)))
        if error:
            raise WriteFailed(error.decode(errors="replace"))


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


def write_batch(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                sweeps: list[tuple[Any, ...]]) -> None:
    """One batch in one transaction. No other thread shares this process, so the sqlite3
    module's lock hand-off around each row costs nothing and ``executemany`` is the cheapest."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, [(*row[:8], stored_text(row[8]), row[1]) for row in rows])
        for message_id, start, end, data in sweeps:
            conn.execute(SWEEP, (data, message_id, start, end))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _child(path: str, pragmas: list[str]) -> None:
    child_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}")
    while (frame := read_frame(stdin)) is not None:
        rows, sweeps = marshal.loads(frame)
        try:
            write_batch(conn, rows, sweeps)
            write_frame(stdout, b"")
        except Exception as exc:  # the batch is refused, the writer stays
            write_frame(stdout, f"{type(exc).__name__}: {exc}".encode())
    conn.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
