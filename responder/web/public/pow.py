"""Proof of work for forms: a signed, short-lived challenge and a nonce found by the browser.

A challenge is valid for ``MAX_AGE_S`` and once only (spent challenges are remembered, bounded).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from ...clock import Clock
from ...errors import ValidationError

MAX_AGE_S = 600
MAX_SPENT = 50_000


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def solves(challenge: str, nonce: str, bits: int) -> bool:
    return leading_zero_bits(hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()) >= bits


def solve(challenge: str, bits: int) -> str:
    """What the browser does; used by tests and scripted clients."""
    nonce = 0
    while not solves(challenge, str(nonce), bits):
        nonce += 1
    return str(nonce)


class ProofOfWork:
    def __init__(self, secret_key: str, clock: Clock) -> None:
        class _ClockSigner(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock.now().timestamp())

        self._serializer = URLSafeTimedSerializer(secret_key, salt="pow", signer=_ClockSigner)
        self._spent: OrderedDict[str, None] = OrderedDict()

    def challenge(self, form_id: str) -> str:
        return self._serializer.dumps([form_id, secrets.token_hex(8)])

    def verify(self, form_id: str, bits: int, challenge: object, nonce: object) -> None:
        if not isinstance(challenge, str) or not isinstance(nonce, str) or len(nonce) > 32 or len(challenge) > 200:
            raise ValidationError("this form needs a proof-of-work answer", field="pow_nonce")
        try:
            value = self._serializer.loads(challenge, max_age=MAX_AGE_S)
        except BadData as exc:
            raise ValidationError(
                "the proof-of-work challenge is not valid or has expired", field="pow_challenge"
            ) from exc
        if not (isinstance(value, list) and value and value[0] == form_id):
            raise ValidationError("the challenge belongs to another form", field="pow_challenge")
        if challenge in self._spent:
            raise ValidationError("this challenge was already used", field="pow_challenge")
        if not solves(challenge, nonce, bits):
            raise ValidationError("the proof-of-work answer is wrong", field="pow_nonce")
        self._spent[challenge] = None
        while len(self._spent) > MAX_SPENT:
            self._spent.popitem(last=False)
