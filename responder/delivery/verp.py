"""Per-message return addresses: ``bounces+{token}@domain`` (the VERP envelope sender),
``reply+{token}@domain`` (Reply-To) and ``unsubscribe+{token}@domain`` (mailto opt-out).

A token is the row id in base 36 and a short HMAC, lowercase only: some servers fold the case
of local parts, and every character is legal in an unquoted local part. No address is encoded
in it, so a recipient with a non-ASCII local part (sent with SMTPUTF8) still gets an ASCII
return path.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

KINDS = ("bounces", "reply", "unsubscribe")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_MAC_CHARS = 12


def _base36(number: int) -> str:
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = _DIGITS[rest] + text
        if not number:
            return text


@dataclass(frozen=True)
class Tagged:
    kind: str  # bounces | reply | unsubscribe
    id: int  # a message's row id (bounces, reply) or a subscriber's (unsubscribe)


class Addresses:
    def __init__(self, secret_key: str, domain: str, previous: tuple[str, ...] = ()) -> None:
        self._key = hashlib.sha256(b"verp:" + secret_key.encode()).digest()
        # Addresses made with an earlier key (a rotation's grace period) are still read.
        self._earlier = [hashlib.sha256(b"verp:" + key.encode()).digest() for key in previous]
        self.domain = domain.lower()

    def _mac(self, kind: str, number: int, key: bytes | None = None) -> str:
        digest = hmac.new(key or self._key, f"{kind}:{number}".encode(), hashlib.sha256).hexdigest()
        return digest[:_MAC_CHARS]

    def address(self, kind: str, number: int) -> str:
        assert kind in KINDS and number >= 0
        return f"{kind}+{_base36(number)}-{self._mac(kind, number)}@{self.domain}"

    def bounce(self, message_pk: int) -> str:
        return self.address("bounces", message_pk)

    def reply(self, message_pk: int) -> str:
        return self.address("reply", message_pk)

    def unsubscribe(self, subscriber_id: int) -> str:
        return self.address("unsubscribe", subscriber_id)

    def parse(self, address: str) -> Tagged | None:
        """The kind and id an address of ours carries; None for any other or forged address."""
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        if domain != self.domain:
            return None
        kind, plus, token = local.partition("+")
        number_text, dash, mac = token.partition("-")
        if kind not in KINDS or not plus or not dash or not number_text or len(number_text) > 12:
            return None
        try:
            number = int(number_text, 36)
        except ValueError:
            return None
        for key in (self._key, *self._earlier):
            if hmac.compare_digest(mac, self._mac(kind, number, key)):
                return Tagged(kind, number)
        return None


@functools.lru_cache(maxsize=8)
def addresses_for(secret_key: str, domain: str, previous: tuple[str, ...] = ()) -> Addresses:
    return Addresses(secret_key, domain, previous)
