"""Outgoing webhooks: funnel events POSTed as signed JSON to registered URLs, with retries.

An event is written as one ``webhook_deliveries`` row per matching webhook in the same
transaction that caused it, so nothing is lost when the process stops; the sender loop posts
due rows and records each attempt. The body is signed with HMAC-SHA256 over
``"<timestamp>.<body>"`` with the webhook's secret::

    X-Responder-Event: layer_changed
    X-Responder-Delivery: 42
    X-Responder-Timestamp: 1767603600
    X-Responder-Signature: sha256=<hex>
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbutil import get_or_404
from ..errors import ValidationError
from ..loop import PollingLoop
from ..models import Webhook, WebhookDelivery
from ..runtime import Runtime

log = logging.getLogger(__name__)

WEBHOOK_EVENTS = (
    "layer_changed",
    "purchase",
    "referral",
    "unsubscribed",
    "enquiry",
    "delivery.blocked",
    "governor.warning",
    "governor.paused",
    "governor.resumed",
)
MAX_ATTEMPTS = 8
BASE_DELAY_S = 30
TIMEOUT_S = 10.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def retry_at(attempts: int, now: dt.datetime) -> dt.datetime | None:
    """After ``attempts`` failed tries: when to try again (30 s, 1 min, 2 min, …), or give up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return now + dt.timedelta(seconds=BASE_DELAY_S * 2 ** (attempts - 1))


def clean_webhook(data: dict[str, Any]) -> tuple[str, list[str]]:
    url = data.get("url")
    if not isinstance(url, str) or len(url) > 2000:
        raise ValidationError("url is required (http or https, at most 2000 characters)", field="url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("url must be an absolute http or https URL", field="url")
    events = data.get("events", list(WEBHOOK_EVENTS))
    if not isinstance(events, list) or not events or not all(e in WEBHOOK_EVENTS for e in events):
        raise ValidationError(f"events must list some of {', '.join(WEBHOOK_EVENTS)}", field="events")
    return url, sorted(set(events))


async def create_webhook(session: AsyncSession, data: dict[str, Any], now: dt.datetime) -> Webhook:
    url, events = clean_webhook(data)
    secret = data.get("secret") or secrets.token_urlsafe(32)
    if not isinstance(secret, str) or len(secret) > 255:
        raise ValidationError("secret must be text of at most 255 characters", field="secret")
    webhook = Webhook(url=url, secret=secret, events=events, active=True, created_at=now)
    session.add(webhook)
    await session.flush()
    return webhook


async def delete_webhook(session: AsyncSession, webhook_id: int) -> None:
    webhook = await get_or_404(session, Webhook, webhook_id, "webhook")
    webhook.active = False


async def emit(session: AsyncSession, event: str, payload: dict[str, Any], now: dt.datetime) -> int:
    """Queue ``event`` for every active webhook that wants it; the number queued."""
    hooks = (await session.execute(select(Webhook).where(Webhook.active.is_(True)))).scalars()
    queued = 0
    for hook in hooks:
        if event in (hook.events or []):
            session.add(
                WebhookDelivery(
                    webhook_id=hook.id,
                    event=event,
                    payload={"event": event, "at": now.isoformat(), "data": payload},
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            queued += 1
    return queued


def delivery_json(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event": d.event,
        "state": d.state,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at.isoformat(),
        "created_at": d.created_at.isoformat(),
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
    }


class WebhookSender(PollingLoop):
    """Posts due webhook deliveries; 2xx is delivered, anything else retried with backoff."""

    name = "webhooks"

    def __init__(self, rt: Runtime, *, batch_size: int = 20) -> None:
        super().__init__(rt.webhook_wake, rt.settings.worker_poll_s)
        self.rt = rt
        self.batch_size = batch_size
        self._http: aiohttp.ClientSession | None = None

    async def run_once(self) -> int:
        now = self.rt.clock.now()
        async with self.rt.db.read() as session:
            due = list(
                (
                    await session.execute(
                        select(WebhookDelivery, Webhook)
                        .join(Webhook)
                        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
                        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                        .limit(self.batch_size)
                    )
                ).all()
            )
        if not due:
            return 0
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        outcomes = await asyncio.gather(*(self._post(d, h) for d, h in due))
        now = self.rt.clock.now()
        async with self.rt.db.transaction() as session:
            for (delivery, _hook), (status, error) in zip(due, outcomes, strict=True):
                row = await session.get(WebhookDelivery, delivery.id)
                assert row is not None
                row.attempts += 1
                row.last_status, row.last_error = status, error
                if error is None:
                    row.state, row.delivered_at = "delivered", now
                else:
                    again = retry_at(row.attempts, now)
                    if again is None:
                        row.state = "failed"
                    else:
                        row.next_attempt_at = again
        return len(due)

    async def _post(self, delivery: WebhookDelivery, hook: Webhook) -> tuple[int | None, str | None]:
        assert self._http is not None
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(self.rt.clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "responder-webhooks/1",
            "X-Responder-Event": delivery.event,
            "X-Responder-Delivery": str(delivery.id),
            "X-Responder-Timestamp": str(timestamp),
            "X-Responder-Signature": sign(hook.secret, timestamp, body),
        }
        try:
            async with self._http.post(hook.url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self.close()


async def overview(session: AsyncSession, recent: int = 50) -> dict[str, Any]:
    """The admin page's view: every endpoint with its deliveries counted by state and its last
    failure, and the newest deliveries across all of them."""
    hooks = list((await session.execute(select(Webhook).order_by(Webhook.active.desc(), Webhook.id))).scalars())
    counts: dict[int, dict[str, int]] = {}
    for webhook_id, state, count in await session.execute(
        select(WebhookDelivery.webhook_id, WebhookDelivery.state, func.count()).group_by(
            WebhookDelivery.webhook_id, WebhookDelivery.state
        )
    ):
        counts.setdefault(webhook_id, {})[state] = count
    failures = {
        d.webhook_id: d
        for d in (
            await session.execute(
                select(WebhookDelivery)
                .where(WebhookDelivery.last_error.is_not(None))
                .order_by(WebhookDelivery.id.desc())
                .limit(200)
            )
        ).scalars()
    }
    latest = list(
        (await session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(recent))).scalars()
    )
    return {
        "webhooks": [
            {
                "id": hook.id,
                "url": hook.url,
                "events": hook.events,
                "active": hook.active,
                "created_at": hook.created_at,
                "counts": counts.get(hook.id, {}),
                "last_failure": failures.get(hook.id),
            }
            for hook in hooks
        ],
        "deliveries": latest,
        "urls": {hook.id: hook.url for hook in hooks},
    }
