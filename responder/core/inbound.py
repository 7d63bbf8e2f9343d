"""What an inbound mail is, read from its structure alone (pure, no I/O):

- a delivery status notification (RFC 3464) — hard when a recipient ``failed`` with a 5.x.x
  status, soft otherwise (``delayed``, 4.x.x);
- an abuse report in ARF (RFC 5965);
- an automatic reply (RFC 3834 ``Auto-Submitted``, or the older vacation-program headers),
  which is never a human reply;
- a mail from a person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk", "list"}


@dataclass(frozen=True)
class Recipient:
    address: str
    action: str
    status: str
    diagnostic: str = ""

    @property
    def hard(self) -> bool:
        return self.action == "failed" and self.status.startswith("5")


@dataclass(frozen=True)
class Report:
    kind: str  # dsn | arf | auto | human
    recipients: tuple[Recipient, ...] = ()
    feedback_type: str = ""
    original_message_id: str | None = None
    subject: str = ""
    text: str = ""
    in_reply_to: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hard(self) -> bool:
        return any(r.hard for r in self.recipients)


def parse(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def is_auto_submitted(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() in _AUTO_PRECEDENCE:
        return True
    return any(msg.get(name) is not None for name in ("X-Autoreply", "X-Autorespond"))


def classify(data: bytes, *, null_sender: bool = False) -> Report:
    msg = parse(data)
    subject = str(msg.get("Subject", ""))[:998]
    references = tuple(re.findall(r"<[^<>\s]+>", f"{msg.get('In-Reply-To', '')} {msg.get('References', '')}"))
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "")).lower()
        if report_type == "delivery-status":
            return Report(
                "dsn", tuple(_dsn_recipients(msg)), original_message_id=_original_message_id(msg), subject=subject
            )
        if report_type == "feedback-report":
            return Report(
                "arf", feedback_type=_feedback_type(msg), original_message_id=_original_message_id(msg), subject=subject
            )
    if null_sender or is_auto_submitted(msg):
        return Report("auto", original_message_id=references[-1] if references else None, subject=subject)
    return Report("human", subject=subject, text=_text(msg), in_reply_to=references)


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    blocks = str(payload).replace("\r\n", "\n").split("\n\n")
    return [parse(block.encode()) for block in blocks if block.strip()]


def _dsn_recipients(msg: EmailMessage) -> list[Recipient]:
    recipients = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _fields(part)[1:]:
            action = str(block.get("Action", "")).strip().lower()
            status_match = _STATUS.search(str(block.get("Status", "")))
            status = status_match.group(0) if status_match else ""
            address = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
            recipients.append(
                Recipient(
                    address.partition(";")[2].strip() or address.strip(),
                    action,
                    status,
                    str(block.get("Diagnostic-Code", "")).strip()[:500],
                )
            )
    return recipients


def _feedback_type(msg: EmailMessage) -> str:
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            for block in _fields(part):
                value = block.get("Feedback-Type")
                if value:
                    return str(value).strip().lower()
    return ""


def _original_message_id(msg: EmailMessage) -> str | None:
    for part in msg.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) else payload
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
        elif content_type == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            found = parse(raw if isinstance(raw, bytes) else b"").get("Message-ID")
            if found:
                return str(found).strip()
    return None


def _text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain", "html"))
    if body is None:
        return ""
    try:
        return str(body.get_content())[:20_000]
    except (LookupError, ValueError):
        return ""
