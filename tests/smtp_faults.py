"""A small scriptable SMTP server for fault tests: it can drop the connection when DATA
begins or right after the final '.', advertise STARTTLS and then fail it, or behave."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.MULTILINE | re.IGNORECASE)


class FaultServer:
    """``mode``: ok | drop_at_data | drop_after_dot | close_after_accept | starttls_fails |
    starttls_garbage. ``replies``: the answer to give a verb instead of the usual one (``MAIL``,
    ``RCPT``, ``DATA``, or ``.`` for the reply after the final dot)."""

    def __init__(self, mode: str = "ok", replies: dict[str, str] | None = None) -> None:
        self.mode = mode
        self.replies = replies or {}
        self.accepted: list[bytes] = []  # Message-IDs answered with 250
        self.kept: list[bytes] = []  # Message-IDs fully received, answered or not
        self.connections = 0
        self.verbs: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        try:
            say("220 faults.test ESMTP")
            while line := await reader.readline():
                verb = line.decode(errors="replace").strip().split(" ")[0].upper()
                self.verbs.append(verb)
                if verb in ("EHLO", "HELO"):
                    if self.mode.startswith("starttls"):
                        say("250-faults.test")
                        say("250 STARTTLS")
                    else:
                        say("250-faults.test")
                        say("250 8BITMIME")
                elif verb == "STARTTLS":
                    if self.mode == "starttls_fails":
                        say("454 4.7.0 TLS not available due to temporary reason")
                    else:
                        say("220 go ahead")
                        await writer.drain()
                        writer.write(b"this is not a TLS handshake\r\n" * 4)
                        await writer.drain()
                        writer.close()
                        return
                elif verb in self.replies:
                    say(self.replies[verb])
                elif verb == "DATA":
                    if self.mode == "drop_at_data":
                        writer.close()
                        return
                    say("354 end with .")
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    found = MESSAGE_ID.search(data)
                    self.kept.append(found.group(1) if found else b"")
                    if self.mode == "drop_after_dot":
                        writer.close()
                        return
                    if "." in self.replies:
                        say(self.replies["."])
                        await writer.drain()
                        continue
                    self.accepted.append(self.kept[-1])
                    say("250 2.0.0 queued")
                    if self.mode == "close_after_accept":  # an idle timeout on the server's side
                        await writer.drain()
                        writer.close()
                        return
                elif verb == "QUIT":
                    say("221 bye")
                    await writer.drain()
                    break
                else:  # MAIL, RCPT, RSET, NOOP
                    say("250 OK")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def fault_server(mode: str = "ok", replies: dict[str, str] | None = None) -> AsyncIterator[FaultServer]:
    server = FaultServer(mode, replies)
    listener = await asyncio.start_server(server._session, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
