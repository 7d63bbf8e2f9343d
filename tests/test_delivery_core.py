"""Pure parts of delivery: retry backoff, the sliding window, VERP addresses, header safety,
DKIM canonicalisation. No I/O, explicit ``now``."""

from __future__ import annotations

import datetime as dt
import re

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st

from responder.core.retry import next_attempt
from responder.delivery.dkim import (
    DkimKey,
    DkimSigner,
    canonical_body,
    canonical_header,
    dns_record,
    generate_key,
)
from responder.delivery.mime import Mail, compose
from responder.delivery.ratelimit import SlidingWindow
from responder.delivery.verp import Addresses
from responder.errors import ConfigError, ValidationError
from responder.settings import parse_listen

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("attempts", "jitter", "delay_s"),
    [
        (1, 0.5, 300),
        (2, 0.5, 600),
        (3, 0.5, 1200),
        (6, 0.5, 9600),
        (7, 0.5, 14400),
        (20, 0.5, 14400),
        (1, 0.0, 225),
        (1, 0.999999, 375),
    ],
)
def test_backoff_doubles_from_minutes_to_hours(attempts: int, jitter: float, delay_s: int) -> None:
    when = next_attempt(attempts, T0, T0, jitter=jitter)
    assert when is not None
    assert abs((when - T0).total_seconds() - delay_s) < 0.01


def test_backoff_gives_up_after_the_lifetime() -> None:
    created = T0 - dt.timedelta(days=5)
    assert next_attempt(3, T0, created) is None
    assert next_attempt(3, T0, T0 - dt.timedelta(days=4)) is not None
    assert next_attempt(1, T0, T0, lifetime_s=60) is None


def test_sliding_window_allows_limit_per_window() -> None:
    window = SlidingWindow(3, 10.0)
    for now in (0.0, 1.0, 2.0):
        assert window.delay(now) == 0
        window.record(now)
    assert window.delay(5.0) == pytest.approx(5.0)  # the first of three leaves at 10.0
    assert window.delay(10.0) == 0
    window.record(10.0)
    assert window.delay(10.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("rate", "limit", "window_s"), [(100, 100, 1.0), (0.5, 1, 2.0), (2.5, 2, 0.8)])
def test_window_for_fractional_rates(rate: float, limit: int, window_s: float) -> None:
    window = SlidingWindow.per_second(rate)
    assert (window.limit, window.window_s) == (limit, pytest.approx(window_s))


def test_verp_addresses_round_trip_and_refuse_forgeries() -> None:
    addresses = Addresses("secret", "Acme.Example.com")
    bounce = addresses.bounce(123456)
    assert bounce.startswith("bounces+2n9c-") and bounce.endswith("@acme.example.com")
    assert addresses.parse(bounce.upper()).id == 123456  # type: ignore[union-attr]
    assert addresses.parse(f"<{addresses.reply(7)}>").kind == "reply"  # type: ignore[union-attr]
    assert addresses.parse(addresses.unsubscribe(9)).kind == "unsubscribe"  # type: ignore[union-attr]
    forged = bounce.replace("bounces+2n9c-", "bounces+2n9d-")
    for bad in (
        forged,
        bounce.replace("bounces", "reply"),
        "news@acme.example.com",
        bounce.replace("acme.example.com", "evil.example"),
        "bounces+zz@acme.example.com",
        "bounces+-@acme.example.com",
        "",
    ):
        assert addresses.parse(bad) is None
    assert Addresses("other", "acme.example.com").parse(bounce) is None


def mail(**changes: object) -> Mail:
    values: dict[str, object] = {
        "from_name": "Acme",
        "from_email": "news@acme.example.com",
        "to_name": "Zoë Ünal",
        "to_email": "zoe@example.org",
        "subject": "Grüße — a long subject " * 5,
        "html": "<p>hi</p>",
        "text": "hi",
        "message_id": "<1@acme.example.com>",
        "date": T0,
        "unsubscribe_url": "https://news.example.com/unsubscribe/t",
        "unsubscribe_mailto": "mailto:unsubscribe+1-ab@acme.example.com",
        "list_id": "<layer1.acme.example.com>",
        "envelope_from": "bounces+1-ab@acme.example.com",
        "reply_to": "reply+1-ab@acme.example.com",
        "feedback_id": "1:layer1:step:acme.example.com",
    }
    values.update(changes)
    return Mail(**values)  # type: ignore[arg-type]


def test_headers_are_encoded_and_complete() -> None:
    data = compose(mail())
    head = data.split(b"\r\n\r\n")[0].decode("ascii")  # every header is 7-bit
    assert "Subject: =?utf-8?" in head and "To: =?utf-8?" in head
    for name in (
        "Date:",
        "Message-ID: <1@acme.example.com>",
        "MIME-Version: 1.0",
        "List-Id: <layer1.acme.example.com>",
        "Reply-To: reply+1-ab@acme.example.com",
        "Feedback-ID: 1:layer1:step:acme.example.com",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Content-Type: multipart/alternative",
    ):
        assert name in head
    unfolded = head.replace("\r\n ", " ")
    assert (
        "List-Unsubscribe: <https://news.example.com/unsubscribe/t>, <mailto:unsubscribe+1-ab@acme.example.com>"
    ) in unfolded
    assert mail().envelope.mail_from == "bounces+1-ab@acme.example.com"


@pytest.mark.parametrize(
    "field", ["from_name", "to_name", "subject", "to_email", "list_id", "unsubscribe_url", "feedback_id", "reply_to"]
)
@pytest.mark.parametrize("bad", ["\r\nBcc: victim@example.org", "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb", "a\tb"])
def test_control_characters_in_any_header_value_are_refused(field: str, bad: str) -> None:
    with pytest.raises(ValidationError):
        compose(mail(**{field: "x" + bad}))


@pytest.mark.parametrize("name", ["X-Bad:Name", "X Bad", "X-Bad\r\nBcc", "", "X-\u00e9"])
def test_bad_extra_header_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        compose(mail(extra_headers=((name, "v"),)))


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),
        (b"\r\n\r\n", b""),
        (b"a  b \t\r\n\r\n\r\n", b"a b\r\n"),
        (b"x", b"x\r\n"),
        (b" a\r\n\tb\r\n", b" a\r\n b\r\n"),
    ],
)
def test_relaxed_body_canonicalisation(body: bytes, canonical: bytes) -> None:
    assert canonical_body(body) == canonical


def _line_by_line(body: bytes) -> bytes:
    """RFC 6376 3.4.4 read literally, one line at a time: the reference for the fast version."""
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


@given(st.lists(st.sampled_from([b"a", b"=", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b" \r\n"]), max_size=40))
def test_relaxed_body_matches_the_line_by_line_reading(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert canonical_body(body) == _line_by_line(body)


def test_relaxed_header_canonicalisation() -> None:
    assert canonical_header(b"SubJect ", b"  a \r\n\t b  ") == b"subject:a b"


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(algorithm: str) -> None:
    key = generate_key(algorithm)
    signer = DkimSigner(DkimKey("sel", "acme.example.com", key))
    signed = signer.sign(compose(mail()), 1_700_000_000)
    record = dns_record(key).encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    # A second From added after signing breaks the signature (From is over-signed).
    tampered = signed.replace(b"\r\nTo:", b"\r\nFrom: evil@example.org\r\nTo:", 1)
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)


def test_bodies_round_trip_through_a_standard_parser() -> None:
    from email import message_from_bytes, policy

    text = "Grüße, Zoë!\nA = B; 100% sure  \n.leading dot\n" + "long line " * 40 + "\n"
    html = '<p>Grüße — <a href="https://x.example/?a=1&b=2">link</a></p>\n' * 30
    data = compose(mail(text=text, html=html))
    assert max(len(line) for line in data.split(b"\r\n")) <= 76
    assert b"\n" not in data.replace(b"\r\n", b"")
    parsed = message_from_bytes(data, policy=policy.default)
    assert parsed["Subject"] == mail().subject.strip()  # space around it is not part of it
    assert parsed["To"].addresses[0].display_name == "Zoë Ünal"
    for subtype, original in (("plain", text), ("html", html)):
        part = parsed.get_body((subtype,))
        assert part.get_content().replace("\r\n", "\n") == original  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("mx.example.com:2525", ("mx.example.com", 2525)),
    ],
)
def test_inbound_listen_address(value: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(value) == parsed


@pytest.mark.parametrize("value", ["2525", ":2525", "host:", "host:0", "host:70000", "host:x"])
def test_bad_inbound_listen_address(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_a_mail_setup_keeps_its_secrets_out_of_its_repr() -> None:
    """What a worker sends each render process once holds the secret keys and the DKIM private
    keys: a traceback or a log line that shows it must not show them."""
    from responder.delivery.assemble import Setup
    from responder.delivery.dkim import DkimKey, DkimSigner, generate_key

    signer = DkimSigner(DkimKey("s1", "acme.example.com", generate_key("ed25519")))
    setup = Setup.of("the-secret-key", ("an-older-secret",), "https://news.example.com", signer)
    shown = repr(setup) + str(setup)
    assert "https://news.example.com" in shown
    assert not any(secret in shown for secret in ("the-secret-key", "an-older-secret", "PRIVATE KEY"))
