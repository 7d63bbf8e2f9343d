"""Human or machine: a pure verdict, with its reason, on every open and click.

Two steps, both pure. ``classify`` judges one request from what it carries (method, headers,
agent, address, time since delivery). ``neighbours`` then looks at one mail's opens and clicks
side by side and turns human ones machine when their neighbours give a scanner away: a click on
the trap link, or a sweep. Only human events feed promotion and the funnel figures; machine
ones are kept with their reason and counted apart (``REASONS``, in the order they are tried).

Image proxies are not machines: Gmail's (``GoogleImageProxy``, via ggpht.com) and Yahoo's
(``YahooMailProxy``) fetch the pixel when the reader opens the mail, so those opens are human,
with the proxy as their reason. Apple Mail Privacy Protection fetches at delivery, whether or
not anyone reads: machine.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

HUMAN = "human"
HUMAN_REASONS = {
    HUMAN: "a person's browser or mail program",
    "gmail_proxy": "Gmail's image proxy, fetching as the reader opens the mail",
    "yahoo_proxy": "Yahoo's image proxy, fetching as the reader opens the mail",
}
REASONS = {
    "head": "a HEAD request: link checkers probe, browsers GET",
    "prefetch": "a browser prefetch or preview (Sec-Purpose, Purpose, X-Purpose, X-Moz)",
    "trap": "the hidden trap link no person can see",
    "apple_mpp": "Apple Mail Privacy Protection fetching at delivery",
    "scanner_agent": "a scanner's, crawler's or HTTP library's agent, or none",
    "scanner_network": "an address of a mail-security scanner's network",
    "too_soon": "sooner after delivery than a person reads",
    "trap_window": "on the same mail as a trap hit, close to it in time",
    "sweep": "part of a sweep: many links of one mail, or the pixel with links, in moments",
}
MACHINE_REASONS = frozenset(REASONS)

APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
# Published ranges of mail-security gateways that fetch links and images of the mail they pass
# (each vendor's documentation of the addresses customers must allow).
SCANNER_NETWORKS = (
    "40.94.0.0/16",  # Microsoft Defender for Office 365 Safe Links detonation
    "205.139.110.0/24",  # Mimecast (US)
    "207.211.30.0/24",  # Mimecast (US)
    "216.205.24.0/24",  # Mimecast (US)
    "91.220.42.0/24",  # Mimecast (UK)
    "146.101.78.0/24",  # Mimecast (UK)
    "195.130.217.0/24",  # Mimecast (UK)
    "148.163.128.0/19",  # Proofpoint
    "67.231.144.0/20",  # Proofpoint
    "64.235.144.0/20",  # Barracuda Email Security Service
    "209.222.80.0/21",  # Barracuda Email Security Service
    "216.82.240.0/20",  # Broadcom (Symantec) Email Security.cloud
    "67.219.240.0/20",  # Broadcom (Symantec) Email Security.cloud
    "85.158.136.0/21",  # Broadcom (Symantec) Email Security.cloud
    "193.109.254.0/23",  # Broadcom (Symantec) Email Security.cloud
    "194.106.220.0/23",  # Broadcom (Symantec) Email Security.cloud
    "195.245.230.0/23",  # Broadcom (Symantec) Email Security.cloud
)
SCANNER_AGENTS = (
    "bot",
    "crawler",
    "spider",
    "scanner",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "node-fetch",
    "axios/",
    "undici",
    "libwww-perl",
    "headlesschrome",
    "phantomjs",
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "messagelabs",
    "forcepoint",
    "trendmicro",
    "sophos",
    "mcafee",
    "fortiguard",
    "ironport",
    "zscaler",
    "google-safety",
    "microsoft office existence discovery",
    "ms-office",
    "safelinks",
    "facebookexternalhit",
    "skypeuripreview",
    "urlscan",
    "zgrab",
    "masscan",
)
SCANNER = re.compile("|".join(re.escape(marker) for marker in SCANNER_AGENTS))
PREFETCH = ("prefetch", "prerender", "preview")  # values of the purpose headers that mean "not a person yet"

WINDOW_S = 10.0  # default reach of a trap hit and span of a sweep (``RESPONDER_MACHINE_WINDOW_S``)
BURST_S = 1.0  # two different links of one mail within this: nobody clicks that fast
PIXEL_SWEEP_S = 1.0  # the pixel and a link from one address within this: nobody reads that fast
# "Most of a mail's links": the number of links a mail carries is not stored, and the starter
# mails carry two tracked ones, so two different links of one mail from one address within the
# window is a sweep. A person opening a second article within seconds of the first is the cost.
SWEEP_LINKS = 2


@dataclass(slots=True)  # not frozen: built on every click request, and frozen init is slower
class Request:
    kind: str  # open | click
    method: str
    user_agent: str
    ip: str | None
    at: dt.datetime
    trap: bool = False
    prefetch: bool = False  # the request said it is a prefetch or preview


@dataclass(frozen=True)
class Verdict:
    machine: bool
    reason: str


# One of each: a frozen dataclass costs a microsecond to build, and the writer judges every hit.
_VERDICTS = {reason: Verdict(False, reason) for reason in HUMAN_REASONS} | {
    reason: Verdict(True, reason) for reason in REASONS
}


def _ipv4(ip: str) -> str:
    return ip.removeprefix("::ffff:")


def _in_apple(ip: str | None) -> bool:
    if ip is None or not ip.startswith(("17.", "::ffff:17.")):  # cheap test first: hot path
        return False
    try:
        return ipaddress.ip_address(_ipv4(ip)) in APPLE_NETWORK
    except ValueError:
        return False


class _Networks:
    """IPv4 networks as sorted integer ranges: one parse and one bisection per address."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        ranges = sorted(
            (int(net.network_address), int(net.broadcast_address))
            for net in (ipaddress.IPv4Network(cidr) for cidr in cidrs)
        )
        self.starts = [start for start, _ in ranges]
        self.ends = [end for _, end in ranges]
        self.first_octets = {cidr.partition(".")[0] for cidr in cidrs}

    def __contains__(self, ip: str) -> bool:
        if ip.partition(".")[0] not in self.first_octets:  # most addresses stop here
            return False
        try:
            number = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        i = bisect.bisect_right(self.starts, number) - 1
        return i >= 0 and number <= self.ends[i]


_SCANNERS = _Networks(SCANNER_NETWORKS)


@functools.lru_cache(maxsize=4096)
def _agent(user_agent: str) -> tuple[str, bool, str | None]:
    """What the agent string alone says (readers share a handful of agents, so this is cached):
    the stripped agent, whether it names Safari, and the reason it implies, if any."""
    agent = user_agent.strip()
    lowered = agent.lower()
    reason = None
    if "googleimageproxy" in lowered:
        reason = "gmail_proxy"
    elif "yahoomailproxy" in lowered:
        reason = "yahoo_proxy"
    elif not agent or SCANNER.search(lowered):
        reason = "scanner_agent"
    return agent, "safari" in lowered, reason


def is_prefetch(purpose: str | None) -> bool:
    """Whether a ``Sec-Purpose``/``Purpose``/``X-Purpose``/``X-Moz`` value marks a prefetch."""
    if not purpose:
        return False
    lowered = purpose.lower()
    return any(word in lowered for word in PREFETCH)


def classify(req: Request, sent_at: dt.datetime | None, *, after_send_s: float) -> Verdict:
    """One request's verdict from what it carries; ``neighbours`` may still turn it machine."""
    agent, safari, agent_reason = _agent(req.user_agent)
    if req.method == "HEAD":
        reason = "head"
    elif req.prefetch:
        reason = "prefetch"
    elif req.trap:
        reason = "trap"
    elif _in_apple(req.ip) and (agent in ("", "Mozilla/5.0") or not safari):
        reason = "apple_mpp"
    elif agent_reason == "scanner_agent":
        reason = agent_reason
    elif req.ip is not None and _ipv4(req.ip) in _SCANNERS:
        reason = "scanner_network"
    elif sent_at is not None and (req.at - sent_at).total_seconds() < after_send_s:
        reason = "too_soon"
    else:
        reason = agent_reason or HUMAN
    return _VERDICTS[reason]


@dataclass(frozen=True, slots=True)
class Seen:
    """One open or click of a mail as ``neighbours`` sees it: already stored, or just arrived."""

    kind: str  # open | click
    url: str | None  # a click's target; None for an open and for the trap
    ip: str | None
    at: dt.datetime
    reason: str  # its verdict's reason so far

    @property
    def link(self) -> bool:
        return self.kind == "click" and self.url is not None and self.reason != "trap"


def neighbours(seen: Sequence[Seen], *, window_s: float = WINDOW_S) -> dict[int, str]:
    """Of one mail's opens and clicks (any order), the human ones their neighbours make machine:
    index → ``trap_window`` or ``sweep``. Machine ones keep their first reason, but still count
    as neighbours (a scanner's first click may already be ``too_soon``).

    - ``trap_window``: within ``window_s`` before or after a trap hit on the same mail;
    - ``sweep``: two different links within ``BURST_S`` (from anywhere: the mail has one
      reader); or, from one address, ``SWEEP_LINKS`` different links within ``window_s``
      (whatever the spacing inside it: a browser-driven scanner paces its clicks), or the pixel
      and a link within ``PIXEL_SWEEP_S``. Every hit of that address inside the sweep's span is
      part of it.
    """
    order = sorted(range(len(seen)), key=lambda i: seen[i].at)
    turned: dict[int, str] = {}

    def turn(i: int, reason: str) -> None:
        if seen[i].reason in HUMAN_REASONS and i not in turned:
            turned[i] = reason

    window = dt.timedelta(seconds=window_s)
    traps = [seen[i].at for i in order if seen[i].reason == "trap"]
    if traps:
        for i in order:
            at = seen[i].at
            k = bisect.bisect_left(traps, at - window)
            if k < len(traps) and traps[k] <= at + window:
                turn(i, "trap_window")
    links = [i for i in order if seen[i].link]
    burst = dt.timedelta(seconds=BURST_S)
    for n, i in enumerate(links):
        j = n - 1
        while j >= 0 and seen[i].at - seen[links[j]].at < burst:
            if seen[links[j]].url != seen[i].url:
                turn(i, "sweep")
                turn(links[j], "sweep")
            j -= 1
    by_address: dict[str | None, list[int]] = {}
    for i in order:
        by_address.setdefault(seen[i].ip, []).append(i)
    for hits in by_address.values():
        for i in _swept(seen, hits, window):
            turn(i, "sweep")
    return turned


def _swept(seen: Sequence[Seen], hits: list[int], window: dt.timedelta) -> list[int]:
    """Of one address's hits on one mail (in time order), those in one of its sweeps."""
    links = [i for i in hits if seen[i].link]
    if not links:
        return []
    spans: list[tuple[dt.datetime, dt.datetime]] = []
    urls: Counter[str | None] = Counter()
    left = 0
    for i in links:  # the widest run of links within the window ending at each link
        urls[seen[i].url] += 1
        while seen[i].at - seen[links[left]].at > window:
            urls[seen[links[left]].url] -= 1
            if not urls[seen[links[left]].url]:
                del urls[seen[links[left]].url]
            left += 1
        if len(urls) >= SWEEP_LINKS:
            spans.append((seen[links[left]].at, seen[i].at))
    pixel = dt.timedelta(seconds=PIXEL_SWEEP_S)
    times = [seen[i].at for i in links]
    for i in hits:
        if seen[i].kind == "open":
            k = bisect.bisect_left(times, seen[i].at - pixel)
            if k < len(times) and times[k] <= seen[i].at + pixel:
                spans.append((seen[i].at - pixel, seen[i].at + pixel))
    if not spans:
        return []
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    starts = [start for start, _ in merged]
    inside = []
    for i in hits:
        k = bisect.bisect_right(starts, seen[i].at) - 1
        if k >= 0 and seen[i].at <= merged[k][1]:
            inside.append(i)
    return inside
