"""Tracking rows written to SQLite by a child process, beside the event loop.

On SQLite the tracking queue's inserts were the one steady database load of the serving process:
the sqlite3 module binds each batch's parameters holding the interpreter lock, and its thread
took CPU and the lock from the loop answering pixels (bench/track.py). The child
(``python -m responder.tracking.writer DATABASE PRAGMA…``, importing nothing heavy so it is
ready in a few tens of milliseconds) opens its own connection with the writer's pragmas, receives each batch
as a marshalled frame on stdin, writes it in one transaction and answers with an empty frame,
or with the error's text (a locked or full database) after rolling back. Answers come in order.
If the child is gone the tracker writes in process, as it does on PostgreSQL.

    frame := 4-byte big-endian length, then that many bytes
    batch := marshal of (rows, sweeps); rows in ``EVENT_COLUMNS`` order, times as stored text;
             sweeps are (message id, from, to, data JSON) of clicks to mark as machine clicks
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import marshal
import sqlite3
import struct
import sys
from typing import Any

log = logging.getLogger(__name__)
_LENGTH = struct.Struct(">I")
COLUMNS = ("subscriber_id", "message_id", "type", "url", "ip", "user_agent", "machine", "data",
           "created_at")
INSERT = (f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join('?' * len(COLUMNS))}"
          " WHERE EXISTS (SELECT 1 FROM messages WHERE messages.id = ?)")  # a deleted message's rows are dropped
SWEEP = ("UPDATE events SET machine = 1, data = ? WHERE message_id = ? AND type = 'click'"
         " AND machine = 0 AND created_at >= ? AND created_at <= ?")


class WriterUnavailable(Exception):
    """The child is not running; write in process instead."""


class WriteFailed(Exception):
    """The database refused the batch (locked, full, read-only); nothing of it was written."""


class RowWriter:
    def __init__(self, path: str, pragmas: tuple[str, ...]) -> None:
        self.path = path
        self.pragmas = pragmas
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._failed = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Start the child ahead of the first batch (it is otherwise started by it)."""
        with contextlib.suppress(WriterUnavailable):
            await self._start()

    async def _start(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self._process is None:
                if self._failed:
                    raise WriterUnavailable("the tracking writer stopped")
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "responder.tracking.writer", self.path, *self.pragmas,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                self._reader = asyncio.create_task(self._read(process), name="tracking-writer")
                self._process = process
            return self._process

    async def write(self, rows: list[tuple[Any, ...]], sweeps: list[tuple[Any, ...]]) -> None:
        process = await self._start()
        if self._failed or self._reader is None or self._reader.done() or process.stdin is None:
            raise WriterUnavailable("the tracking writer stopped")
        payload = marshal.dumps((rows, sweeps))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            process.stdin.write(_LENGTH.pack(len(payload)) + payload)
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.remove(future)
            raise WriterUnavailable(str(exc)) from exc
        error = await future
        if error:
            raise WriteFailed(error.decode(errors="replace"))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                size = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))[0]
                answer = await process.stdout.readexactly(size) if size else b""
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            if self._waiting:
                log.error("tracking writer stopped (exit %s); writing in process",
                          process.returncode)
            self._failed = True
        finally:
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(WriterUnavailable("the tracking writer stopped"))

    async def close(self) -> None:
        process, self._process = self._process, None
        self._failed = True
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def write_batch(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                sweeps: list[tuple[Any, ...]]) -> None:
    """One batch in one transaction. No other thread shares this process, so the sqlite3
    module's lock hand-off around each row costs nothing and ``executemany`` is the cheapest."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, [(*row, row[1]) for row in rows])
        for message_id, start, end, data in sweeps:
            conn.execute(SWEEP, (data, message_id, start, end))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _child(path: str, pragmas: list[str]) -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}")
    while len(head := stdin.read(_LENGTH.size)) == _LENGTH.size:
        rows, sweeps = marshal.loads(stdin.read(_LENGTH.unpack(head)[0]))
        try:
            write_batch(conn, rows, sweeps)
            answer = b""
        except sqlite3.Error as exc:
            answer = f"{type(exc).__name__}: {exc}".encode()
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()
    conn.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
