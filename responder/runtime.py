"""The objects every part of a running responder shares, built once and passed down."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock
from .db import Database
from .delivery.metrics import DeliveryMetrics
from .settings import Settings
from .templating.pool import Renderer
from .tracking.tokens import Tokens


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock
    tokens: Tokens
    # Set when new work may be due, so the loops act now instead of at their next poll.
    scheduler_wake: asyncio.Event = field(default_factory=asyncio.Event)
    outbox_wake: asyncio.Event = field(default_factory=asyncio.Event)
    delivery_metrics: DeliveryMetrics = field(default_factory=DeliveryMetrics)
    webhook_wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The SHA-256 of the admin token generated on first start (None when one is configured).
    admin_token_hash: str | None = None
    # Where uploaded templates render: child processes with hard limits (``templating.pool``).
    renderer: Renderer = field(init=False)

    # Work started beside the loops (the complaint governor's counts): ended before the
    # database closes, so none is left holding a connection.
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.renderer = Renderer.from_settings(self.settings)

    def start_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def close(self) -> None:
        """End background work and the render processes, and close the database."""
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        await self.renderer.close()
        await self.db.dispose()

    def wake_scheduler(self) -> None:
        self.scheduler_wake.set()

    def wake_outbox(self) -> None:
        self.outbox_wake.set()

    def wake_webhooks(self) -> None:
        self.webhook_wake.set()

    def url(self, path: str) -> str:
        return self.settings.base_url + path
