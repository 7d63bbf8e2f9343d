"""The human-or-machine verdict, the redirect-target check, the rate limiter and proof of work:
pure functions of their inputs."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.core.machine import REASONS, Request, Seen, classify, is_prefetch, neighbours
from responder.tracking.links import safe_target
from responder.web.public.pow import leading_zero_bits, solve, solves
from responder.web.ratelimit import SlidingWindow

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"


def req(**kw: object) -> Request:
    base: dict[str, object] = dict(
        kind="click", method="GET", user_agent=BROWSER, ip="203.0.113.9", at=T0 + dt.timedelta(minutes=5)
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_, machine, reason",
    [
        (req(), False, "human"),
        (req(method="HEAD"), True, "head"),
        (req(prefetch=True), True, "prefetch"),
        (req(trap=True), True, "trap"),
        (req(kind="open", ip="17.58.1.2", user_agent="Mozilla/5.0"), True, "apple_mpp"),
        (req(kind="open", ip="::ffff:17.58.1.2", user_agent=""), True, "apple_mpp"),
        (req(kind="open", ip="17.58.1.2", user_agent=GMAIL), True, "apple_mpp"),  # not Safari on Apple's network
        (req(kind="open", user_agent=GMAIL, ip="66.249.84.12"), False, "gmail_proxy"),
        (req(kind="open", user_agent=YAHOO, ip="98.136.1.1"), False, "yahoo_proxy"),
        (req(kind="open", user_agent=GMAIL, at=T0 + dt.timedelta(seconds=3)), True, "too_soon"),
        (req(user_agent="python-requests/2.31"), True, "scanner_agent"),
        (req(user_agent="Mozilla/5.0 (compatible; Barracuda Sentinel)"), True, "scanner_agent"),
        (req(user_agent="Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0"), True, "scanner_agent"),
        (req(user_agent=""), True, "scanner_agent"),
        (req(ip="40.94.29.7"), True, "scanner_network"),  # Microsoft Safe Links
        (req(ip="::ffff:205.139.110.31"), True, "scanner_network"),  # Mimecast
        (req(ip="148.163.159.250"), True, "scanner_network"),  # Proofpoint
        (req(ip="40.95.0.1"), False, "human"),  # next door to a scanner network
        (req(ip="2001:db8::1"), False, "human"),
        (req(ip=None), False, "human"),
        (req(at=T0 + dt.timedelta(seconds=3)), True, "too_soon"),
        (req(at=T0 + dt.timedelta(seconds=11)), False, "human"),
        (req(ip="17.58.1.2"), False, "human"),  # a real Safari on Apple's network is a person
    ],
)
def test_classify(request_: Request, machine: bool, reason: str) -> None:
    verdict = classify(request_, T0, after_send_s=10)
    assert (verdict.machine, verdict.reason) == (machine, reason)
    assert (reason in REASONS) is machine


@pytest.mark.parametrize(
    "purpose, prefetch",
    [
        ("prefetch", True),
        ("prefetch;prerender", True),
        ("Prefetch", True),
        ("preview", True),
        ("", False),
        (None, False),
    ],
)
def test_is_prefetch(purpose: str | None, prefetch: bool) -> None:
    assert is_prefetch(purpose) is prefetch


def hit(seconds: float, kind: str = "click", url: str | None = "https://a.example/1", **kw: str | None) -> Seen:
    ip = kw.get("ip", "203.0.113.9")
    return Seen(kind, url, ip, T0 + dt.timedelta(seconds=seconds), kw.get("reason") or "human")


LINKS = [f"https://a.example/{n}" for n in range(1, 7)]


@pytest.mark.parametrize(
    "seen, turned",
    [
        # A person: one link, then another half a minute later, the pixel a while before.
        ([hit(0, "open", None), hit(20), hit(50, url=LINKS[1])], {}),
        # The trap: every human hit within the window before and after it, on any address.
        (
            [hit(0, url=LINKS[0]), hit(8, "open", None), hit(9, url=None, reason="trap"), hit(11), hit(25)],
            {0: "trap_window", 1: "trap_window", 3: "trap_window"},
        ),
        # Machine hits keep their own reason.
        ([hit(0, reason="too_soon"), hit(1, url=None, reason="trap")], {}),
        # Two different links within a second, even from two addresses.
        ([hit(0), hit(0.5, url=LINKS[1], ip="198.51.100.7")], {0: "sweep", 1: "sweep"}),
        ([hit(0), hit(0.5)], {}),  # the same link twice: a double click
        ([hit(0), hit(15, url=LINKS[1])], {}),  # a second article a while after the first
        # A browser-agent scanner: every link, 1.2 s apart, from one address.
        ([hit(1.2 * n, url=url) for n, url in enumerate(LINKS)], {n: "sweep" for n in range(len(LINKS))}),
        # ... while three links from three addresses are three readers (a forwarded mail).
        ([hit(3 * n, url=url, ip=f"198.51.100.{n}") for n, url in enumerate(LINKS[:3])], {}),
        # Two links of one mail within the window from one address, whatever the spacing ...
        ([hit(0), hit(9, url=LINKS[1])], {0: "sweep", 1: "sweep"}),
        # ... but not 12 s apart, and not from two addresses.
        ([hit(0), hit(12, url=LINKS[1])], {}),
        ([hit(0), hit(3, url=LINKS[1], ip="198.51.100.7")], {}),
        # The pixel in the same instant as the links.
        (
            [hit(0.04, "open", None), hit(0), hit(0.01, url=LINKS[1]), hit(0.02, url=LINKS[2])],
            {0: "sweep", 1: "sweep", 2: "sweep", 3: "sweep"},
        ),
        # The pixel and one link within a second, from one address; not from two.
        ([hit(0, "open", None), hit(0.6)], {0: "sweep", 1: "sweep"}),
        ([hit(0, "open", None, ip="66.249.84.12", reason="gmail_proxy"), hit(0.6)], {}),
        ([hit(0, "open", None), hit(3)], {}),
        # A machine first hit still gives the sweep away.
        ([hit(0, reason="scanner_agent"), hit(2, url=LINKS[1]), hit(4, url=LINKS[2])], {1: "sweep", 2: "sweep"}),
    ],
)
def test_neighbours(seen: list[Seen], turned: dict[int, str]) -> None:
    assert neighbours(seen, window_s=10) == turned
    assert neighbours(list(reversed(seen)), window_s=10) == {len(seen) - 1 - i: r for i, r in turned.items()}


def test_neighbours_of_a_mail_reloaded_many_times_stay_cheap() -> None:
    """A forwarded mail can gather thousands of opens: the sweep looks stay near-linear."""
    import time

    seen = [hit(n * 0.001, "open", None, ip=f"10.0.{n // 250}.{n % 250}") for n in range(20_000)]
    seen.append(hit(30, url=LINKS[0]))
    started = time.perf_counter()
    assert neighbours(seen, window_s=10) == {}
    assert time.perf_counter() - started < 2.0


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
