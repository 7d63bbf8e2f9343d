"""Human or machine: a pure verdict on one open or click from facts about the request.

Only human events feed promotion and the funnel figures; machine events are kept with their
reason and counted apart. The signals, strongest first:

- ``head``: a HEAD request (link checkers probe, people's browsers GET).
- ``trap``: the hidden trap link every tracked mail carries; no person can see or click it.
- ``apple_mpp``: Apple Mail Privacy Protection prefetches images from Apple's 17.0.0.0/8
  network with a bare ``Mozilla/5.0`` agent.
- ``gmail_proxy`` / ``yahoo_proxy``: the webmail image proxies fetch on the reader's behalf
  (an open still happened, but its timing is the proxy's, not a person's).
- ``scanner_agent``: agents of security scanners, crawlers and HTTP libraries.
- ``burst``: several different links of one mail clicked within a second.
- ``too_soon``: an open or click within seconds of delivery.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
from dataclasses import dataclass

APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
SCANNER_AGENTS = (
    "bot",
    "crawler",
    "spider",
    "scanner",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "headlesschrome",
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "forcepoint",
    "trendmicro",
    "sophos",
    "microsoft office existence discovery",
    "ms-office",
    "safelinks",
    "zgrab",
    "masscan",
)
SCANNER = re.compile("|".join(re.escape(marker) for marker in SCANNER_AGENTS))
BURST_WINDOW_S = 1.0
TRAP_REACH_S = 5.0  # a trap hit marks the message's other clicks this close to it as machine
SWEEPING = ("burst", "trap")  # reasons that also turn the message's neighbouring clicks machine


@dataclass(slots=True)  # not frozen: built on every pixel request, and frozen init is slower
class Request:
    kind: str  # open | click
    method: str
    user_agent: str
    ip: str | None
    at: dt.datetime
    trap: bool = False
    burst: bool = False


@dataclass(frozen=True)
class Verdict:
    machine: bool
    reason: str = ""


HUMAN = Verdict(False, "")


def _in_apple(ip: str | None) -> bool:
    if ip is None or not ip.startswith(("17.", "::ffff:17.")):  # cheap test first: hot path
        return False
    try:
        return ipaddress.ip_address(ip.removeprefix("::ffff:")) in APPLE_NETWORK
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _agent(user_agent: str) -> tuple[str, bool, str | None]:
    """What the agent string alone says (readers share a handful of agents, so this is cached):
    the stripped agent, whether it names Safari, and the machine reason it implies, if any."""
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


def classify(req: Request, sent_at: dt.datetime | None, *, after_send_s: int) -> Verdict:
    agent, safari, agent_reason = _agent(req.user_agent)
    if req.method == "HEAD":
        return Verdict(True, "head")
    if req.trap:
        return Verdict(True, "trap")
    if _in_apple(req.ip) and (agent in ("", "Mozilla/5.0") or not safari):
        return Verdict(True, "apple_mpp")
    if agent_reason is not None:
        return Verdict(True, agent_reason)
    if req.burst:
        return Verdict(True, "burst")
    if sent_at is not None and (req.at - sent_at).total_seconds() < after_send_s:
        return Verdict(True, "too_soon")
    return HUMAN


def reach(reason: str) -> dt.timedelta:
    """How far from a sweeping event its message's other clicks are marked machine too."""
    return dt.timedelta(seconds=BURST_WINDOW_S if reason == "burst" else TRAP_REACH_S)


@functools.cache
def machine_data(reason: str) -> str:
    """A machine event's ``data`` as stored: one of a handful of reasons, each encoded once."""
    return json.dumps({"machine_reason": reason})
