"""Building the bytes of one mail: multipart text + HTML with the headers a list mail needs.

Every header value is checked for CR, LF and other control characters before composing:
Python 3.11.7's ``email`` package predates the fix for CVE-2024-6923 and would let a newline in
a display name smuggle a header in.
"""

from __future__ import annotations

import binascii
import datetime as dt
import functools
import os
import random
import re
import struct
import time
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr

import idna

from ..errors import ValidationError

# C0 and C1 controls, DEL and the Unicode line and paragraph separators: never in a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # printable ASCII except ':' (RFC 5322 2.2)


def check_header_value(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise ValidationError(f"control character in {name} header", field=name)
    return value


def check_header_name(name: str) -> str:
    if not _FIELD_NAME.match(name):
        raise ValidationError(f"not a valid header name: {name!r}", field="header")
    return name


def new_message_id(domain: str) -> str:
    return new_message_ids(domain, 1)[0]


def new_message_ids(domain: str, count: int) -> list[str]:
    """``count`` Message-IDs: the time in milliseconds (12 hex digits), then 32 random ones
    (128 bits, more than a ``uuid4``'s 122), from one read of the system's randomness. The time
    first makes the outbox's unique index on them grow at its end, as its primary key does: with
    random IDs each batch of a big newsletter wrote into pages all over an index larger than the
    buffer cache (a newsletter to 1,000,000 queued on PostgreSQL in 48-50 s instead of 55 s)."""
    prefix = f"{time.time_ns() // 1_000_000:012x}"
    digits = os.urandom(16 * count).hex()
    return [f"<{prefix}{digits[i : i + 32]}@{domain}>" for i in range(0, 32 * count, 32)]


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: tuple[str, ...]
    # An address with a local part outside ASCII, in the envelope or the headers: the mail goes
    # only with SMTPUTF8 (RFC 6531, 6532), to a relay that offers it.
    smtputf8: bool = False


@dataclass(frozen=True)
class Mail:
    from_name: str
    from_email: str
    to_name: str
    to_email: str
    subject: str
    html: str
    text: str
    message_id: str
    date: dt.datetime
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    list_id: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    envelope_from: str | None = None  # the VERP bounce address; From when unset
    reply_to: str | None = None
    feedback_id: str | None = None

    @property
    def envelope(self) -> Envelope:
        sender = self.envelope_from or self.from_email
        utf8 = needs_smtputf8(self.to_email) or needs_smtputf8(sender) or needs_smtputf8(self.from_email)
        return Envelope(wire_address(sender), (wire_address(self.to_email),), utf8)


def needs_smtputf8(email: str) -> bool:
    """A local part outside ASCII, which only SMTPUTF8 carries (a domain travels in IDNA)."""
    return not email.isascii() and not email.rpartition("@")[0].isascii()


def wire_address(email: str) -> str:
    """The address as it travels, in the envelope and the headers: an internationalised domain
    in IDNA (``xn--…``, RFC 5890), understood by every server. A local part outside ASCII stays
    UTF-8 (``needs_smtputf8``): the transport sends such a mail only to a relay offering
    SMTPUTF8, and fails it at once elsewhere."""
    if email.isascii():
        return email
    local, _, domain = email.rpartition("@")
    if domain.isascii():
        return email
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise ValidationError(f"the domain of {email!r} is not a valid internationalised name: {exc}") from exc


def _address(display_name: str, email: str, header: str) -> str:
    check_header_value(header, display_name)
    check_header_value(header, email)
    display_name = display_name.strip(" \t")  # around a header's text, not part of it
    email = wire_address(email)
    if "=?" in display_name:
        # Text that looks like an encoded word is itself encoded, so a reader decodes it to the
        # literal text given (RFC 2047 6.2: decoded text is not decoded again), never to what
        # the look-alike says (a CR LF, another header).
        encoded = Header(display_name, "utf-8").encode(linesep="\r\n", maxlinelen=76)
        return f"{encoded} <{email}>"
    if not email.isascii():
        # RFC 6532: the address as UTF-8. formataddr refuses it, so it quotes or encodes the name
        # beside an ASCII stand-in, which the address then replaces.
        if not display_name:
            return email
        return formataddr((display_name, "@"), charset="utf-8").removesuffix("<@>") + f"<{email}>"
    # formataddr quotes specials and turns a non-ASCII name into an RFC 2047 encoded word.
    return formataddr((display_name, email), charset="utf-8")


def _unstructured(name: str, value: str) -> str:
    """A free-text header (Subject): as is when short ASCII, else folded encoded words; text
    that looks like an encoded word (``=?``) is always encoded, never passed through. Space and
    tab around it are dropped: a reader would not see them either (RFC 5322)."""
    value = value.strip(" \t")
    if value.isascii() and len(name) + len(value) < 76 and "=?" not in value:
        return value
    charset = "us-ascii" if value.isascii() and "=?" not in value else "utf-8"
    # RFC 2047 2: a line holding encoded words is at most 76 characters (the default is 78).
    return Header(value, charset, header_name=name).encode(linesep="\r\n", maxlinelen=76)


# Bytes quoted-printable writes as they are: tab, newline and printable ASCII ('=' is escaped apart).
_QP_LITERAL = bytes([9, 10, *range(32, 127)])
# Past one byte in _QP_MAX_ESCAPED_SHARE to escape, or _QP_MAX_ESCAPED_KINDS different ones (text
# in a non-Latin script), escaping them one kind at a time costs more than binascii's byte loop.
_QP_MAX_ESCAPED_SHARE = 32
_QP_MAX_ESCAPED_KINDS = 24
# One soft-broken piece of a long line: at most 75 characters, never ending inside an "=XX".
_QP_PIECE = re.compile(rb".{1,75}(?<!=)(?<!=.)", re.DOTALL)
_QP_WHITESPACE = {32: b"=20", 9: b"=09"}


def _qp(text: str) -> bytes:
    """Quoted-printable, lines ending in CRLF: the bytes ``binascii.b2a_qp(istext=True)``
    writes, produced with a few C-speed passes over the whole body instead of its byte loop,
    except that no line is longer than 76 characters (``_within_76``).

    Text in a non-Latin script (many bytes to escape) goes through ``b2a_qp`` itself.
    """
    return _qp_lines(text)


# A line b2a_qp makes 77 or 78 characters long: up to 75, then an escaped space or tab that
# ended the line (it escapes that after cutting the line to length).
_QP_OVERLONG = re.compile(rb"^([^\r\n]{74,75})(=20|=09)(?=\r\n|\Z)", re.M)


def _within_76(data: bytes) -> bytes:
    """RFC 2045 6.7 (5): no encoded line over 76 characters. b2a_qp breaks it for a line of 75
    or 76 characters ending in whitespace; such an escape moves to a line of its own, after a
    soft break. Checked with substring searches first: most bodies have no such line."""
    if b"=20\r\n" in data or b"=09\r\n" in data or data.endswith((b"=20", b"=09")):
        return _QP_OVERLONG.sub(rb"\1=\r\n\2", data)
    return data


def _qp_lines(text: str) -> bytes:
    """``b2a_qp``'s bytes, lines ending in CRLF."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8")
    escaped = data.translate(None, _QP_LITERAL)
    if len(escaped) * _QP_MAX_ESCAPED_SHARE > len(data):
        return _qp_binascii(data)
    kinds = set(escaped)
    if len(kinds) > _QP_MAX_ESCAPED_KINDS:
        return _qp_binascii(data)
    data = data.replace(b"=", b"=3D")  # first: the escapes below bring their own '='
    for byte in kinds:
        data = data.replace(bytes((byte,)), b"=%02X" % byte)
    # Then line by line, b2a_qp's rules: a lone "." (or one before a NUL) is escaped; a longer
    # line is cut into pieces of at most 75 characters, the last may have 76; whitespace ending
    # a line is escaped, at the end of the body before cutting, elsewhere after (so such a line
    # may reach 78 characters, as with b2a_qp).
    lines = data.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line:
            continue
        end = line[-1]
        if (end == 32 or end == 9) and i == last:
            line = line[:-1] + _QP_WHITESPACE[end]
            end = 0
        if line[0] == 46 and (len(line) == 1 or line.startswith(b".=00")):
            line = b"=2E" + line[1:]
        if len(line) > 76 or (len(line) == 76 and line[-3] == 61):  # 61: ends in an escape
            line = _soft_broken(line)
        if end == 32 or end == 9:
            # Escaped after cutting: where that would take the last piece past 76 characters,
            # the escape moves to a line of its own (``_within_76``, without searching the body).
            body = line[:-1]
            piece = len(body) - body.rfind(b"\n") - 1
            line = body + (b"=\r\n" if piece >= 74 else b"") + _QP_WHITESPACE[end]
        lines[i] = line
    return b"\r\n".join(lines)


def _soft_broken(line: bytes) -> bytes:
    """A long encoded line cut into pieces of at most 75 characters joined by soft breaks, none
    ending inside an "=XX" escape; a last piece of one character joins the one before (76).

    ``_QP_PIECE`` matches the line character by character, which is fine for a few hundred. A
    longer line (MJML writes a whole body as one) is cut a run of 75-character pieces at a time
    (``struct``), up to the first cut that would fall inside an escape, found with two strided
    slices; only that piece is shortened (to 74 or 73). A 15 KB line took 17 µs, and takes 10."""
    if len(line) < _QP_LONG_LINE:
        pieces = _QP_PIECE.findall(line)
    else:
        pieces = []
        start, end = 0, len(line)
        while end - start > 75:
            cuts = (end - start - 1) // 75  # cuts of 75 characters before the last piece
            last = start + 75 * cuts
            # The first piece whose last or second to last character is an "=": the escape
            # it begins would be cut, so that piece ends before it.
            ends = line[start + 74 : last : 75].find(b"=")
            before = line[start + 73 : last : 75].find(b"=")
            first = (
                cuts if ends < 0 and before < 0 else ends if before < 0 else before if ends < 0 else min(ends, before)
            )
            if first:
                pieces += _fixed_pieces(first).unpack_from(line, start)
                start += 75 * first
            if first < cuts:
                size = 73 if line[start + 73] == 61 else 74  # 61: "="
                pieces.append(line[start : start + size])
                start += size
        pieces.append(line[start:])
    if len(pieces[-1]) == 1:  # the last character may take a line to 76
        pieces[-2:] = [pieces[-2] + pieces[-1]]
    return b"=\r\n".join(pieces)


_QP_LONG_LINE = 600  # from here on the strided cut is the faster


@functools.lru_cache(maxsize=64)
def _fixed_pieces(count: int) -> struct.Struct:
    return struct.Struct("75s" * count)


def _qp_binascii(data: bytes) -> bytes:
    return _within_76(binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n"))


def compose(mail: Mail) -> bytes:
    """The bytes of a multipart/alternative mail: text and HTML, both quoted-printable.

    Built directly rather than through ``email.message``, which costs milliseconds per mail:
    at list scale composing would otherwise outweigh the SMTP exchange itself.
    """
    headers = [
        ("From", _address(mail.from_name, mail.from_email, "From")),
        ("To", _address(mail.to_name, mail.to_email, "To")),
        ("Subject", _unstructured("Subject", check_header_value("Subject", mail.subject))),
        ("Date", format_datetime(mail.date)),
        ("Message-ID", check_header_value("Message-ID", mail.message_id)),
    ]
    if mail.reply_to:
        headers.append(("Reply-To", _address("", mail.reply_to, "Reply-To")))
    if mail.feedback_id:
        headers.append(("Feedback-ID", check_header_value("Feedback-ID", mail.feedback_id)))
    if mail.list_id:
        headers.append(("List-Id", check_header_value("List-Id", mail.list_id)))
    if mail.unsubscribe_url:
        targets = [f"<{check_header_value('List-Unsubscribe', mail.unsubscribe_url)}>"]
        if mail.unsubscribe_mailto:
            targets.append(f"<{check_header_value('List-Unsubscribe', mail.unsubscribe_mailto)}>")
        headers.append(("List-Unsubscribe", ",\r\n ".join(targets)))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for name, value in mail.extra_headers:
        headers.append((check_header_name(name), _unstructured(name, check_header_value(name, value))))
    # "=_" never occurs in quoted-printable output, so the boundary cannot collide with a body;
    # the random part needs no secrecy (``uuid4`` reads the system's randomness: 17 µs here).
    boundary = f"=_{random.getrandbits(128):032x}"
    headers += [("MIME-Version", "1.0"), ("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"')]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8")
    delimiter = f"--{boundary}\r\n".encode()
    part_head = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    return b"".join(
        [
            head,
            b"\r\n",
            delimiter,
            part_head.format("plain").encode(),
            _qp(mail.text),
            b"\r\n",
            delimiter,
            part_head.format("html").encode(),
            _qp(mail.html),
            b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
    )
