"""Limits that must hold across restarts and processes, kept in the database: how often one
mailbox may be subscribed or sent an acknowledgement, and how many forms one client address may
post in an hour (``per_ip``; the in-memory limiter in ``web.ratelimit`` turns a flood away first,
without touching the database).

A mailbox is the address as its owner receives it (``mailbox_key``): ``victim+1@`` and
``victim+2@`` are one inbox, and so are ``j.doe@gmail.com`` and ``jdoe@googlemail.com``. Counting
by address would let one person have thirty confirmations sent to someone else's inbox.

Fixed windows (``window_start`` = the hit's time rounded down to the window): one upsert per
hit, no history to scan; at a window's edge up to twice the limit can pass in a short while,
which is still a handful of mails, not a flood. Rows older than a day are dropped by the
scheduler's sweep (``prune``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import RateLimited
from ..models import RateLimit

# Providers known to deliver every dotted spelling of a local part to the same inbox.
DOTS_IGNORED = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
KEPT = dt.timedelta(days=2)  # longer than the longest window


def mailbox_key(email: str) -> str:
    """The inbox an address reaches: lower case, without a ``+tag``, and without dots where the
    provider ignores them."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0] or local
    domain = domain.rstrip(".")
    if domain in DOTS_IGNORED:
        local, domain = local.replace(".", ""), DOTS_IGNORED[domain]
    return f"{local}@{domain}"


async def hit(session: AsyncSession, bucket: str, now: dt.datetime, *, limit: int, window_s: int) -> float:
    """Count a hit on ``bucket``: 0 when it is within ``limit`` for the current window, else the
    seconds until the window ends."""
    at = int(now.timestamp())
    start = at - at % window_s
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else pg_insert
    values = insert(RateLimit).values(bucket=bucket[:320], window_start=start, hits=1)
    upsert = values.on_conflict_do_update(
        index_elements=[RateLimit.bucket, RateLimit.window_start], set_={"hits": RateLimit.hits + 1}
    ).returning(RateLimit.hits)
    hits = (await session.execute(upsert)).scalar_one()
    return 0.0 if hits <= limit else float(start + window_s - at)


def client_key(ip: str) -> str:
    """Whom a client address stands for: itself (IPv4), or its /64 (IPv6: one subscriber line
    gets a whole /64 and can pick a new address in it for every post)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


async def per_ip(session: AsyncSession, ip: str | None, now: dt.datetime, *, limit: int) -> None:
    """Count one form post from ``ip`` in the hour; ``RateLimited`` past ``limit`` (raised inside
    the caller's transaction, so the refused post is neither stored nor counted)."""
    if not ip:
        return
    wait = await hit(session, f"ip:{client_key(ip)}", now, limit=limit, window_s=3600)
    if wait:
        raise RateLimited(
            "too many requests for this IP address; try again later", retry_after_s=max(1, math.ceil(wait))
        )


async def prune(session: AsyncSession, now: dt.datetime) -> None:
    await session.execute(delete(RateLimit).where(RateLimit.window_start < int((now - KEPT).timestamp())))
