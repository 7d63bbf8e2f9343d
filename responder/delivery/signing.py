"""DKIM's RSA step in a child process, so it runs beside the event loop instead of in it.

An RSA-2048 signature costs ~0.4 ms of CPU in OpenSSL and ``cryptography`` holds the interpreter
lock throughout, so in the sending process it would take a third of each mail's CPU. The child
(``python -m responder.delivery.signing``) receives the PEM key once, then length-prefixed
canonical header bytes on stdin, and answers each with its signature on stdout, in order. The
parent keeps one future per request. If the child is gone the caller signs in process: a mail
is never held back for want of the helper.

    frame := 4-byte big-endian length, then that many bytes
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import sys

from cryptography.hazmat.primitives import serialization

from .dkim import sign_canonical

log = logging.getLogger(__name__)
_LENGTH = struct.Struct(">I")


class SigningUnavailable(Exception):
    """The child is not running; sign in process instead."""


class SigningProcess:
    def __init__(self, pem: bytes) -> None:
        self._pem = pem
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._failed = False
        self._starting = asyncio.Lock()

    async def _start(self) -> asyncio.subprocess.Process:
        async with self._starting:  # concurrent first signatures share one child
            if self._process is None:
                if self._failed:
                    raise SigningUnavailable("the signing process stopped")
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "responder.delivery.signing",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                self._send(process, self._pem)
                self._reader = asyncio.create_task(self._read(process), name="dkim-signing")
                self._process = process
            return self._process

    @staticmethod
    def _send(process: asyncio.subprocess.Process, payload: bytes) -> None:
        assert process.stdin is not None
        process.stdin.write(_LENGTH.pack(len(payload)) + payload)

    async def sign(self, hashed: bytes) -> bytes:
        process = await self._start()
        if self._failed or self._reader is None or self._reader.done():
            raise SigningUnavailable("the signing process stopped")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            self._send(process, hashed)
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.remove(future)
            raise SigningUnavailable(str(exc)) from exc
        return await future

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                size = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))[0]
                signature = await process.stdout.readexactly(size)
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(signature)
        except (asyncio.IncompleteReadError, ConnectionError):
            if self._waiting:  # it died with work in hand; from now on the parent signs
                log.error("DKIM signing process stopped (exit %s); signing in process",
                          process.returncode)
            self._failed = True
        finally:
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(SigningUnavailable("the signing process stopped"))

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._failed = True
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


def _child() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def frame() -> bytes | None:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None
        return stdin.read(_LENGTH.unpack(head)[0])

    pem = frame()
    if pem is None:
        return
    key = serialization.load_pem_private_key(pem, password=None)
    while (hashed := frame()) is not None:
        signature = sign_canonical(key, hashed)  # type: ignore[arg-type]
        stdout.write(_LENGTH.pack(len(signature)) + signature)
        stdout.flush()


if __name__ == "__main__":
    _child()
