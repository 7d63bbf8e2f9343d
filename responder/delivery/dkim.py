"""DKIM signing (RFC 6376, relaxed/relaxed) with the ``cryptography`` package.

dkimpy would do the RSA step in pure Python (~145 signatures/s per core); OpenSSL through
``cryptography`` signs RSA-2048 some 25× faster and Ed25519 (RFC 8463) faster still. The key is
parsed once. dkimpy stays the reference verifier in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from ..errors import ConfigError
from ..settings import Settings

# Signed when present; From is signed twice so a second From cannot be added unnoticed.
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)
_WSP = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SPACES = re.compile(rb"  +")


def canonical_body(body: bytes) -> bytes:
    """Relaxed body canonicalisation (RFC 6376 3.4.4): collapse whitespace, drop trailing space
    and empty lines. Whole-body byte operations rather than a regex per line: a newsletter has
    hundreds of lines, and the per-line version cost more than the RSA signature."""
    body = body.replace(b"\t", b" ")
    if b"  " in body:  # the regex starts with a literal, so it skips ahead with a fast search
        body = _SPACES.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def canonical_header(name: bytes, value: bytes) -> bytes:
    """Relaxed header canonicalisation, without the final CRLF."""
    value = _WSP.sub(b" ", _FOLD.sub(b"", value)).strip(b" ")
    return name.strip().lower() + b":" + value


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields as (name, raw value including folds) and the body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = data, b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.private_key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


class DkimSigner:
    def __init__(self, key: DkimKey) -> None:
        self.key = key

    def sign(self, data: bytes, timestamp: int) -> bytes:
        """``data`` with a ``DKIM-Signature`` header prepended."""
        head, hashed = self.prepare(data, timestamp)
        return self.assemble(head, self._sign(hashed), data)

    def prepare(self, data: bytes, timestamp: int) -> tuple[bytes, bytes]:
        """The signature header up to ``b=``, and the canonical bytes the key signs."""
        fields, body = split_message(data)
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest()).decode()
        # Each signed name is taken from the bottom up, as a verifier does (RFC 6376 5.4.2).
        present: dict[bytes, list[bytes]] = {}
        for raw_name, raw_value in fields:
            present.setdefault(raw_name.strip().lower(), []).append(raw_value)
        names = [n for n in SIGNED_HEADERS if n.encode() in present] + ["from"]
        tags = (
            f"v=1; a={self.key.algorithm}; c=relaxed/relaxed; d={self.key.domain};\r\n"
            f" s={self.key.selector}; t={timestamp};\r\n h={':'.join(names)};\r\n"
            f" bh={body_hash};\r\n b="
        )
        hashed = bytearray()
        remaining = {field: list(found) for field, found in present.items()}
        for name in names:
            left = remaining.get(name.encode())
            if left:  # an absent (or exhausted) name adds nothing: it signs its absence
                hashed += canonical_header(name.encode(), left.pop()) + b"\r\n"
        hashed += canonical_header(b"dkim-signature", tags.encode())
        return b"DKIM-Signature: " + tags.encode(), bytes(hashed)

    @staticmethod
    def assemble(head: bytes, signature: bytes, data: bytes) -> bytes:
        encoded = base64.b64encode(signature)
        folded = b"\r\n ".join(encoded[i : i + 72] for i in range(0, len(encoded), 72))
        return head + folded + b"\r\n" + data

    @property
    def is_rsa(self) -> bool:
        return isinstance(self.key.private_key, rsa.RSAPrivateKey)

    def _sign(self, hashed: bytes) -> bytes:
        return sign_canonical(self.key.private_key, hashed)


def sign_canonical(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, hashed: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(hashlib.sha256(hashed).digest())
    return key.sign(hashed, padding.PKCS1v15(), hashes.SHA256())


def load_key(path: Path) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read DKIM key {path}: {exc}") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ConfigError(f"DKIM key {path} is neither RSA nor Ed25519")
    return key


@dataclass(frozen=True)
class KeyConfig:
    """One configured signing key: ``SELECTOR._domainkey.DOMAIN`` publishes the public half of
    the PEM file at ``path``."""

    selector: str
    domain: str
    path: Path

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def configured_keys(settings: Settings) -> list[KeyConfig]:
    """The keys mail is signed with, in order. ``RESPONDER_DKIM_SELECTOR`` and
    ``RESPONDER_DKIM_KEY_FILE`` each take one value or a comma-separated list of the same length
    (e.g. an RSA-2048 and an Ed25519 key, RFC 8463, under two selectors)."""
    selectors = [s.strip() for s in (settings.dkim_selector or "").split(",") if s.strip()]
    files = [f.strip() for f in str(settings.dkim_key_file or "").split(",") if f.strip()]
    if not selectors and not files:
        return []
    if not (selectors and files):
        raise ConfigError("DKIM needs both RESPONDER_DKIM_SELECTOR and RESPONDER_DKIM_KEY_FILE")
    if len(selectors) != len(files):
        raise ConfigError(
            f"RESPONDER_DKIM_SELECTOR names {len(selectors)} selector(s) but RESPONDER_DKIM_KEY_FILE "
            f"{len(files)} key file(s): give one selector per key, in the same order"
        )
    if len(set(selectors)) != len(selectors):
        raise ConfigError("RESPONDER_DKIM_SELECTOR names a selector twice")
    domain = settings.dkim_domain or settings.sender_domain
    return [KeyConfig(selector, domain, Path(path)) for selector, path in zip(selectors, files, strict=True)]


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    keys = configured_keys(settings)
    if not keys:
        return None
    first = keys[0]
    return DkimSigner(DkimKey(first.selector, first.domain, load_key(first.path)))


def generate_key(algorithm: str = "rsa") -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def dns_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The TXT record value that publishes the public half: ``v=DKIM1; k=…; p=…``."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
