"""Building the bytes of one mail: multipart text + HTML with the headers a list mail needs.

Every header value is checked for CR, LF and other control characters before composing:
Python 3.11.7's ``email`` package predates the fix for CVE-2024-6923 and would let a newline in
a display name smuggle a header in.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from ..errors import ValidationError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
    return f"<{uuid.uuid4().hex}@{domain}>"


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: tuple[str, ...]


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
        return Envelope(self.envelope_from or self.from_email, (self.to_email,))


def _address(display_name: str, email: str, header: str) -> Address:
    check_header_value(header, display_name)
    check_header_value(header, email)
    local, _, domain = email.rpartition("@")
    return Address(display_name=display_name, username=local, domain=domain)


def compose(mail: Mail) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(mail.from_name, mail.from_email, "From")
    msg["To"] = _address(mail.to_name, mail.to_email, "To")
    msg["Subject"] = check_header_value("Subject", mail.subject)
    msg["Date"] = format_datetime(mail.date)
    msg["Message-ID"] = check_header_value("Message-ID", mail.message_id)
    if mail.reply_to:
        msg["Reply-To"] = _address("", mail.reply_to, "Reply-To")
    if mail.feedback_id:
        msg["Feedback-ID"] = check_header_value("Feedback-ID", mail.feedback_id)
    if mail.list_id:
        msg["List-Id"] = check_header_value("List-Id", mail.list_id)
    if mail.unsubscribe_url:
        targets = [f"<{check_header_value('List-Unsubscribe', mail.unsubscribe_url)}>"]
        if mail.unsubscribe_mailto:
            targets.append(f"<{check_header_value('List-Unsubscribe', mail.unsubscribe_mailto)}>")
        msg["List-Unsubscribe"] = ", ".join(targets)
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in mail.extra_headers:
        msg[check_header_name(name)] = check_header_value(name, value)
    msg.set_content(mail.text, subtype="plain", charset="utf-8")
    msg.add_alternative(mail.html, subtype="html", charset="utf-8")
    return msg.as_bytes()
