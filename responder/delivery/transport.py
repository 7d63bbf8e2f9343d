"""Transports: where composed mail goes. SMTP through aiosmtplib, or a folder of ``.eml`` files.

A transport's ``send`` returns on acceptance and raises ``TemporaryDeliveryError`` (try again
later) or ``PermanentDeliveryError`` (the recipient bounces).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Protocol

import aiosmtplib

from ..errors import PermanentDeliveryError, TemporaryDeliveryError
from ..settings import Settings, SmtpTarget
from .mime import Envelope


class Transport(Protocol):
    async def send(self, envelope: Envelope, data: bytes) -> None: ...

    async def close(self) -> None: ...


class FileTransport:
    """Writes each message to ``DIR/<message-id>.eml``: the safe default on a fresh install."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, envelope: Envelope, data: bytes) -> None:
        await asyncio.to_thread(self._write, envelope, data)

    def _write(self, envelope: Envelope, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        match = re.search(rb"^Message-ID: <([^>]+)>", data, re.MULTILINE | re.IGNORECASE)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", match.group(1).decode() if match else os.urandom(8).hex())
        final = self.folder / f"{stem}.eml"
        partial = self.folder / f".{stem}.eml.partial"
        partial.write_bytes(data)
        os.replace(partial, final)

    async def close(self) -> None:
        return None


IDLE_CHECK_S = 5.0


class SmtpTransport:
    """A small pool of reused SMTP connections ("lanes"), reconnecting when one drops.

    A lane goes straight on to its next message after an accepted one: the end of DATA closes
    the transaction (RFC 5321 4.1.1.4), and aiosmtplib itself sends RSET after a refused one.
    A lane that sat idle for ``IDLE_CHECK_S`` is asked for a NOOP before it is trusted again,
    so a connection the server dropped meanwhile is replaced instead of deferring a message.
    """

    def __init__(self, target: SmtpTarget, *, lanes: int, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._idle: asyncio.LifoQueue[tuple[aiosmtplib.SMTP, float]] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(lanes)

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.target.host,
            port=self.target.port,
            username=self.target.username,
            password=self.target.password,
            use_tls=self.target.scheme == "smtps",
            start_tls=None if self.target.scheme == "smtp" else False,
            timeout=self.timeout_s,
        )

    async def send(self, envelope: Envelope, data: bytes) -> None:
        async with self._slots:
            client = await self._checkout()
            try:
                errors, _ = await client.sendmail(envelope.mail_from, list(envelope.recipients), data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await self._checkin(client)
                refusal = exc.recipients[0]
                raise _classify(refusal.code, refusal.message) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                # Our envelope sender refused: a configuration matter, never the recipient's.
                await self._checkin(client)
                raise TemporaryDeliveryError(f"sender refused: {exc.code} {exc.message}",
                                             smtp_code=exc.code) from exc
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421:  # the server is closing this connection
                    client.close()
                else:
                    await self._checkin(client)
                raise _classify(exc.code, exc.message) from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                # Dropped, timed out, or a reply we could not read: whether the server kept the
                # message is unknown, so it is retried (at least once beats at most once).
                client.close()
                raise TemporaryDeliveryError(f"connection failed: {exc}") from exc
            await self._checkin(client)
            if errors:
                code, message = next(iter(errors.values()))
                raise _classify(code, message)

    async def _checkout(self) -> aiosmtplib.SMTP:
        loop = asyncio.get_running_loop()
        while not self._idle.empty():
            client, since = self._idle.get_nowait()
            if not client.is_connected:
                continue
            if loop.time() - since < IDLE_CHECK_S:
                return client
            try:
                await client.noop()
                return client
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                client.close()
        client = self._client()
        try:
            await client.connect()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryDeliveryError(f"cannot connect to {self.target.host}: {exc}") from exc
        return client

    async def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.put_nowait((client, asyncio.get_running_loop().time()))

    async def close(self) -> None:
        while not self._idle.empty():
            client, _ = self._idle.get_nowait()
            try:
                await client.quit()
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                client.close()


def _classify(code: int, message: str) -> PermanentDeliveryError | TemporaryDeliveryError:
    text = f"{code} {message}"
    if 500 <= code < 600:
        return PermanentDeliveryError(text, smtp_code=code)
    return TemporaryDeliveryError(text, smtp_code=code)


def make_transport(settings: Settings) -> Transport:
    if settings.smtp.is_file:
        assert settings.smtp.path is not None
        return FileTransport(settings.smtp.path)
    return SmtpTransport(settings.smtp, lanes=settings.worker_lanes, timeout_s=settings.smtp_timeout_s)
