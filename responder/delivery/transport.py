"""Transports: where composed mail goes. SMTP through aiosmtplib, or a folder of ``.eml`` files.

A transport's ``send`` returns on acceptance and raises ``TemporaryDeliveryError`` (try again
later), ``PermanentDeliveryError`` (the recipient bounces) or ``RelayCannotCarry`` (the relay
lacks SMTPUTF8, which an envelope with a non-ASCII address needs; nothing was sent).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiosmtplib

from ..errors import PermanentDeliveryError, RelayCannotCarry, TemporaryDeliveryError
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
                errors = await transact(
                    client, envelope.mail_from, envelope.recipients, data, smtputf8=envelope.smtputf8
                )
            except RelayCannotCarry:
                await self._checkin(client)
                raise
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await self._checkin(client)
                refusal = exc.recipients[0]
                raise _classify(refusal.code, refusal.message) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                # Our envelope sender refused: a configuration matter, never the recipient's.
                await self._checkin(client)
                raise TemporaryDeliveryError(f"sender refused: {exc.code} {exc.message}", smtp_code=exc.code) from exc
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


def in_wire_form(data: bytes) -> bool:
    """Every CR and LF part of a CRLF pair and the message ends with one: what ``compose`` and
    the DKIM signer produce. Three counts, a few µs for a newsletter."""
    pairs = data.count(b"\r\n")
    return data.count(b"\r") == pairs == data.count(b"\n") and data.endswith(b"\r\n")


NO_SMTPUTF8 = "the relay does not offer SMTPUTF8, which a non-ASCII address needs"


async def transact(
    client: aiosmtplib.SMTP, mail_from: str, recipients: Sequence[str], data: bytes, *, smtputf8: bool = False
) -> dict[str, aiosmtplib.SMTPResponse]:
    """``client.sendmail`` for a message already in wire form, without its text passes.

    ``sendmail`` normalises the line endings twice (once to count the SIZE, once for DATA) and
    dot-stuffs with a regular expression: about 170 µs for a 14 KB newsletter, more than
    building it. A message in wire form needs neither, and its dot-stuffing is one replace.
    The commands, replies and exceptions are aiosmtplib's own (MAIL and RCPT through its
    methods, RSET after a refusal as ``sendmail`` does). Anything else goes to ``sendmail``.

    ``smtputf8``: MAIL carries ``SMTPUTF8`` and the addresses go as UTF-8 (RFC 6531); a relay
    whose EHLO does not offer it gets no command at all, ``RelayCannotCarry``.
    """
    if client.is_ehlo_or_helo_needed:  # as sendmail: EHLO, or HELO for a server without it
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()
    if smtputf8 and not client.supports_extension("smtputf8"):
        raise RelayCannotCarry(NO_SMTPUTF8)
    if not in_wire_form(data) or client.protocol is None:
        errors, _ = await client.sendmail(
            mail_from, list(recipients), data, mail_options=["SMTPUTF8"] if smtputf8 else None
        )
        return errors
    options = [f"SIZE={len(data)}"] if client.supports_extension("size") else []
    encoding = "ascii"
    if smtputf8:
        options.append("SMTPUTF8")
        encoding = "utf-8"
    try:
        await _mail(client, mail_from, options, encoding)
        refused: list[aiosmtplib.SMTPRecipientRefused] = []
        for recipient in recipients:
            try:
                await _rcpt(client, recipient, encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(exc)
        if len(refused) == len(recipients):
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        await _data(client, data)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        try:
            await client.rset()
        except (ConnectionError, aiosmtplib.SMTPResponseException, aiosmtplib.SMTPServerDisconnected):
            pass
        raise
    return {exc.recipient: aiosmtplib.SMTPResponse(exc.code, exc.message) for exc in refused}


# An address that needs no quoting in MAIL or RCPT: ``<address>`` as it is. aiosmtplib's own
# commands run every address through ``email.utils.parseaddr`` (some 15 µs a command); ours are
# validated when stored, and any other goes through aiosmtplib.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


async def _mail(client: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str) -> None:
    """``client.mail``: the same command, reply check and error."""
    if encoding != "ascii" or not _PLAIN_ADDRESS.fullmatch(sender):
        await client.mail(sender, options=options, encoding=encoding)
        return
    reply = await client.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *(o.encode() for o in options))
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)


async def _rcpt(client: aiosmtplib.SMTP, recipient: str, encoding: str) -> None:
    """``client.rcpt``: the same command, reply check and error."""
    if encoding != "ascii" or not _PLAIN_ADDRESS.fullmatch(recipient):
        await client.rcpt(recipient, encoding=encoding)
        return
    reply = await client.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode())
    if reply.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)


async def _data(client: aiosmtplib.SMTP, data: bytes) -> None:
    """DATA, the dot-stuffed message and its final dot; aiosmtplib's replies and errors."""
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    stuffed = data.replace(b"\n.", b"\n..")  # in wire form every line starts after a LF
    protocol = client.protocol
    try:
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(b"." + stuffed + b".\r\n" if stuffed.startswith(b".") else stuffed + b".\r\n")
        reply = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


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
