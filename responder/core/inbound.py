"""What an inbound mail is, read from its structure alone (pure, no I/O):

- a delivery status notification (RFC 3464) — hard when a recipient ``failed`` with a 5.x.x
  status, soft otherwise (``delayed``, 4.x.x);
- an abuse report in ARF (RFC 5965);
- an automatic reply (out of office, vacation, list and robot mail: ``auto_reply``), which is
  never a person's reply;
- a mail from a person.

``auto_reply`` is the one out-of-office verdict: the inbound server (replies) and the enquiry
queue (acknowledgements) both ask it, so one mail is automatic on every path or on none.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import parseaddr

from .bounces import Bounce
from .bounces import classify as classify_bounce

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk", "list"}
# Fields only automatic mail carries: the vacation programs' own, Exchange's request that
# nobody answer (its automatic replies carry it), list and bulk mail, loop guards.
AUTO_FIELDS = (
    "x-auto-response-suppress",
    "x-autoreply",
    "x-autorespond",
    "list-id",
    "list-unsubscribe",
    "list-post",
    "x-loop",
    "feedback-id",
)
ROBOT_LOCALPARTS = (
    "mailer-daemon",
    "postmaster",
    "noreply",
    "no-reply",
    "do-not-reply",
    "donotreply",
    "bounce",
    "bounces",
    "auto-reply",
    "autoreply",
)
# How out-of-office and automatic replies begin their subject, in the languages mail programs
# speak (compared case-folded, after any leading bracket).
AUTO_SUBJECTS = (
    "automatic reply",
    "auto reply",
    "auto-reply",
    "autoreply",
    "auto response",
    "auto-response",
    "autoresponse",
    "automatic response",
    "automated response",
    "auto:",
    "out of office",
    "out of the office",
    "vacation reply",
    "abwesenheitsnotiz",
    "automatische antwort",
    "abwesend",
    "réponse automatique",
    "reponse automatique",
    "absence du bureau",
    "absent du bureau",
    "message d'absence",
    "respuesta automática",
    "respuesta automatica",
    "fuera de la oficina",
    "fuera de oficina",
    "risposta automatica",
    "fuori sede",
    "fuori ufficio",
    "resposta automática",
    "resposta automatica",
    "fora do escritório",
    "automatisch antwoord",
    "afwezig",
    "autosvar",
    "automatiskt svar",
    "automatisk svar",
    "frånvaro",
    "fravær",
    "automaattinen vastaus",
    "odpowiedź automatyczna",
    "automatyczna odpowiedź",
    "automatická odpověď",
    "automatikus válasz",
    "otomatik yanıt",
    "otomatik cevap",
    "автоматический ответ",
    "автоответ",
    "αυτόματη απάντηση",
    "răspuns automat",
    "自動応答",
    "自動返信",
    "自动回复",
    "自動回覆",
    "自動回復",
    "자동 회신",
    "자동 응답",
)


@dataclass(frozen=True)
class Recipient:
    address: str
    action: str
    status: str
    diagnostic: str = ""

    @property
    def bounce(self) -> Bounce:
        return classify_bounce(None, f"{self.status} {self.diagnostic}")

    @property
    def hard(self) -> bool:
        """Failed, and for the address itself (``core.bounces``): a blocklist or policy refusal
        reported in a DSN is not the address's fault."""
        return self.action == "failed" and self.bounce.suppresses


@dataclass(frozen=True)
class Report:
    kind: str  # dsn | arf | auto | human
    recipients: tuple[Recipient, ...] = ()
    feedback_type: str = ""
    original_message_id: str | None = None
    # An ARF report's Original-Mail-From, else the reported mail's Return-Path: our VERP address.
    original_mail_from: str | None = None
    subject: str = ""
    text: str = ""
    in_reply_to: tuple[str, ...] = field(default_factory=tuple)
    auto_reason: str = ""  # why an ``auto`` mail is automatic (``auto_reply``)
    message_id: str = ""  # the inbound mail's own Message-ID ('' when it has none)

    @property
    def hard(self) -> bool:
        return any(r.hard for r in self.recipients)


def parse(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def auto_reply(fields: Mapping[str, str] | Message, sender: str | None = None) -> str:
    """Why a mail is automatic, never a person's ('' when it is a person's), from its header
    fields and its sender (the envelope's, when known; a null sender is ``<>`` or empty):

    ``Auto-Submitted`` other than ``no`` (RFC 3834); ``Precedence: auto_reply|bulk|junk|list``;
    a field only automatic mail carries (``AUTO_FIELDS``: ``X-Auto-Response-Suppress``,
    ``X-Autoreply``, ``X-Autorespond``, ``List-Id``, ``List-Unsubscribe`` …); a null sender; a
    report (``multipart/report``: delivery, read receipts); a robot's address as sender or
    ``From``; or a subject an automatic reply begins with (``AUTO_SUBJECTS``).
    """
    lowered = {name.lower(): str(value).strip() for name, value in fields.items()}
    auto = lowered.get("auto-submitted", "").lower()
    if auto and not auto.startswith("no"):
        return "auto-submitted"
    if lowered.get("precedence", "").lower() in AUTO_PRECEDENCE:
        return "precedence"
    for name in AUTO_FIELDS:
        if name in lowered:
            return name
    if (sender is not None and sender.strip() in ("", "<>")) or lowered.get("return-path") == "<>":
        return "null sender"
    if lowered.get("content-type", "").lower().startswith("multipart/report"):
        return "report"
    for address in (sender or "", parseaddr(lowered.get("from", ""))[1]):
        local = address.strip("<> ").rpartition("@")[0].lower()
        if local in ROBOT_LOCALPARTS or local.startswith(("bounce+", "bounces+", "bounce-")):
            return "robot address"
    if _subject(lowered.get("subject", "")).startswith(AUTO_SUBJECTS):
        return "subject"
    return ""


def _subject(value: str) -> str:
    """The subject as text (encoded words decoded), case-folded, leading brackets dropped."""
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (LookupError, ValueError):
            pass
    return unicodedata.normalize("NFC", " ".join(value.split())).casefold().lstrip("[( ")


# What never reaches a record or an answer from inbound text: C0 controls but tab and newline,
# DEL, C1 controls, the Unicode line and paragraph separators, and U+FFFE/FFFF.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff]")
MAX_SUBJECT = 200
MAX_TEXT = 10_000


def one_line(value: str, limit: int = MAX_SUBJECT) -> str:
    """Inbound header text as one clean line: encoded words decoded (by the parser, or here
    when left raw), every control character and line break a space, runs of space one, cut to
    ``limit`` characters. Never refuses."""
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (LookupError, ValueError, UnicodeError):
            pass
    value = _UNSAFE.sub(" ", value.replace("\ufffd", " "))
    return " ".join(value.split())[:limit]


def plain_text(value: str, limit: int = MAX_TEXT) -> str:
    """Inbound body text safe to store and quote: line ends made ``\\n``, control characters
    (but tab and newline) dropped, cut to ``limit`` characters. Never refuses."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE.sub("", value)[:limit]


def _own_message_id(msg: EmailMessage) -> str:
    try:
        found = re.search(r"<[^<>\s]{1,900}>", str(msg.get("Message-ID", "")))
    except (ValueError, TypeError):
        return ""
    return found.group(0) if found else ""


def classify(data: bytes, *, sender: str | None = None) -> Report:
    """What the mail is; ``sender`` is the envelope's, when known (empty or ``<>``: a null
    sender). Its subject and text come cleaned (``one_line``, ``plain_text``)."""
    msg = parse(data)
    try:
        subject = one_line(str(msg.get("Subject", "")))
    except (ValueError, TypeError):  # a header the parser cannot even read
        subject = ""
    own_id = _own_message_id(msg)
    references = tuple(re.findall(r"<[^<>\s]+>", f"{msg.get('In-Reply-To', '')} {msg.get('References', '')}"))
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "")).lower()
        if report_type in ("delivery-status", "global-delivery-status"):  # RFC 3464, RFC 6533
            return Report(
                "dsn",
                tuple(_dsn_recipients(msg)),
                original_message_id=_original_message_id(msg),
                subject=subject,
                message_id=own_id,
            )
        if report_type == "feedback-report":
            return Report(
                "arf",
                feedback_type=_feedback_type(msg),
                original_message_id=_original_message_id(msg),
                original_mail_from=_original_mail_from(msg),
                subject=subject,
                message_id=own_id,
            )
    automatic = auto_reply(msg, sender)
    if automatic:
        return Report(
            "auto",
            original_message_id=references[-1] if references else None,
            subject=subject,
            text=_text(msg),
            auto_reason=automatic,
            message_id=own_id,
        )
    return Report("human", subject=subject, text=_text(msg), in_reply_to=references, message_id=own_id)


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [p for p in payload if isinstance(p, Message)]
        if part.get_content_type() == "message/global-delivery-status" and len(blocks) == 1:
            # RFC 6533 (a report on mail to a UTF-8 address): the parser takes it for a message,
            # the first block as its header and the recipients' blocks as a UTF-8 body.
            body = blocks[0].get_payload(decode=True)
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
            rest = text.replace("\r\n", "\n").split("\n\n")
            return [blocks[0], *(parse(block.encode()) for block in rest if block.strip())]
        return blocks
    texts = str(payload).replace("\r\n", "\n").split("\n\n")
    return [parse(block.encode()) for block in texts if block.strip()]


def _dsn_recipients(msg: EmailMessage) -> list[Recipient]:
    recipients = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
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


def _original_mail_from(msg: EmailMessage) -> str | None:
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            for block in _fields(part):
                value = block.get("Original-Mail-From")
                if value:
                    return str(value).strip().strip("<>")
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            if part.get_content_type() == "message/rfc822":
                payload = part.get_payload()
                inner = payload[0] if isinstance(payload, list) else payload
            else:
                raw = part.get_payload(decode=True)
                inner = parse(raw if isinstance(raw, bytes) else b"")
            if isinstance(inner, Message) and inner.get("Return-Path"):
                return str(inner["Return-Path"]).strip().strip("<>")
    return None


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
        return plain_text(str(body.get_content()))
    except (LookupError, ValueError, UnicodeError):
        return ""
