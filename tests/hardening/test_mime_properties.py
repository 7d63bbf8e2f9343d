"""Whole mails from the MIME builder, by hypothesis (issue 18, point 9): whatever the names,
subject, text, HTML and extra headers, ``compose`` either refuses with a ``ValidationError`` (a
control character where a header cannot carry it) or writes a mail that

- has only CRLF line endings, no line over 998 octets (RFC 5322 2.1.1), and bodies whose encoded
  lines are at most 76 characters (RFC 2045 6.7);
- is 7-bit ASCII, as every relay accepts;
- reads back, with Python's ``email`` parser and without a defect, to exactly the names,
  subject, text and HTML given (line breaks as LF), and with no header that was not put there;
- carries a DKIM signature (Ed25519) that dkimpy verifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.delivery.dkim import DkimKey, DkimSigner
from responder.delivery.mime import Mail, compose
from responder.errors import ValidationError

KEY = ed25519.Ed25519PrivateKey.generate()
SIGNER = DkimSigner(DkimKey("prop", "acme.example.com", KEY))
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()


def dns(name: bytes, timeout: int = 5) -> bytes:
    assert name == b"prop._domainkey.acme.example.com."
    return f"v=DKIM1; k=ed25519; p={PUBLIC}".encode()


# Any text but surrogates; bodies get long lines, runs of spaces and every line ending.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
BODY = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),
        st.sampled_from(["\n", "\r\n", "\r", " ", "\t", ".", "=", "  \n", "x" * 80, "é" * 50, "中文" * 40, "From x"]),
    ),
    max_size=20,
).map("".join)
HEADER_NAMES = st.sampled_from(["X-Campaign", "X-Layer", "Precedence", "X-Entity-Ref-ID"])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    from_name=TEXT,
    to_name=TEXT,
    subject=TEXT,
    text=BODY,
    html=BODY,
    extra=st.lists(st.tuples(HEADER_NAMES, TEXT), max_size=2, unique_by=lambda h: h[0]),
)
def test_a_whole_mail_is_refused_or_reads_back_exactly(
    from_name: str, to_name: str, subject: str, text: str, html: str, extra: list[tuple[str, str]]
) -> None:
    mail = Mail(
        from_name=from_name,
        from_email="news@acme.example.com",
        to_name=to_name,
        to_email="ann@example.org",
        subject=subject,
        html=html,
        text=text,
        message_id="<prop.1@acme.example.com>",
        date=dt.datetime(2026, 12, 4, 9, 30, tzinfo=dt.UTC),
        unsubscribe_url="https://acme.example.com/u/tok",
        unsubscribe_mailto="mailto:unsubscribe+tok@acme.example.com",
        list_id="<layer-1.acme.example.com>",
        extra_headers=tuple(extra),
        reply_to="reply+tok@acme.example.com",
        feedback_id="n1:newsletter:responder",
    )
    try:
        data = compose(mail)
    except ValidationError:
        header_text = [from_name, to_name, subject, *(value for _, value in extra)]
        assert any(re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", value) for value in header_text)
        return

    assert data.isascii()
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    head, _, body = data.partition(b"\r\n\r\n")
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))

    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    names = [name.lower() for name in message.keys()]
    expected = {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "feedback-id",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
        *(name.lower() for name, _ in extra),
    }
    assert sorted(names) == sorted(expected)  # each once: nothing injected, nothing lost
    # Space and tab around a header's text are not part of it (RFC 5322): compose drops them.
    assert message["From"].addresses[0].display_name == from_name.strip(" \t")
    assert message["From"].addresses[0].addr_spec == "news@acme.example.com"
    assert message["To"].addresses[0].display_name == to_name.strip(" \t")
    assert message["To"].addresses[0].addr_spec == "ann@example.org"
    assert str(message["Subject"]) == subject.strip(" \t")
    for name, value in extra:
        assert str(message[name]) == value.strip(" \t")
    plain, rich = message.iter_parts()
    for part, given_text in ((plain, text), (rich, html)):
        assert not part.defects
        # The parser keeps the wire's CRLF; the builder writes every line break as one.
        read = part.get_content().replace("\r\n", "\n")
        assert read == given_text.replace("\r\n", "\n").replace("\r", "\n")

    signed = SIGNER.sign(data, 1_780_000_000)
    assert dkim.DKIM(signed).verify(dnsfunc=dns)
