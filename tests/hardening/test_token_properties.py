"""Every token decoder, fed anything (issue 18, point 9): it answers the id it signed, or raises
``InvalidToken``; never another exception (a 500), never someone else's id. Tokens made with one
key are refused under another, and a signed token with one character changed is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.clock import FakeClock
from responder.errors import InvalidToken
from responder.tracking.tokens import Tokens

TOKENS = Tokens("key-one", FakeClock(), 3600)
OTHER = Tokens("key-two", FakeClock(), 3600)
KINDS = ("confirm", "privacy", "open", "keep", "unsubscribe", "view")
ALPHABET = st.characters(codec="utf-8") | st.sampled_from("._-=~%/AaZz09")


def read(tokens: Tokens, kind: str, token: str) -> object:
    return getattr(tokens, f"read_{kind}")(token)


@pytest.mark.parametrize("kind", [*KINDS, "click"])
@settings(max_examples=150, deadline=None)
@given(token=st.text(ALPHABET, max_size=300) | st.binary(max_size=200).map(lambda b: b.hex()))
def test_anything_is_read_or_refused(kind: str, token: str) -> None:
    try:
        read(TOKENS, kind, token)
    except InvalidToken:
        pass


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(number=st.integers(min_value=1, max_value=2**53), position=st.integers(min_value=0))
def test_signed_ids_read_back_and_nothing_else_does(kind: str, number: int, position: int) -> None:
    token = getattr(TOKENS, kind)(number)
    assert read(TOKENS, kind, token) == number
    with pytest.raises(InvalidToken):
        read(OTHER, kind, token)  # another key
    at = position % len(token)
    altered = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
    try:
        assert read(TOKENS, kind, altered) == number  # base64's last character may carry unused bits
    except InvalidToken:
        pass


@settings(max_examples=60, deadline=None)
@given(number=st.integers(min_value=1, max_value=2**31), url=st.text(ALPHABET, min_size=1, max_size=200))
def test_click_tokens_carry_their_url_and_only_theirs(number: int, url: str) -> None:
    target = f"https://shop.example.com/{url}"
    token = TOKENS.click(number, target)
    assert TOKENS.read_click(token) == (number, target)
    with pytest.raises(InvalidToken):
        OTHER.read_click(token)
