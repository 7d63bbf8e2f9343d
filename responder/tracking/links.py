"""Tracked links in a mail: which targets a click token may carry, and the hidden trap link.

A tracked mail carries a hidden trap link (a click token whose target is ``TRAP``): no person
sees it, so whoever follows it is a scanner.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from ..templating.render import last_body_end

TRAP = "responder:trap"


def safe_target(url: str) -> bool:
    """Only absolute http(s) URLs with a host: no scheme tricks, no protocol-relative paths."""
    if any(ch in url for ch in "\\\r\n\t\x00 ") or len(url) > 4096:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and url.lower().startswith(parts.scheme + "://")


def trap_link(url: str) -> str:
    return (
        f'<a href="{html.escape(url)}" style="display:none!important;font-size:0;'
        f'color:transparent" aria-hidden="true" tabindex="-1">&#8203;</a>'
    )


def add_trap(body: str, url: str) -> str:
    index = last_body_end(body)
    return body + trap_link(url) if index < 0 else body[:index] + trap_link(url) + body[index:]
