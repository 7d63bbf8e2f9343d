"""Signed tokens in public URLs: confirm, open, click and unsubscribe links.

Each kind has its own salt, so a token made for one purpose never passes for another. Tokens
are signed with the instance secret (itsdangerous, HMAC-SHA1 over a JSON payload); confirm
tokens also carry their issue time and expire.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import json
import zlib
from json.encoder import encode_basestring  # what json.dumps(str, ensure_ascii=False) calls
from typing import Any

from itsdangerous import (
    BadData,
    BadPayload,
    BadSignature,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)

from ..clock import Clock
from ..errors import InvalidToken, TokenRejected

_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
# itsdangerous tries zlib on every payload and keeps the result when shorter. Below this size
# the saving is a few characters for the price of the whole rest of a token, so short payloads
# stay plain (a plain payload is as valid a token); longer ones are compressed as itsdangerous
# does, which keeps a click token for a long URL within ``MAX_TOKEN_LEN``.
COMPRESS_FROM_BYTES = 256
OPEN_TOKENS_REMEMBERED = 16_384  # verified open tokens kept in memory (a few MB at most)


def _compact_json(obj: Any) -> bytes:
    """What itsdangerous's ``_CompactJSON.dumps`` writes, UTF-8: the shapes tokens carry (an id;
    an id and a URL) without building a ``JSONEncoder``, anything else through ``json``."""
    if type(obj) is int:
        return b"%d" % obj
    if type(obj) is list and len(obj) == 2 and type(obj[0]) is int and type(obj[1]) is str:
        return b"[%d,%s]" % (obj[0], encode_basestring(obj[1]).encode("utf-8"))
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _urlsafe_b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE)


class _Serializer(URLSafeSerializer):
    """itsdangerous's URL-safe tokens, checked with one HMAC and no per-token signer objects:
    the open pixel reads a token on every request. Same format and key derivation; the
    signature is compared as issued (``hmac.compare_digest``), so only canonical tokens pass."""

    def __init__(self, secret_key: str, salt: str) -> None:
        super().__init__(secret_key, salt=salt)
        key = self.make_signer().derive_key().ljust(64, b"\0")  # SHA-1's block; the key is 20 bytes
        # HMAC (RFC 2104) with its padded-key states hashed once: a copy per token is a quarter
        # of what ``hmac.new`` or OpenSSL's one-shot HMAC cost, and the pixel reads one per request.
        self._inner = hashlib.sha1(key.translate(_IPAD))
        self._outer = hashlib.sha1(key.translate(_OPAD))

    def _sign(self, value: bytes) -> bytes:
        inner, outer = self._inner.copy(), self._outer.copy()
        inner.update(value)
        outer.update(inner.digest())
        return _urlsafe_b64(outer.digest())

    def dumps(self, obj: Any, salt: str | bytes | None = None) -> str:
        # A mail carries one click token per link: no signer objects, and zlib only where it pays.
        data = _compact_json(obj)
        payload = b""
        if len(data) >= COMPRESS_FROM_BYTES:
            compressed = zlib.compress(data)
            if len(compressed) < len(data) - 1:
                payload = b"." + _urlsafe_b64(compressed)
        if not payload:
            payload = _urlsafe_b64(data)
        return (payload + b"." + self._sign(payload)).decode("ascii")

    def loads(self, s: str | bytes, salt: str | bytes | None = None, **kwargs: Any) -> Any:
        token = s.encode("ascii", "replace") if isinstance(s, str) else s
        value, sep, signature = token.rpartition(b".")
        if not sep or not hmac.compare_digest(signature, self._sign(value)):
            raise BadSignature("signature does not match")
        if value[:1] == b".":  # compressed payload: itsdangerous's own reader
            return self.load_payload(value)
        try:
            raw = binascii.a2b_base64(value.translate(_FROM_URLSAFE) + b"=" * (-len(value) % 4))
        except binascii.Error as exc:
            raise BadPayload("payload is not base64") from exc
        if raw.isdigit():  # an id, as most tokens carry: no JSON parser needed
            return int(raw)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadPayload("payload is not JSON") from exc


class _Rotating:
    """``dumps`` with the current key; ``loads`` with it, then with each earlier one."""

    def __init__(self, secret_key: str, previous: tuple[str, ...], salt: str) -> None:
        self.current = _Serializer(secret_key, salt)
        self.earlier = [_Serializer(key, salt) for key in previous]

    def dumps(self, obj: Any) -> str:
        return self.current.dumps(obj)

    def loads(self, token: str) -> Any:
        try:
            return self.current.loads(token)
        except BadSignature:
            for serializer in self.earlier:
                try:
                    return serializer.loads(token)
                except BadSignature:
                    continue
            raise


@functools.lru_cache(maxsize=16)
def url_serializer(secret_key: str, salt: str) -> URLSafeSerializer:
    """A ``URLSafeSerializer`` for ``salt`` with the fast ``dumps`` and ``loads`` above."""
    return _Serializer(secret_key, salt)


class Tokens:
    """Every signed token: made with the secret key; read with it or, during a rotation's grace
    period, with one of ``previous`` keys (``responder rotate-secret``)."""

    def __init__(self, secret_key: str, clock: Clock, confirm_max_age_s: int, previous: tuple[str, ...] = ()) -> None:
        class _ClockSigner(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock.now().timestamp())

        # itsdangerous signs with the last key of a list and accepts any of them.
        keys = [*reversed(previous), secret_key]
        self._confirm = URLSafeTimedSerializer(keys, salt="confirm", signer=_ClockSigner)
        self._privacy = URLSafeTimedSerializer(keys, salt="privacy", signer=_ClockSigner)
        self._open = _Rotating(secret_key, previous, "open")
        self._click = _Rotating(secret_key, previous, "click")
        self._unsubscribe = _Rotating(secret_key, previous, "unsubscribe")
        self._view = _Rotating(secret_key, previous, "view")
        self._keep = _Rotating(secret_key, previous, "keep")
        self._confirm_max_age_s = confirm_max_age_s
        # The pixel reads an open token on every request and a mail's images reload: tokens
        # already verified answer from memory. Only tokens that pass are kept (a raised
        # InvalidToken is not cached), so forged ones cannot fill it.
        self._open_read = functools.lru_cache(maxsize=OPEN_TOKENS_REMEMBERED)(self._read_open)

    def confirm(self, subscriber_id: int) -> str:
        return self._confirm.dumps(subscriber_id)

    def read_confirm(self, token: str) -> int:
        """The subscriber id; raises ``InvalidToken`` (with ``expired=True`` if only too old)."""
        try:
            value = self._confirm.loads(token, max_age=self._confirm_max_age_s)
        except BadData as exc:
            expired = exc.__class__.__name__ == "SignatureExpired"
            raise TokenRejected(
                "this confirmation link has expired" if expired else "this confirmation link is not valid",
                expired=expired,
            ) from exc
        return _as_int(value)

    def read_confirm_expired(self, token: str) -> int:
        """The subscriber id of a genuine confirm token, however old (to offer a new link)."""
        try:
            value = self._confirm.loads(token)
        except BadData as exc:
            raise InvalidToken("this confirmation link is not valid") from exc
        return _as_int(value)

    def privacy(self, subscriber_id: int) -> str:
        """The link of the mail a subscriber asks for to download or erase their data: it opens
        their data for ``PRIVACY_LINK_S`` only, unlike the preference link."""
        return self._privacy.dumps(subscriber_id)

    def read_privacy(self, token: str) -> int:
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidToken("this link is not valid")
        try:
            value = self._privacy.loads(token, max_age=PRIVACY_LINK_S)
        except BadData as exc:
            expired = exc.__class__.__name__ == "SignatureExpired"
            raise InvalidToken(
                "this link has expired: ask for a new one from your preference page"
                if expired
                else "this link is not valid"
            ) from exc
        return _as_int(value)

    def open(self, message_id: int) -> str:
        return self._open.dumps(message_id)

    def read_open(self, token: str) -> int:
        return self._open_read(token)

    def _read_open(self, token: str) -> int:
        return _as_int(_loads(self._open, token))

    def click(self, message_id: int, url: str) -> str:
        return self._click.dumps([message_id, url])

    def read_click(self, token: str) -> tuple[int, str]:
        value = _loads(self._click, token)
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            raise InvalidToken("malformed link")
        return _as_int(value[0]), value[1]

    def keep(self, subscriber_id: int) -> str:
        """The "yes, keep me" link of the re-permission mail sent before a sunset."""
        return self._keep.dumps(subscriber_id)

    def read_keep(self, token: str) -> int:
        return _as_int(_loads(self._keep, token))

    def unsubscribe(self, subscriber_id: int) -> str:
        return self._unsubscribe.dumps(subscriber_id)

    def read_unsubscribe(self, token: str) -> int:
        return _as_int(_loads(self._unsubscribe, token))

    def view(self, message_id: int) -> str:
        return self._view.dumps(message_id)

    def read_view(self, token: str) -> int:
        return _as_int(_loads(self._view, token))


PRIVACY_LINK_S = 3600  # how long the link to download or erase one's data works
MAX_TOKEN_LEN = 4096 + 512  # a click token carries its target URL (at most 4096 characters)


def _loads(serializer: _Rotating | URLSafeSerializer, token: str) -> Any:
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidToken("this link is not valid")
    try:
        return serializer.loads(token)
    except BadData as exc:
        raise InvalidToken("this link is not valid") from exc


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken("malformed link")
    return value
