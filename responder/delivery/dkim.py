"""DKIM signing (RFC 6376, relaxed/relaxed) with the ``cryptography`` package.

dkimpy would do the RSA step in pure Python (~145 signatures/s per core); OpenSSL through
``cryptography`` signs RSA-2048 some 25× faster and Ed25519 (RFC 8463) faster still. The keys
are parsed once. dkimpy stays the reference verifier in the tests.

Mail can be signed with several keys under their own selectors, typically RSA-2048 and Ed25519:
Ed25519 is small and fast, but not every verifier knows it yet, so RSA stays beside it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from ..errors import ConfigError
from ..settings import Settings
from .mime import Mail, compose

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
        return "rsa-sha256" if self.is_rsa else "ed25519-sha256"

    @property
    def is_rsa(self) -> bool:
        return isinstance(self.private_key, rsa.RSAPrivateKey)


class DkimSigner:
    """Signs with each key in turn, one ``DKIM-Signature`` per key, each prepended (the last
    key's ends on top). No signature covers another (``DKIM-Signature`` is not signed), so all
    are made from the same bytes: the body is hashed and the headers canonicalised once."""

    def __init__(self, *keys: DkimKey) -> None:
        if not keys:
            raise ValueError("a DkimSigner needs at least one key")
        self.keys = keys

    def sign(self, data: bytes, timestamp: int) -> bytes:
        """``data`` with a ``DKIM-Signature`` header prepended for each key."""
        unsigned = self.prepare(data, timestamp)
        signatures = [
            sign_canonical(key.private_key, hashed) for key, (_, hashed) in zip(self.keys, unsigned, strict=True)
        ]
        return self.assemble(unsigned, signatures, data)

    def prepare(self, data: bytes, timestamp: int) -> list[tuple[bytes, bytes]]:
        """For each key: its signature header up to ``b=``, and the canonical bytes it signs."""
        fields, body = split_message(data)
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest()).decode()
        # Each signed name is taken from the bottom up, as a verifier does (RFC 6376 5.4.2).
        present: dict[bytes, list[bytes]] = {}
        for raw_name, raw_value in fields:
            present.setdefault(raw_name.strip().lower(), []).append(raw_value)
        names = [n for n in SIGNED_HEADERS if n.encode() in present] + ["from"]
        headers = bytearray()
        remaining = {field: list(found) for field, found in present.items()}
        for name in names:
            left = remaining.get(name.encode())
            if left:  # an absent (or exhausted) name adds nothing: it signs its absence
                headers += canonical_header(name.encode(), left.pop()) + b"\r\n"
        unsigned = []
        for key in self.keys:
            tags = (
                f"v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain};\r\n"
                f" s={key.selector}; t={timestamp};\r\n h={':'.join(names)};\r\n"
                f" bh={body_hash};\r\n b="
            ).encode()
            unsigned.append((b"DKIM-Signature: " + tags, bytes(headers + canonical_header(b"dkim-signature", tags))))
        return unsigned

    @staticmethod
    def assemble(unsigned: Sequence[tuple[bytes, bytes]], signatures: Sequence[bytes], data: bytes) -> bytes:
        """``data`` with the headers ``prepare`` began, each completed by its signature."""
        signed = []
        for (head, _), signature in zip(unsigned, signatures, strict=True):
            encoded = base64.b64encode(signature)
            folded = b"\r\n ".join(encoded[i : i + 72] for i in range(0, len(encoded), 72))
            signed.append(head + folded + b"\r\n")
        return b"".join(reversed(signed)) + data


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
    return _key_configs(settings.dkim_selector, settings.dkim_key_file, settings.dkim_domain or settings.sender_domain)


def _key_configs(selector_setting: str | None, key_file_setting: str | None, domain: str) -> list[KeyConfig]:
    selectors = [s.strip() for s in (selector_setting or "").split(",") if s.strip()]
    files = [f.strip() for f in (key_file_setting or "").split(",") if f.strip()]
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
    return [KeyConfig(selector, domain, Path(path)) for selector, path in zip(selectors, files, strict=True)]


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """A signer holding every configured key, or None when DKIM is off; ``ConfigError`` for a
    configuration that cannot sign (see ``configured_keys``, ``load_key``). The keys are read
    once per configuration."""
    return _signer(settings.dkim_selector, settings.dkim_key_file, settings.dkim_domain or settings.sender_domain)


@functools.lru_cache(maxsize=4)
def _signer(selector: str | None, key_file: str | None, domain: str) -> DkimSigner | None:
    keys = _key_configs(selector, key_file, domain)
    if not keys:
        return None
    return DkimSigner(*(DkimKey(key.selector, key.domain, load_key(key.path)) for key in keys))


def signed_mail(settings: Settings, mail: Mail) -> bytes:
    """The bytes of ``mail``, signed with every configured key (as they are when DKIM is off):
    for the few mails that do not go through the delivery worker, whose render processes sign
    (enquiry acknowledgements and answers, a template's test send)."""
    data = compose(mail)
    signer = signer_from_settings(settings)
    return data if signer is None else signer.sign(data, int(mail.date.timestamp()))


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
