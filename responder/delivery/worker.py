"""The delivery worker: one loop that claims due messages, sends them, and records the outcome.

    poll for due work → claim a batch with a lease → send each in a lane → sent | deferred |
    failed | bounced

Stopping lets the messages already claimed finish; nothing new is claimed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket

from sqlalchemy import update

from ..errors import PermanentDeliveryError, TemplateError, TemporaryDeliveryError, ValidationError
from ..loop import PollingLoop
from ..models import Event, Message, Subscriber
from ..runtime import Runtime
from . import outbox
from .build import build_mail
from .mime import compose
from .retry import next_attempt
from .transport import Transport

log = logging.getLogger(__name__)

SENDABLE_STATUS = {"confirm": ("pending",), "step": ("active",), "newsletter": ("active",)}


class DeliveryWorker(PollingLoop):
    name = "delivery"

    def __init__(self, rt: Runtime, transport: Transport, *, batch_size: int = 50) -> None:
        super().__init__(rt.outbox_wake, rt.settings.worker_poll_s)
        self.rt = rt
        self.transport = transport
        self.batch_size = batch_size
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lanes = asyncio.Semaphore(rt.settings.worker_lanes)

    async def run_once(self) -> int:
        """Claim one batch and deliver it; the number of messages claimed."""
        ids = await outbox.claim(
            self.rt.db, owner=self.owner, now=self.rt.clock.now(),
            limit=self.batch_size, lease_s=self.rt.settings.lease_s,
        )
        await asyncio.gather(*(self._deliver_in_lane(message_id) for message_id in ids))
        return len(ids)

    async def _deliver_in_lane(self, message_id: int) -> None:
        async with self._lanes:
            try:
                await self.deliver(message_id)
            except Exception:
                log.exception("message %s: unexpected error; it stays leased and will be retried",
                              message_id)

    async def deliver(self, message_id: int) -> None:
        rt = self.rt
        async with rt.db.read() as session:
            message = await session.get(Message, message_id)
            assert message is not None
            subscriber = await session.get(Subscriber, message.subscriber_id)
            assert subscriber is not None
            if subscriber.status not in SENDABLE_STATUS.get(message.kind, ("active",)):
                await self._record(message, state="failed",
                                   last_error=f"not sent: subscriber is {subscriber.status}")
                return
            try:
                built = await build_mail(rt, session, message)
                data = compose(built.mail)
            except (TemplateError, ValidationError) as exc:
                await self._record(message, state="failed", last_error=exc.message)
                return
        try:
            await self.transport.send(built.mail.envelope, data)
        except PermanentDeliveryError as exc:
            await self._record(message, state="bounced", last_error=exc.message,
                               template_id=built.template_id, bounce=True)
        except TemporaryDeliveryError as exc:
            retry_at = next_attempt(message.attempts, rt.clock.now(), message.created_at,
                                    jitter=random.random())
            if retry_at is None:
                await self._record(message, state="failed", last_error=f"gave up: {exc.message}",
                                   template_id=built.template_id)
            else:
                await self._record(message, state="deferred", last_error=exc.message,
                                   next_attempt_at=retry_at, template_id=built.template_id)
        else:
            await self._record(message, state="sent", sent_at=rt.clock.now(),
                               template_id=built.template_id, last_error=None)

    async def _record(self, message: Message, *, bounce: bool = False, **values: object) -> None:
        now = self.rt.clock.now()
        async with self.rt.db.transaction() as session:
            if not await outbox.finish(session, message.id, self.owner, **values):
                log.warning("message %s: lease lost before its outcome was recorded", message.id)
                return
            if values.get("state") == "sent":
                session.add(Event(subscriber_id=message.subscriber_id, message_id=message.id,
                                  type="sent", created_at=now, data={}))
            if bounce:
                session.add(Event(subscriber_id=message.subscriber_id, message_id=message.id,
                                  type="bounce", created_at=now,
                                  data={"reply": str(values.get("last_error", ""))}))
                await session.execute(
                    update(Subscriber).where(Subscriber.id == message.subscriber_id)
                    .values(status="bounced")
                )
