"""DKIM's RSA step in a child process, so it runs beside the event loop instead of in it.

An RSA-2048 signature costs ~0.2 ms of CPU in OpenSSL and ``cryptography`` holds the interpreter
lock throughout, so in the sending process it would take a third of each mail's CPU. The child
(``python -m responder.delivery.signing``, a ``framed.FramedChild``) receives every key once, as
PEMs in its first frame, then requests of one byte naming the key (its index in the signer) and
the canonical header bytes, and answers each with its signature. An Ed25519 signature costs some
30 µs and is made in process. If the child is gone the caller signs in process: a mail is never
held back for want of the helper.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization

from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame
from .dkim import DkimKey, private_pem, sign_canonical

_SEPARATOR = b"\0"  # between the PEMs of the first frame; never inside one


class SigningUnavailable(ChildGone):
    """The child is not running; sign in process instead."""


class SigningProcess(FramedChild):
    gone = SigningUnavailable
    what = "DKIM signing process"

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        super().__init__("responder.delivery.signing", first=_SEPARATOR.join(private_pem(k.private_key) for k in keys))

    async def sign(self, index: int, hashed: bytes) -> bytes:
        """The signature of key ``index`` (of those given) over ``hashed``."""
        return await self.ask(bytes((index,)) + hashed)


def _child() -> None:
    child_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    pems = read_frame(stdin)
    if pems is None:
        return
    keys = [serialization.load_pem_private_key(pem, password=None) for pem in pems.split(_SEPARATOR)]
    while (request := read_frame(stdin)) is not None:
        write_frame(stdout, sign_canonical(keys[request[0]], request[1:]))  # type: ignore[arg-type]


if __name__ == "__main__":
    _child()
