"""Signed tokens and MIME composition: forged tokens refused, headers never injectable."""

from __future__ import annotations

import binascii
import datetime as dt
import json
import random
from email import message_from_bytes, policy

import pytest
from itsdangerous import URLSafeSerializer

from responder.clock import FakeClock
from responder.delivery import mime
from responder.delivery.mime import Mail, compose
from responder.errors import InvalidToken, TokenRejected, ValidationError
from responder.tracking.tokens import COMPRESS_FROM_BYTES, Tokens, url_serializer


@pytest.fixture
def tokens(clock: FakeClock) -> Tokens:
    return Tokens("k" * 32, clock, confirm_max_age_s=7 * 86400)


def test_tokens_round_trip(tokens: Tokens) -> None:
    assert tokens.read_open(tokens.open(42)) == 42
    assert tokens.read_click(tokens.click(7, "https://acme.example.com/a?b=1")) == (7, "https://acme.example.com/a?b=1")
    assert tokens.read_unsubscribe(tokens.unsubscribe(3)) == 3
    assert tokens.read_confirm(tokens.confirm(9)) == 9


def test_a_token_for_one_purpose_never_passes_for_another(tokens: Tokens) -> None:
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(tokens.open(3))
    with pytest.raises(InvalidToken):
        tokens.read_open(tokens.view(3))


def test_open_tokens_are_remembered_only_once_they_pass(tokens: Tokens) -> None:
    """The pixel keeps verified open tokens in memory; altered or foreign ones are checked
    every time and never kept, so a flood of forged tokens cannot fill the memory or pass
    on a second try."""
    good = tokens.open(42)
    forged = [good[:-1] + ("A" if good[-1] != "A" else "B"), "x" + good, tokens.view(42), tokens.open(42) + "."]
    for _ in range(3):
        for token in forged:
            with pytest.raises(InvalidToken):
                tokens.read_open(token)
    assert tokens._open_read.cache_info().currsize == 0
    assert tokens.read_open(good) == tokens.read_open(good) == 42
    info = tokens._open_read.cache_info()
    assert (info.currsize, info.hits) == (1, 1)
    with pytest.raises(InvalidToken):
        tokens.read_open(forged[0])  # still refused with the good one remembered


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: "x" + t,
        lambda t: "",
        lambda t: "not-a-token",
    ],
)
def test_altered_tokens_are_refused(tokens: Tokens, mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidToken):
        tokens.read_click(mutate(tokens.click(1, "https://a.example.com")))


def test_tokens_from_another_secret_are_refused(tokens: Tokens, clock: FakeClock) -> None:
    other = Tokens("z" * 32, clock, confirm_max_age_s=60)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(other.unsubscribe(1))


def test_confirm_token_expires(tokens: Tokens, clock: FakeClock) -> None:
    token = tokens.confirm(5)
    clock.advance(days=6)
    assert tokens.read_confirm(token) == 5
    clock.advance(days=2)
    with pytest.raises(TokenRejected) as caught:
        tokens.read_confirm(token)
    assert caught.value.expired


def mail(**changes: str) -> Mail:
    values = dict(
        from_name="Acme & Sons",
        from_email="news@acme.example.com",
        to_name="Zoë Ångström",
        to_email="zoe@example.com",
        subject="Grüße: your first step",
        html="<p>Hi</p>",
        text="Hi\n",
        message_id="<abc@acme.example.com>",
        date=dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
        unsubscribe_url="https://news.example.com/unsubscribe/t",
        list_id="<layer1.acme.example.com>",
    )
    values.update(changes)
    return Mail(**values)  # type: ignore[arg-type]


def test_compose_headers_and_parts() -> None:
    raw = compose(mail())
    assert all(ord(c) < 128 for c in raw.decode("ascii"))  # non-ASCII is encoded-words
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "Grüße: your first step"
    assert msg["To"].addresses[0].display_name == "Zoë Ångström"
    assert msg["List-Unsubscribe"].strip() == "<https://news.example.com/unsubscribe/t>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] == "<abc@acme.example.com>"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


@pytest.mark.parametrize("field", ["to_name", "subject", "from_name", "to_email"])
@pytest.mark.parametrize("evil", ["x\r\nBcc: victim@example.org", "x\nBcc: v@e.org", "x\rY", "x\x00"])
def test_control_characters_never_reach_a_header(field: str, evil: str) -> None:
    with pytest.raises(ValidationError):
        compose(mail(**{field: evil}))


def test_both_parts_decode_to_exactly_what_was_rendered() -> None:
    html = (
        "<html><body>"
        + '<p style="color:#333">Grüße – '
        + "x" * 300
        + " é · €</p>" * 40
        + "\n.\n  spaced  \n\t\n"
        + "a" * 75
        + " \n"
        + "b" * 76
        + "\n"
        + "=" * 90
        + "\n</body></html>"
    )
    text = "Hi Zoë,\n\n" + "a long line " * 50 + "\n.\nends in a space \n=3D literally\n" + "😀" * 40 + "\n"
    raw = compose(mail(html=html, text=text))
    assert all(ord(c) < 128 for c in raw.decode("ascii"))
    msg = message_from_bytes(raw, policy=policy.default)
    plain, rich = msg.iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n") == html


def _b2a_qp(text: str) -> bytes:
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(normalised, istext=True).replace(b"\n", b"\r\n")


def _check_qp(text: str) -> None:
    """Ours decodes to the text, keeps every line within 76 characters (RFC 2045 6.7), and is
    byte for byte what binascii writes wherever binascii keeps that limit too."""
    ours = mime._qp(text)
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert binascii.a2b_qp(ours.replace(b"\r\n", b"\n")).decode("utf-8") == normalised, text
    assert max(len(line) for line in ours.split(b"\r\n")) <= 76, text
    reference = _b2a_qp(text)
    if max(len(line) for line in reference.split(b"\r\n")) <= 76:
        assert ours == reference, text
    else:  # only the overlong lines differ: their final escape moved past a soft break
        assert ours.replace(b"=\r\n=20", b"=20").replace(b"=\r\n=09", b"=09") == reference, text


@pytest.mark.parametrize("fast_only", [False, True])
def test_quoted_printable_is_what_binascii_writes_within_76_characters_a_line(
    fast_only: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fast_only:  # no falling back to binascii for bodies with many bytes to escape
        monkeypatch.setattr(mime, "_QP_MAX_ESCAPED_SHARE", 0)
        monkeypatch.setattr(mime, "_QP_MAX_ESCAPED_KINDS", 256)
    rnd = random.Random(7)
    alphabets = [
        "a.= \t\n\x00é",
        "ab",
        "a=",
        "a \n",
        "a.\n",
        "x=\n ",
        "abcdefghij.\n",
        "aaaaaaaaaaaaaaaa=é \t.\n\r\x01\x7f€😀",
    ]
    overlong = 0
    for _ in range(6000):
        alphabet = rnd.choice(alphabets)
        size = rnd.choice([1, 2, 5, 74, 75, 76, 77, 78, 150, 151, 152, 153, 400, 700, 2000])
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(max(0, size - 4), size + 4)))
        _check_qp(text)
        overlong += max(len(line) for line in _b2a_qp(text).split(b"\r\n")) > 76
    assert overlong > 0  # cases binascii gets wrong were among them
    for text in [
        "",
        ".",
        ".\n",
        "\n.",
        " ",
        "\t\n",
        "Привет, мир! " * 200,
        "Grüße " * 300,
        "a" * 74 + " \nb",
        "a" * 75 + "\t\n",
        "a" * 76 + " \n" + "a" * 75 + " ",
        "Привет " * 10 + "a" * 75 + " \nмир",
    ]:
        _check_qp(text)


TOKEN_PAYLOADS = [
    0,
    7,
    2**40,
    -3,
    True,
    None,
    "text",
    [1, 2],
    {"a": 1},
    [42, "https://news.example.com/guides"],
    [42, "https://example.com/aaaa/aaaa/aaaa/aaaa"],  # itsdangerous compresses this one
    [7, "https://www.example.com/blog?utm_source=newsletter&utm_medium=email&utm_campaign=spring"],
    [7, 'https://example.com/ä?q="é"&x=\\\u2028\x01😀'],
    [7, "https://example.com/" + "a/b" * 200],
    [7, "https://example.com/" + "".join(chr(33 + (i * 7919) % 90) for i in range(400))],
]


@pytest.mark.parametrize("obj", TOKEN_PAYLOADS)
@pytest.mark.parametrize("salt", ["click", "open", "unsubscribe", "referral"])
def test_tokens_are_what_itsdangerous_reads_and_writes(obj: object, salt: str) -> None:
    ours = url_serializer("k" * 32, salt).dumps(obj)
    theirs = URLSafeSerializer("k" * 32, salt=salt)
    assert theirs.loads(ours) == obj
    assert url_serializer("k" * 32, salt).loads(theirs.dumps(obj)) == obj
    compact = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    if not theirs.dumps(obj).startswith(".") or len(compact) >= COMPRESS_FROM_BYTES:
        assert ours == theirs.dumps(obj)  # the same token unless a short payload compressed
    else:
        assert not ours.startswith(".")


def test_click_tokens_for_the_longest_allowed_url_stay_readable(tokens: Tokens) -> None:
    url = "https://example.com/?" + "&".join(f"utm_{i}=newsletter" for i in range(300))[:4070]
    assert tokens.read_click(tokens.click(5, url)) == (5, url)
