"""DKIM's RSA step in a child process, so it runs beside the event loop instead of in it.

An RSA-2048 signature costs ~0.2 ms of CPU in OpenSSL and ``cryptography`` holds the interpreter
lock throughout, so in the sending process it would take a third of each mail's CPU. The child
(``python -m responder.delivery.signing``, a ``framed.FramedChild``) receives the PEM key once,
then canonical header bytes, and answers each with its signature. If the child is gone the
caller signs in process: a mail is never held back for want of the helper.
"""

from __future__ import annotations

import sys

from cryptography.hazmat.primitives import serialization

from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame
from .dkim import sign_canonical


class SigningUnavailable(ChildGone):
    """The child is not running; sign in process instead."""


class SigningProcess(FramedChild):
    gone = SigningUnavailable
    what = "DKIM signing process"

    def __init__(self, pem: bytes) -> None:
        super().__init__("responder.delivery.signing", first=pem)

    async def sign(self, hashed: bytes) -> bytes:
        return await self.ask(hashed)


def _child() -> None:
    child_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    pem = read_frame(stdin)
    if pem is None:
        return
    key = serialization.load_pem_private_key(pem, password=None)
    while (hashed := read_frame(stdin)) is not None:
        write_frame(stdout, sign_canonical(key, hashed))  # type: ignore[arg-type]


if __name__ == "__main__":
    _child()
