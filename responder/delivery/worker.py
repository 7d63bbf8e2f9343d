"""The delivery worker: one loop that claims due messages, sends them, and records the outcome.

    poll for due work → claim a batch with a lease, reading its subscribers, layers and newest
    template versions in the same statement → render, assemble and sign each mail in the render
    processes (``delivery.assemble``), the batch in chunks side by side → send each in a lane
    under the rate limits as it comes back → record every outcome of the batch in one
    transaction: sent | deferred | failed | bounced

A batch costs two transactions and four statements, whatever its size: the claim's select and
update, then one update per outcome group and one insert of the sent events.

Two pipelines are in flight at once, so lanes keep sending while the other one claims, builds
or records; they share ``worker_batch``, each claiming its half. A batch's outcomes are written
after its sends, so what a killed worker can send twice is what it had claimed: at most
``worker_batch`` messages. Pausing stops new claims; stopping lets the claimed batches finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..audience import limits
from ..core import warmup as core_warmup
from ..core.bounces import SOFT, Bounce, classify
from ..core.retry import next_attempt
from ..errors import (
    PermanentDeliveryError,
    RelayCannotCarry,
    RenderTimedOut,
    TemplateError,
    TemporaryDeliveryError,
    ValidationError,
)
from ..funnel import governor, webhooks
from ..funnel.events import record_event
from ..funnel.facts import SENT_EVENTS
from ..funnel.ledger import COUNTED_KINDS
from ..loop import PollingLoop
from ..models import DomainPause, Event, Layer, Message, Subscriber, Template
from ..runtime import Runtime
from ..settings import Settings
from . import outbox, warmup
from .build import MailJob, Sources, mail_job, setup_of
from .dkim import DkimSigner, signer_from_settings
from .mime import Envelope
from .ratelimit import SendLimits
from .transport import Transport

log = logging.getLogger(__name__)

SENDABLE_STATUS = {
    "confirm": ("pending",),
    "step": ("active",),
    "newsletter": ("active",),
    # asked for by the subscriber, whatever their standing, unless the address refuses mail
    "privacy": ("pending", "active", "unsubscribed", "sunset"),
}
PIPELINES = 2
TEMPLATE_CACHE = 256  # template versions a worker keeps in memory


@dataclass
class Outcome:
    message_pk: int
    subscriber_id: int
    values: dict[str, Any]
    bounce: bool = False
    # A refusal that is not the address's fault, or not only: recorded as a soft bounce.
    soft: Bounce | None = None

    @property
    def state(self) -> str:
        return str(self.values["state"])


@dataclass(slots=True)
class Claimed:
    """An outbox row as claimed, with what building its mail reads (plain values, no ORM
    object): the message's columns, ``attempts`` counting this attempt, and its sources."""

    id: int
    subscriber_id: int
    kind: str
    step_id: int | None
    newsletter_id: int | None
    template_name: str
    template_id: int | None
    attempts: int
    message_id: str
    created_at: dt.datetime
    subscriber: _Recipient | None
    layer: _Layer | None
    newest_template_id: int | None


@dataclass(slots=True)
class _Recipient:
    id: int
    email: str
    name: str
    status: str
    layer_id: int | None
    attributes: dict[str, Any]
    tags: list[Any]


@dataclass(frozen=True, slots=True)
class _Layer:
    id: int
    position: int
    name: str
    label: str


@dataclass
class Ready:
    message: Claimed
    envelope: Envelope
    data: bytes
    template_id: int


_s = cast(Table, Subscriber.__table__).c
_l = cast(Table, Layer.__table__).c
_t = cast(Table, Template.__table__).c
_m = outbox.MESSAGES.c


def _claim_shape(query: outbox.AnySelect) -> outbox.AnySelect:
    """What the claim reads besides the outbox row: the subscriber, the layer and the newest
    version of the template's name, joined, so a batch needs no query per message. The
    columns' order is ``_claimed``'s (after ``claim_in``'s id, next attempt, attempts and kind)."""
    versions = cast(Table, Template.__table__).alias("versions")
    newest = (
        select(versions.c.id)
        .where(versions.c.name == _m.template_name)
        .order_by(versions.c.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        query.add_columns(
            _m.subscriber_id,
            _m.step_id,
            _m.newsletter_id,
            _m.template_name,
            _m.template_id,
            _m.message_id,
            _m.created_at,
            _s.id,
            _s.email,
            _s.name,
            _s.status,
            _s.layer_id,
            _s.attributes,
            _s.tags,
            _l.position,
            _l.name,
            _l.label,
            newest,
        )
        .outerjoin(Subscriber.__table__, _s.id == _m.subscriber_id)
        .outerjoin(Layer.__table__, _l.id == _s.layer_id)
    )


def _claimed(row: Any, layers: dict[int, _Layer]) -> Claimed:
    """A claimed row, its columns in the order of ``claim_in`` then ``_claim_shape``."""
    (
        pk,
        _next_attempt_at,
        attempts,
        kind,
        subscriber_id,
        step_id,
        newsletter_id,
        template_name,
        template_id,
        message_id,
        created_at,
        s_id,
        s_email,
        s_name,
        s_status,
        s_layer_id,
        s_attributes,
        s_tags,
        l_position,
        l_name,
        l_label,
        newest_template_id,
    ) = row
    subscriber = layer = None
    if s_id is not None:
        subscriber = _Recipient(s_id, s_email, s_name, s_status, s_layer_id, s_attributes, s_tags)
        if s_layer_id is not None and l_position is not None:
            layer = layers.get(s_layer_id)
            if layer is None:
                layer = layers[s_layer_id] = _Layer(s_layer_id, l_position, l_name, l_label)
    return Claimed(
        pk,
        subscriber_id,
        kind,
        step_id,
        newsletter_id,
        template_name,
        template_id,
        attempts + 1,
        message_id,
        created_at,
        subscriber,
        layer,
        newest_template_id,
    )


class DeliveryWorker(PollingLoop):
    name = "delivery"

    def __init__(
        self, rt: Runtime, transport: Transport, *, batch_size: int | None = None, signer: DkimSigner | None = None
    ) -> None:
        super().__init__(rt.outbox_wake, rt.settings.worker_poll_s)
        settings = rt.settings
        self.rt = rt
        self.transport = transport
        self.batch_size = batch_size or settings.worker_batch
        # The pipelines share the batch, so a crash sends at most ``batch_size`` messages twice.
        self.pipelines = max(1, min(PIPELINES, self.batch_size))
        self.claim_size = self.batch_size // self.pipelines
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{id(self) & 0xFFFFFF:x}"
        self.signer = signer or signer_from_settings(settings)
        # Mails are rendered, assembled and signed in the render processes (``delivery.assemble``):
        # this process claims, sends and records.
        self.setup = setup_of(rt, self.signer)
        self.limits = SendLimits(
            rate_per_s=settings.send_rate_per_s,
            domain_concurrency=settings.domain_concurrency,
            domain_rate_per_min=settings.domain_rate_per_min,
        )
        self.metrics = rt.delivery_metrics
        self._lanes = asyncio.Semaphore(settings.worker_lanes)
        # Template versions are never changed once stored: rows kept by id, a batch's newest
        # version of each name looked up with the claim.
        self._templates: dict[int, Any] = {}
        self._paused: dict[str, DomainPause] = {}  # recipient domains not mailed for now
        # (layer id, provider) pairs whose newsletters and steps the complaint governor holds,
        # and the providers of the batch's domains while any is held.
        self._governed: set[tuple[int, str]] = set()
        self._providers: dict[str, str] = {}
        # Messages of the batch over their provider's warm-up cap today: when they may go, and why.
        self._warmup_held: dict[int, tuple[dt.datetime, str]] = {}

    async def run(self) -> None:
        await asyncio.gather(*(super(DeliveryWorker, self).run() for _ in range(self.pipelines)))

    async def run_once(self) -> int:
        """Claim one batch and deliver it; the number of messages claimed."""
        batch = await self._claim()
        if not batch:
            return 0
        ids = [message.id for message in batch]
        done = asyncio.Event()
        renewing = asyncio.create_task(self._renew(ids, done))
        sending: list[asyncio.Task[Outcome]] = []
        try:
            # Each mail goes to a lane as soon as it is built, so the server receives while the
            # rest of the batch is rendered and signed (on two cores: SMTP peer and builder
            # overlap instead of taking turns).
            outcomes = await self._prepare(batch, lambda item: sending.append(asyncio.create_task(self._send(item))))
            outcomes += await asyncio.gather(*sending)
        except BaseException:
            for task in sending:
                task.cancel()
            raise
        finally:
            done.set()  # not cancelled: a renewal in flight finishes its transaction first
            await renewing
        await self._record([o for o in outcomes if o is not None])
        return len(ids)

    async def _claim(self) -> list[Claimed]:
        """Lease a batch (none while paused) and read what building its mails needs, in one
        transaction: the claim's own query, plus the template versions not seen before."""
        rt = self.rt
        async with rt.db.transaction() as session:
            rows = await outbox.claim_in(
                session,
                owner=self.owner,
                now=rt.clock.now(),
                limit=self.claim_size,
                lease_s=rt.settings.lease_s,
                shape=_claim_shape,
            )
            layers: dict[int, _Layer] = {}
            batch = [_claimed(row, layers) for row in rows]
            if batch:
                self._paused = await paused_domains(session, rt.clock.now())
                self._governed = await governor.paused_groups(session)
                schedule = rt.settings.warmup
                warming = schedule is not None and schedule.cap(rt.clock.now()) is not None
                if self._governed or warming:
                    domains = {m.subscriber.email.rpartition("@")[2].lower() for m in batch if m.subscriber}
                    self._providers = await governor.providers(session, domains)
                self._warmup_held = await self._warmup(session, batch) if warming else {}
            wanted = {m.template_id or m.newest_template_id for m in batch} - {None}
            missing = wanted - self._templates.keys()
            if missing:
                if len(self._templates) + len(missing) > TEMPLATE_CACHE:
                    self._templates.clear()  # start over with this batch's versions only
                    missing = wanted
                for template in await session.execute(select(*_t).where(_t.id.in_(missing))):
                    self._templates[template.id] = template
        return batch

    async def _warmup(self, session: AsyncSession, batch: list[Claimed]) -> dict[int, tuple[dt.datetime, str]]:
        """Count the batch's list mail against today's warm-up cap of its provider; those over
        it, with when they may go and why."""
        schedule = self.rt.settings.warmup
        assert schedule is not None
        now = self.rt.clock.now()
        held: dict[int, tuple[dt.datetime, str]] = {}
        for message in batch:
            if message.kind not in COUNTED_KINDS or message.subscriber is None:
                continue
            provider = self._providers.get(message.subscriber.email.rpartition("@")[2].lower(), "other")
            verdict = await warmup.count(session, schedule, provider, now)
            if verdict.held_until is not None:
                held[message.id] = (verdict.held_until, verdict.reason)
        return held

    async def _renew(self, ids: list[int], done: asyncio.Event) -> None:
        """Keep extending the batch's lease while it is in flight (a slow server or a rate
        limit can outlast one lease), so no other worker takes it and sends it twice; until
        ``done`` is set."""
        lease_s = self.rt.settings.lease_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), lease_s / 3)
            if done.is_set():
                return
            try:
                await outbox.renew(self.rt.db, ids, self.owner, now=self.rt.clock.now(), lease_s=lease_s)
            except Exception:  # the next renewal (or the lease's slack) covers a blip
                log.exception("could not renew the lease of %d messages", len(ids))

    async def _prepare(self, batch: list[Claimed], send: Callable[[Ready], None]) -> list[Outcome | None]:
        """Build and sign each mail and hand it to ``send``; the outcomes of those not sent."""
        rt = self.rt
        outcomes: list[Outcome | None] = []
        jobs: list[tuple[Claimed, MailJob]] = []
        for message in batch:
            subscriber = message.subscriber
            if subscriber is None:
                outcomes.append(
                    Outcome(
                        message.id,
                        message.subscriber_id,
                        {"state": "failed", "last_error": "not sent: subscriber is gone"},
                    )
                )
                continue
            if subscriber.status not in SENDABLE_STATUS.get(message.kind, ("active",)):
                outcomes.append(
                    Outcome(
                        message.id,
                        message.subscriber_id,
                        {"state": "failed", "last_error": f"not sent: subscriber is {subscriber.status}"},
                    )
                )
                continue
            if self._governed and message.kind in COUNTED_KINDS and message.layer is not None:
                provider = self._providers.get(subscriber.email.rpartition("@")[2].lower(), "other")
                if (message.layer.id, provider) in self._governed:
                    held = {
                        "state": "deferred",
                        "next_attempt_at": rt.clock.now() + governor.HOLD,
                        "last_error": governor.held_reason(provider, message.layer.name),
                    }
                    outcomes.append(Outcome(message.id, message.subscriber_id, held))
                    continue
            if message.id in self._warmup_held:
                # Not an attempt: the count taken at the claim is given back, so a wait of days
                # never brings a message nearer to giving up.
                until, reason = self._warmup_held[message.id]
                held = {
                    "state": "deferred",
                    "next_attempt_at": until,
                    "last_error": reason,
                    "attempts": message.attempts - 1,
                }
                outcomes.append(Outcome(message.id, message.subscriber_id, held))
                continue
            # The version recorded on the message (a retry), else the newest of its name.
            template = self._templates.get(message.template_id or message.newest_template_id or 0)
            if template is None:
                failed = {"state": "failed", "last_error": f"no template named {message.template_name!r}"}
                outcomes.append(Outcome(message.id, message.subscriber_id, failed))
                continue
            # Plain rows with the attributes rendering reads stand in for ORM objects.
            sources = Sources(cast(Subscriber, subscriber), cast(Layer | None, message.layer), cast(Template, template))
            try:
                jobs.append((message, mail_job(rt, cast(Message, message), sources)))
            except Exception as exc:
                outcomes.append(self._unbuildable(message, exc))
        # Started together, so the render processes work side by side; sent in claim order.
        builds = list(zip(jobs, rt.renderer.mails([job.render for _, job in jobs], self.setup), strict=True))
        try:
            for (message, job), build in builds:
                try:
                    data = await build
                except RenderTimedOut as exc:  # a busy machine as often as a runaway template
                    outcomes.append(self._deferred(message, exc.message, {}))
                    continue
                except Exception as exc:
                    outcomes.append(self._unbuildable(message, exc))
                    continue
                send(Ready(message, job.envelope, data, job.template.id))
                await asyncio.sleep(0)  # let the lanes start on it
        finally:
            for _, build in builds:
                build.cancel()
        return outcomes

    @staticmethod
    def _unbuildable(message: Claimed, exc: Exception) -> Outcome:
        """Building is deterministic (the sources are in hand): a failure now is one at every
        try, so the message fails at once with the reason rather than being claimed again at
        every lease's end."""
        if isinstance(exc, (TemplateError, ValidationError)):
            reason = exc.message
        else:
            log.exception("message %s: cannot be built", message.id, exc_info=exc)
            reason = f"cannot be built: {exc.__class__.__name__}: {exc}"[:500]
        return Outcome(message.id, message.subscriber_id, {"state": "failed", "last_error": reason})

    async def _send(self, item: Ready) -> Outcome:
        message = item.message
        domain = item.envelope.recipients[0].rpartition("@")[2].lower()
        base = {"template_id": item.template_id}
        pause = self._paused.get(domain)
        if pause is not None and pause.until > self.rt.clock.now():  # not even tried: it would refuse
            values = dict(base, state="deferred", next_attempt_at=pause.until)
            values["last_error"] = f"{domain} is paused until {pause.until:%Y-%m-%d %H:%M} UTC: {pause.reason}"[:500]
            return Outcome(message.id, message.subscriber_id, values)
        async with self.limits.slot(domain), self._lanes:
            started = time.perf_counter()
            try:
                await self.transport.send(item.envelope, item.data)
            except (PermanentDeliveryError, TemporaryDeliveryError) as exc:
                return self._refused(message, exc, base, domain)
            except Exception as exc:  # unknown transport trouble: retrying is the safe side
                log.exception("message %s: unexpected error while sending", message.id)
                return self._deferred(message, f"unexpected error: {exc!r}"[:500], base)
            finally:
                self.metrics.send_seconds.observe(time.perf_counter() - started)
        return Outcome(message.id, message.subscriber_id, dict(base, state="sent", last_error=None))

    def _refused(
        self, message: Claimed, exc: PermanentDeliveryError | TemporaryDeliveryError, base: dict[str, Any], domain: str
    ) -> Outcome:
        """What a refusal means (``core.bounces``): only a refused address bounces and is
        suppressed; a blocklist or policy refusal waits and is tried again, and says so."""
        if isinstance(exc, RelayCannotCarry):  # the same at every try: fails now, with the reason
            return Outcome(message.id, message.subscriber_id, dict(base, state="failed", last_error=exc.message))
        if exc.smtp_code is None:  # no answer at all: the connection, not the recipient
            return self._deferred(message, exc.message, base)
        bounce = classify(exc.smtp_code, exc.message)
        permanent = isinstance(exc, PermanentDeliveryError)
        if bounce.suppresses and permanent:
            return Outcome(
                message.id, message.subscriber_id, dict(base, state="bounced", last_error=exc.message), bounce=True
            )
        if bounce.kind == "policy":
            log.warning(
                "message %s to %s refused for the sender's reputation or policy, not the address: %s",
                message.id,
                domain,
                exc.message,
            )
        soft = bounce if bounce.kind in ("full", "policy", "unknown", "message") else None
        if permanent and bounce.kind in ("message", "unknown"):
            values = dict(base, state="failed", last_error=exc.message)
            return Outcome(message.id, message.subscriber_id, values, soft=soft)
        return replace(self._deferred(message, exc.message, base), soft=soft)

    def _deferred(self, message: Claimed, error: str, base: dict[str, Any]) -> Outcome:
        now = self.rt.clock.now()
        retry_at = next_attempt(
            message.attempts,
            now,
            core_warmup.lifetime_start(self.rt.settings.warmup, message.created_at, now)
            if message.kind in COUNTED_KINDS
            else message.created_at,
            jitter=random.random(),
            lifetime_s=self.rt.settings.message_lifetime_s,
            first_s=self.rt.settings.retry_first_s,
        )
        if retry_at is None:
            return Outcome(
                message.id, message.subscriber_id, dict(base, state="failed", last_error=f"gave up: {error}")
            )
        return Outcome(
            message.id, message.subscriber_id, dict(base, state="deferred", last_error=error, next_attempt_at=retry_at)
        )

    async def _record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        now = self.rt.clock.now()
        # Outcomes with equal values (a batch's sends, mostly) are written in one statement.
        groups: dict[tuple[Any, ...], list[Outcome]] = {}
        for outcome in outcomes:
            groups.setdefault(tuple(sorted(outcome.values.items())), []).append(outcome)
        recorded: Counter[str] = Counter()
        sent: list[int] = []
        async with self.rt.db.transaction() as session:
            for group in groups.values():
                values = dict(group[0].values)
                if values["state"] == "sent":  # when recorded: within a batch's time of the send
                    values["sent_at"] = now
                done = set(await outbox.finish_many(session, [o.message_pk for o in group], self.owner, **values))
                for outcome in group:
                    if outcome.message_pk not in done:
                        log.warning("message %s: lease lost before its outcome was recorded", outcome.message_pk)
                        continue
                    recorded[outcome.state] += 1
                    if outcome.state == "sent":
                        sent.append(outcome.message_pk)
                    if outcome.bounce:
                        await suppress_bounced(
                            session,
                            outcome.subscriber_id,
                            outcome.message_pk,
                            str(outcome.values.get("last_error", "")),
                            now,
                        )
                    elif outcome.soft is not None:
                        await soft_bounced(
                            session,
                            self.rt.settings,
                            outcome.subscriber_id,
                            outcome.message_pk,
                            outcome.soft,
                            str(outcome.values.get("last_error", "")),
                            now,
                        )
            if sent:  # one statement, the rows made from the outbox's
                await session.execute(SENT_EVENTS, {"ids": sent, "now": now})
        for state, count in recorded.items():
            self.metrics.outcomes.labels(state).inc(count)


async def suppress_bounced(
    session: AsyncSession,
    subscriber_id: int,
    message_pk: int | None,
    reply: str,
    now: dt.datetime,
    *,
    source: str = "smtp",
) -> None:
    """A hard bounce: recorded, which marks the address bounced and stops its sequences."""
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        data = {"reply": reply[:500], "hard": True, "source": source}
        await record_event(session, subscriber, "bounce", now, message_id=message_pk, data=data)


async def soft_bounced(
    session: AsyncSession,
    settings: Settings,
    subscriber_id: int,
    message_pk: int | None,
    bounce: Bounce,
    reply: str,
    now: dt.datetime,
    *,
    source: str = "smtp",
) -> None:
    """A refusal that does not suppress by itself: recorded as a soft bounce with its kind. A
    policy refusal is announced (webhook ``delivery.blocked``); the address is suppressed once
    ``settings.soft_bounce_limit`` different messages to it met a full mailbox or an unexplained
    refusal within ``settings.soft_bounce_days``."""
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return
    data = {"reply": reply[:500], "hard": False, "kind": bounce.kind, "status": bounce.status, "source": source}
    await record_event(session, subscriber, "bounce", now, message_id=message_pk, data=data)
    if bounce.kind == "policy":
        domain = subscriber.email.rpartition("@")[2].lower()
        payload: dict[str, Any] = {"domain": domain, "message_id": message_pk, "reply": reply[:500]}
        payload["status"] = bounce.status
        over = await limits.hit(
            session, f"blocked:{domain}", now, limit=max(settings.blocked_pause_after - 1, 0), window_s=3600
        )
        if over:  # again and again: stop mailing the domain for a while, say so
            until = now + dt.timedelta(seconds=settings.blocked_pause_s)
            await pause_domain(session, domain, until, reply, now)
            payload["paused_until"] = until.isoformat()
            log.warning("recipient domain %s paused until %s: it keeps refusing our mail (%s)", domain, until, reply)
        await webhooks.emit(session, "delivery.blocked", payload, now)
        return
    if bounce.kind not in SOFT or subscriber.status != "active":
        return
    since = now - dt.timedelta(days=settings.soft_bounce_days)
    kinds = Event.data["kind"].as_string()
    messages = (
        await session.execute(
            select(func.count(func.distinct(Event.message_id))).where(
                Event.subscriber_id == subscriber_id,
                Event.type == "bounce",
                Event.created_at >= since,
                kinds.in_(SOFT),
            )
        )
    ).scalar_one()
    if messages >= settings.soft_bounce_limit:
        await suppress_bounced(
            session,
            subscriber_id,
            message_pk,
            f"{messages} soft bounces in {settings.soft_bounce_days} days; the last: {reply}",
            now,
            source=source,
        )


async def pause_domain(session: AsyncSession, domain: str, until: dt.datetime, reason: str, now: dt.datetime) -> None:
    pause = await session.get(DomainPause, domain)
    if pause is None:
        session.add(DomainPause(domain=domain, until=until, reason=reason[:500], created_at=now))
    elif pause.until < until:
        pause.until, pause.reason = until, reason[:500]


async def paused_domains(session: AsyncSession, now: dt.datetime) -> dict[str, DomainPause]:
    rows = await session.execute(select(DomainPause).where(DomainPause.until > now))
    return {pause.domain: pause for pause in rows.scalars()}
