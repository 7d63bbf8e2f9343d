"""The delivery worker: one loop that claims due messages, sends them, and records the outcome.

    poll for due work → claim a batch with a lease → build, sign → send each in a lane under
    the rate limits → record every outcome of the batch in one transaction:
    sent | deferred | failed | bounced

Two batches are in flight at once, so lanes keep sending while the other batch is claimed,
built or recorded. A batch is the most a crash can send twice: its outcomes are written after
its sends. Pausing stops new claims; stopping lets the claimed batches finish.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ..errors import PermanentDeliveryError, TemplateError, TemporaryDeliveryError, ValidationError
from ..loop import PollingLoop
from ..models import Event, Layer, Message, Subscriber, Template
from ..runtime import Runtime
from ..sequences.funnel import end_enrollments
from . import outbox
from .build import build_mail
from .controls import pause_state
from .dkim import DkimSigner, signer_from_settings
from .mime import Envelope, compose
from .ratelimit import SendLimits
from .retry import next_attempt
from .transport import Transport

log = logging.getLogger(__name__)

SENDABLE_STATUS = {"confirm": ("pending",), "step": ("active",), "newsletter": ("active",)}
PIPELINES = 2


@dataclass
class Outcome:
    message_pk: int
    subscriber_id: int
    values: dict[str, Any]
    bounce: bool = False

    @property
    def state(self) -> str:
        return str(self.values["state"])


@dataclass
class Ready:
    message: Message
    envelope: Envelope
    data: bytes
    template_id: int


class DeliveryWorker(PollingLoop):
    name = "delivery"

    def __init__(self, rt: Runtime, transport: Transport, *, batch_size: int | None = None,
                 signer: DkimSigner | None = None) -> None:
        super().__init__(rt.outbox_wake, rt.settings.worker_poll_s)
        settings = rt.settings
        self.rt = rt
        self.transport = transport
        self.batch_size = batch_size or settings.worker_batch
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{id(self) & 0xffffff:x}"
        self.signer = signer or signer_from_settings(settings)
        self.limits = SendLimits(rate_per_s=settings.send_rate_per_s,
                                 domain_concurrency=settings.domain_concurrency,
                                 domain_rate_per_min=settings.domain_rate_per_min)
        self.metrics = rt.delivery_metrics
        self._lanes = asyncio.Semaphore(settings.worker_lanes)

    async def run(self) -> None:
        await asyncio.gather(*(super(DeliveryWorker, self).run() for _ in range(PIPELINES)))

    async def run_once(self) -> int:
        """Claim one batch and deliver it; the number of messages claimed."""
        if (await pause_state(self.rt.db)).paused:
            return 0
        ids = await outbox.claim(
            self.rt.db, owner=self.owner, now=self.rt.clock.now(),
            limit=self.batch_size, lease_s=self.rt.settings.lease_s,
        )
        if not ids:
            return 0
        renewing = asyncio.create_task(self._renew(ids))
        try:
            outcomes, ready = await self._prepare(ids)
            outcomes += await asyncio.gather(*(self._send(item) for item in ready))
        finally:
            renewing.cancel()
        await self._record([o for o in outcomes if o is not None])
        return len(ids)

    async def _renew(self, ids: list[int]) -> None:
        """Keep extending the batch's lease while it is in flight (a slow server or a rate
        limit can outlast one lease), so no other worker takes it and sends it twice."""
        lease_s = self.rt.settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await outbox.renew(self.rt.db, ids, self.owner, now=self.rt.clock.now(),
                                   lease_s=lease_s)
            except Exception:  # the next renewal (or the lease's slack) covers a blip
                log.exception("could not renew the lease of %d messages", len(ids))

    async def _prepare(self, ids: list[int]) -> tuple[list[Outcome | None], list[Ready]]:
        rt = self.rt
        outcomes: list[Outcome | None] = []
        ready: list[Ready] = []
        async with rt.db.read() as session:
            messages, _held = await _load_batch(session, ids)
            for message_id in ids:
                message = messages[message_id]
                subscriber = await session.get(Subscriber, message.subscriber_id)
                assert subscriber is not None
                if subscriber.status not in SENDABLE_STATUS.get(message.kind, ("active",)):
                    outcomes.append(Outcome(message.id, message.subscriber_id, {
                        "state": "failed", "last_error": f"not sent: subscriber is {subscriber.status}"}))
                    continue
                try:
                    built = await build_mail(rt, session, message)
                    data = compose(built.mail)
                except (TemplateError, ValidationError) as exc:
                    outcomes.append(Outcome(message.id, message.subscriber_id,
                                            {"state": "failed", "last_error": exc.message}))
                    continue
                except Exception:
                    log.exception("message %s: cannot be built; it stays leased and is retried "
                                  "when the lease expires", message_id)
                    continue
                if self.signer is not None:
                    data = self.signer.sign(data, int(built.mail.date.timestamp()))
                ready.append(Ready(message, built.mail.envelope, data, built.template_id))
        return outcomes, ready

    async def _send(self, item: Ready) -> Outcome:
        message = item.message
        domain = item.envelope.recipients[0].rpartition("@")[2].lower()
        base = {"template_id": item.template_id}
        async with self.limits.slot(domain), self._lanes:
            started = time.perf_counter()
            try:
                await self.transport.send(item.envelope, item.data)
            except PermanentDeliveryError as exc:
                return Outcome(message.id, message.subscriber_id,
                               dict(base, state="bounced", last_error=exc.message), bounce=True)
            except TemporaryDeliveryError as exc:
                return self._deferred(message, exc.message, base)
            except Exception as exc:  # unknown transport trouble: retrying is the safe side
                log.exception("message %s: unexpected error while sending", message.id)
                return self._deferred(message, f"unexpected error: {exc!r}"[:500], base)
            finally:
                self.metrics.send_seconds.observe(time.perf_counter() - started)
        return Outcome(message.id, message.subscriber_id,
                       dict(base, state="sent", last_error=None))

    def _deferred(self, message: Message, error: str, base: dict[str, Any]) -> Outcome:
        now = self.rt.clock.now()
        retry_at = next_attempt(message.attempts, now, message.created_at, jitter=random.random(),
                                lifetime_s=self.rt.settings.message_lifetime_s)
        if retry_at is None:
            return Outcome(message.id, message.subscriber_id,
                           dict(base, state="failed", last_error=f"gave up: {error}"))
        return Outcome(message.id, message.subscriber_id,
                       dict(base, state="deferred", last_error=error, next_attempt_at=retry_at))

    async def _record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        now = self.rt.clock.now()
        # Outcomes with equal values (a batch's sends, mostly) are written in one statement.
        groups: dict[tuple[Any, ...], list[Outcome]] = {}
        for outcome in outcomes:
            groups.setdefault(tuple(sorted(outcome.values.items())), []).append(outcome)
        recorded: list[Outcome] = []
        sent_events: list[dict[str, Any]] = []
        async with self.rt.db.transaction() as session:
            for group in groups.values():
                values = dict(group[0].values)
                if values["state"] == "sent":  # when recorded: within a batch's time of the send
                    values["sent_at"] = now
                done = set(await outbox.finish_many(
                    session, [o.message_pk for o in group], self.owner, **values))
                for outcome in group:
                    if outcome.message_pk not in done:
                        log.warning("message %s: lease lost before its outcome was recorded",
                                    outcome.message_pk)
                        continue
                    recorded.append(outcome)
                    if outcome.state == "sent":
                        sent_events.append({
                            "subscriber_id": outcome.subscriber_id,
                            "message_id": outcome.message_pk, "type": "sent", "machine": False,
                            "data": {}, "created_at": now})
                    if outcome.bounce:
                        await suppress_bounced(session, outcome.subscriber_id, outcome.message_pk,
                                               str(outcome.values.get("last_error", "")), now)
            if sent_events:
                await session.execute(insert(Event), sent_events)
        for outcome in recorded:
            self.metrics.outcomes.labels(outcome.state).inc()


async def _load_batch(session: AsyncSession, ids: list[int]) -> tuple[dict[int, Message], list[Any]]:
    """A batch's messages, subscribers, layers and templates in a few queries, so building each
    mail finds them in the session instead of asking the database one by one. The second value
    holds them: the session's identity map keeps only weak references."""
    messages = {m.id: m for m in (await session.execute(
        select(Message).where(Message.id.in_(ids)))).scalars()}
    subscriber_ids = {m.subscriber_id for m in messages.values()}
    layer_ids = set((await session.execute(
        select(Subscriber.layer_id).where(Subscriber.id.in_(subscriber_ids)))).scalars())
    held: list[Any] = list((await session.execute(
        select(Subscriber).where(Subscriber.id.in_(subscriber_ids)))).scalars())
    held += (await session.execute(select(Layer).where(Layer.id.in_(layer_ids - {None})))).scalars()
    names = {m.template_name for m in messages.values() if m.template_id is None}
    newest: dict[str, Template] = {}
    for template in (await session.execute(
            select(Template).where(Template.name.in_(names)))).scalars() if names else ():
        if template.name not in newest or template.version > newest[template.name].version:
            newest[template.name] = template
    kept = {m.template_id for m in messages.values()} - {None}
    held += (await session.execute(select(Template).where(Template.id.in_(kept)))).scalars()
    held += newest.values()
    for message in messages.values():
        if message.template_id is None and message.template_name in newest:
            # The version this attempt will use (recorded with its outcome); not a change to
            # write back, so it is set as the loaded value.
            set_committed_value(message, "template_id", newest[message.template_name].id)
    return messages, held


async def suppress_bounced(session: Any, subscriber_id: int, message_pk: int | None, reply: str,
                           now: dt.datetime, *, source: str = "smtp") -> None:
    """A hard bounce: record it, mark the address bounced, stop its sequences at once."""
    session.add(Event(subscriber_id=subscriber_id, message_id=message_pk, type="bounce",
                      created_at=now, data={"reply": reply[:500], "hard": True, "source": source}))
    await session.execute(
        update(Subscriber).where(Subscriber.id == subscriber_id,
                                 Subscriber.status.in_(("active", "pending")))
        .values(status="bounced")
    )
    await end_enrollments(session, subscriber_id, "stopped", now)
