"""A helper child process spoken to in frames: requests on its stdin, answers on its stdout,
one answer per request (or a number of them the request says), in order. The render processes
and the SQLite tracking writer are two.

    frame := 4-byte big-endian length, then that many bytes

The parent keeps one future per request. When the child is gone, what waited and every later
request fail with the owner's ``gone`` exception, and the owner does the work in process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import struct
import sys
from typing import BinaryIO

log = logging.getLogger(__name__)
LENGTH = struct.Struct(">I")


class ChildGone(Exception):
    """The child is not running. ``in_flight``: it died with this request in hand, so whether
    the request's work was done is unknown (it may have finished and died before answering)."""

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class FramedChild:
    """``python -m MODULE ARGS…``, started on first use; ``first`` is sent before any request
    (a key, say) and has no answer."""

    gone: type[ChildGone] = ChildGone
    what = "helper process"
    after_death = "working in process"  # what the owner does once the child is gone

    def __init__(self, module: str, *args: str, first: bytes | None = None) -> None:
        self._command = (sys.executable, "-m", module, *args)
        self._first = first
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._failed = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Start the child ahead of the first request (it is otherwise started by it)."""
        with contextlib.suppress(ChildGone):
            await self._start()

    async def _start(self) -> asyncio.subprocess.Process:
        async with self._starting:  # concurrent first requests share one child
            if self._process is None:
                if self._failed:
                    raise self.gone(f"the {self.what} stopped")
                try:
                    process = await asyncio.create_subprocess_exec(
                        *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                    )
                except OSError as exc:  # cannot fork or exec: the owner works in process
                    self._failed = True
                    raise self.gone(f"cannot start the {self.what}: {exc}") from exc
                if self._first is not None:
                    self._send(process, self._first)
                self._reader = asyncio.create_task(self._read(process), name=self.what)
                self._process = process
            return self._process

    @staticmethod
    def _send(process: asyncio.subprocess.Process, payload: bytes) -> None:
        assert process.stdin is not None
        process.stdin.write(LENGTH.pack(len(payload)) + payload)

    async def ask(self, payload: bytes) -> bytes:
        return await (await self.ask_many(payload, 1))[0]

    async def ask_many(self, payload: bytes, answers: int) -> list[asyncio.Future[bytes]]:
        """Send one request that the child answers with ``answers`` frames, in order: a future
        for each."""
        process = await self._start()
        if self._failed or self._reader is None or self._reader.done():
            raise self.gone(f"the {self.what} stopped")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bytes]] = [loop.create_future() for _ in range(answers)]
        self._waiting.extend(futures)
        try:
            self._send(process, payload)
        except (ConnectionError, RuntimeError) as exc:
            for future in futures:
                self._waiting.remove(future)
            raise self.gone(str(exc)) from exc
        return futures

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                size = LENGTH.unpack(await process.stdout.readexactly(LENGTH.size))[0]
                answer = await process.stdout.readexactly(size) if size else b""
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            if any(not future.done() for future in self._waiting):  # died with work in hand (not given up)
                log.error("%s stopped (exit %s); %s", self.what, process.returncode, self.after_death)
            self._failed = True
        finally:
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(self.gone(f"the {self.what} stopped", in_flight=True))

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


def child_signals() -> None:
    """In the child: leave SIGINT and SIGTERM to the parent (Ctrl-C and service managers signal
    the whole group) and end when the parent closes stdin, so work in hand is answered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def read_frame(stream: BinaryIO) -> bytes | None:
    """The child's side: the next frame from ``stream``, None at its end."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    return stream.read(LENGTH.unpack(head)[0])


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(LENGTH.pack(len(payload)) + payload)
    stream.flush()
