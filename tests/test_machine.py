"""The human-or-machine verdict, the redirect-target check, the rate limiter and proof of work:
pure functions of their inputs."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.core.machine import Request, classify
from responder.tracking.links import safe_target
from responder.web.public.pow import leading_zero_bits, solve, solves
from responder.web.ratelimit import SlidingWindow

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15"


def req(**kw: object) -> Request:
    base: dict[str, object] = dict(
        kind="click", method="GET", user_agent=BROWSER, ip="203.0.113.9", at=T0 + dt.timedelta(minutes=5)
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_, reason",
    [
        (req(), ""),
        (req(method="HEAD"), "head"),
        (req(trap=True), "trap"),
        (req(kind="open", ip="17.58.1.2", user_agent="Mozilla/5.0"), "apple_mpp"),
        (req(kind="open", user_agent="Mozilla/5.0 (Windows NT 5.1) (via ggpht.com GoogleImageProxy)"), "gmail_proxy"),
        (req(kind="open", user_agent="YahooMailProxy; https://help.yahoo.com"), "yahoo_proxy"),
        (req(user_agent="python-requests/2.31"), "scanner_agent"),
        (req(user_agent="Mozilla/5.0 (compatible; Barracuda Sentinel)"), "scanner_agent"),
        (req(user_agent=""), "scanner_agent"),
        (req(burst=True), "burst"),
        (req(at=T0 + dt.timedelta(seconds=3)), "too_soon"),
        (req(at=T0 + dt.timedelta(seconds=11)), ""),
        (req(ip="17.58.1.2"), ""),  # a real Safari on Apple's network is a person
    ],
)
def test_classify(request_: Request, reason: str) -> None:
    verdict = classify(request_, T0, after_send_s=10)
    assert verdict.reason == reason
    assert verdict.machine is bool(reason)


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://acme.example.com/guide?a=1", True),
        ("http://acme.example.com", True),
        ("//evil.example", False),
        ("\\\\evil.example", False),
        ("/\\evil.example", False),
        ("https:/\\evil.example", False),
        ("https:evil.example", False),
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:alert(1)", False),
        ("java\tscript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("%6a%61vascript:alert(1)", False),
        ("https%3A%2F%2Fevil.example", False),
        ("https://evil.example\r\nSet-Cookie: a=b", False),
        ("ftp://files.example", False),
        ("https://", False),
    ],
)
def test_safe_target(url: str, ok: bool) -> None:
    assert safe_target(url) is ok


def test_sliding_window_allows_limit_then_says_when() -> None:
    window = SlidingWindow(3, 60)
    assert [window.hit("ip", t) for t in (0, 1, 2)] == [0, 0, 0]
    assert window.hit("ip", 10) == pytest.approx(50)
    assert window.hit("other", 10) == 0
    assert window.hit("ip", 60.5) == 0  # the first hit left the window


def test_sliding_window_memory_is_bounded() -> None:
    window = SlidingWindow(1, 60, max_keys=100)
    for i in range(1000):
        window.hit(f"ip{i}", 0)
    assert len(window._hits) == 100


def test_proof_of_work() -> None:
    assert leading_zero_bits(b"\x00\x0f") == 12
    nonce = solve("challenge", 10)
    assert solves("challenge", nonce, 10)
    assert not solves("challenge", nonce, 30)
