"""The complaint governor at work: counts each layer's mail and complaints per mailbox provider,
asks ``core.governor`` what they mean, keeps the answer in ``governor_states`` (which the
dashboard reads), says what changed (log line, webhook ``governor.warning`` /
``governor.paused``), and resumes a pause when an admin says so (``governor.resumed``).

The scheduler runs it every ``RESPONDER_GOVERNOR_EVERY_S`` and as soon as a new complaint is on
record. The delivery worker holds a paused layer's newsletters and drip steps to that provider
(``held``): they wait, deferred, until the pause is resumed, and then go out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.governor import PROVIDERS, Counts, Decision, Group, Thresholds, govern, known_provider, provider_of
from ..db import Database
from ..models import Event, GovernorState, Layer, MailDomain, Message, Subscriber
from ..settings import Settings
from . import webhooks

log = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
HELD = "held by the complaint governor"  # how a held message's last_error starts
HOLD = dt.timedelta(days=3650)  # a held message's next attempt: until resumed
MX_KEPT = dt.timedelta(days=30)
MX_LOOKUPS = 50  # per run, at most: the rest wait for the next run
MX_TIMEOUT_S = 2.0
# Names that never reach a mailbox provider (RFC 2606, RFC 6761): not looked up.
RESERVED = (".example", ".test", ".invalid", ".localhost", ".local", "example.com", "example.net", "example.org")


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(settings.governor_warn_rate, settings.governor_pause_rate, settings.governor_min_sent)


def email_domain(dialect: str) -> ColumnElement[str]:
    """The lower-cased domain of ``subscribers.email``, in SQL."""
    if dialect == "postgresql":
        return func.lower(func.split_part(Subscriber.email, "@", 2))
    return func.lower(func.substr(Subscriber.email, func.instr(Subscriber.email, "@") + 1))


Found = dict[tuple[int, str], tuple[dict[str, int], dt.datetime | None]]


async def _counts(session: AsyncSession, now: dt.datetime) -> tuple[Found, Found]:
    """(layer id, domain) → ({"sent": n, "complaint": n}, newest complaint), over the last day
    and over the last week. One statement counts both, so the week always holds the day (two
    reads could see a complaint land between them)."""
    domain = email_domain(session.get_bind().dialect.name)
    in_day = case((Event.created_at >= now - DAY, 1), else_=0)
    rows = await session.execute(
        select(
            Subscriber.layer_id,
            domain,
            Event.type,
            func.count(),
            func.coalesce(func.sum(in_day), 0),
            func.max(Event.created_at),
        )
        .join(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.type.in_(("sent", "complaint")), Event.created_at >= now - WEEK, Subscriber.layer_id.is_not(None))
        .group_by(Subscriber.layer_id, domain, Event.type)
    )
    week: Found = {}
    day: Found = {}
    for layer_id, name, type_, count, in_last_day, newest in rows:
        key = (int(layer_id or 0), name or "")
        for found, n in ((week, count), (day, int(in_last_day))):
            if not n:
                continue
            counts, last = found.get(key, ({}, None))
            counts[type_] = n
            found[key] = (counts, newest if type_ == "complaint" else last)  # a complaint in the day is its newest
    return day, week


async def providers(session: AsyncSession, domains: Iterable[str]) -> dict[str, str]:
    """The provider of each domain: by name, else as last found from its MX, else ``other``."""
    domains = set(domains)
    named = {d: p for d in domains if (p := known_provider(d)) is not None}
    rest = domains - named.keys()
    if rest:
        rows = await session.execute(select(MailDomain.domain, MailDomain.provider).where(MailDomain.domain.in_(rest)))
        named.update(dict(((a, b) for a, b in rows)))
    return {d: named.get(d, "other") for d in domains}


async def _mx_hosts(domain: str) -> list[str]:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=MX_TIMEOUT_S)
    except (dns.exception.DNSException, OSError):
        return []
    return [str(record.exchange) for record in answer]  # type: ignore[attr-defined]


async def learn_providers(db: Database, now: dt.datetime, domains: Iterable[str]) -> int:
    """Look up the MX of domains not known by name and not looked up this month (a few per
    run, outside any transaction); the number learnt."""
    unknown = {d for d in domains if known_provider(d) is None and "." in d and not d.endswith(RESERVED)}
    if not unknown:
        return 0
    async with db.read() as session:
        fresh = set(
            (
                await session.execute(
                    select(MailDomain.domain).where(
                        MailDomain.domain.in_(unknown), MailDomain.checked_at >= now - MX_KEPT
                    )
                )
            ).scalars()
        )
    wanted = sorted(unknown - fresh)[:MX_LOOKUPS]
    if not wanted:
        return 0
    hosts = await asyncio.gather(*(_mx_hosts(d) for d in wanted))
    async with db.transaction() as session:
        for domain, mx in zip(wanted, hosts, strict=True):
            row = await session.get(MailDomain, domain)
            provider = provider_of(domain, mx)
            if row is None:
                session.add(MailDomain(domain=domain, provider=provider, checked_at=now))
            else:
                row.provider, row.checked_at = provider, now
    return len(wanted)


async def run(db: Database, settings: Settings, now: dt.datetime) -> Decision:
    """Count, decide, record and announce; the decision."""
    if settings.governor_mx_lookup:
        async with db.read() as session:
            _, seen_this_week = await _counts(session, now)
        await learn_providers(db, now, {domain for _, domain in seen_this_week})
    async with db.transaction() as session:
        day, week = await _counts(session, now)
        by_domain = await providers(session, {domain for _, domain in week})
        positions = dict(
            (await session.execute(select(Layer.id, Layer.position).where(Layer.removed_at.is_(None)))).all()
        )
        merged: dict[tuple[int, str], list[Any]] = {}
        for source, slot in ((week, 1), (day, 0)):
            for (layer_id, domain), (counts, last) in source.items():
                if layer_id not in positions:
                    continue
                entry = merged.setdefault((layer_id, by_domain.get(domain, "other")), [Counts(), Counts(), None])
                entry[slot] = entry[slot] + Counts(counts.get("sent", 0), counts.get("complaint", 0))
                if last is not None and (entry[2] is None or last > entry[2]):
                    entry[2] = last
        groups = [
            Group(layer_id, positions[layer_id], provider, day_c, week_c, last)
            for (layer_id, provider), (day_c, week_c, last) in merged.items()
        ]
        states = {(s.layer_id, s.provider): s for s in (await session.execute(select(GovernorState))).scalars()}
        paused = [key for key, state in states.items() if state.level == "paused" and key[0]]
        resumed = {key: state.resumed_at for key, state in states.items() if state.resumed_at is not None}
        decision = govern(groups, thresholds(settings), paused, resumed)
        seen = set()
        for verdict in decision.verdicts:
            key = (verdict.layer_id, verdict.provider)
            seen.add(key)
            state = states.get(key)
            before = state.level if state is not None else "ok"
            if state is None:
                state = GovernorState(layer_id=verdict.layer_id, provider=verdict.provider, changed_at=now)
                session.add(state)
            state.level = verdict.level
            if not (before == "paused" and verdict.level == "paused"):  # a pause keeps its first reason
                state.reason = verdict.reason[:500]
            state.day_sent, state.day_complaints = verdict.day.sent, verdict.day.complaints
            state.week_sent, state.week_complaints = verdict.week.sent, verdict.week.complaints
            if verdict.level != before:
                state.changed_at = now
                await _announce(session, verdict.layer_id, verdict.provider, before, verdict.level, state, now)
        for key, state in states.items():  # no mail there this week: nothing to say, unless paused
            if key not in seen and state.level != "paused":
                state.level, state.reason = "ok", ""
                state.day_sent = state.day_complaints = state.week_sent = state.week_complaints = 0
    return decision


def _payload(state: GovernorState) -> dict[str, Any]:
    return {
        "layer_id": state.layer_id or None,
        "provider": state.provider,
        "level": state.level,
        "reason": state.reason,
        "day": {"sent": state.day_sent, "complaints": state.day_complaints},
        "week": {"sent": state.week_sent, "complaints": state.week_complaints},
    }


async def _announce(
    session: AsyncSession, layer_id: int, provider: str, before: str, after: str, state: GovernorState, now: dt.datetime
) -> None:
    where = f"layer {layer_id}" if layer_id else "every layer"
    if after == "paused" and layer_id:
        log.warning(
            "complaint governor: newsletters and drip steps to %s in %s are held (%s)", provider, where, state.reason
        )
        await webhooks.emit(session, "governor.paused", _payload(state), now)
    elif after in ("warn", "paused") and before == "ok":
        log.warning("complaint governor: complaint rate at %s for %s is high (%s)", provider, where, state.reason)
        await webhooks.emit(session, "governor.warning", _payload(state), now)
    elif after == "ok" and before != "ok":
        log.info("complaint governor: complaint rate at %s for %s is back under the warning line", provider, where)


async def paused_groups(session: AsyncSession) -> set[tuple[int, str]]:
    """(layer id, provider) pairs whose newsletters and drip steps are held now."""
    rows = await session.execute(
        select(GovernorState.layer_id, GovernorState.provider).where(
            GovernorState.level == "paused", GovernorState.layer_id != 0
        )
    )
    return set(((a, b) for a, b in rows))


def held_reason(provider: str, layer_name: str) -> str:
    return f"{HELD}: mail to {provider} in layer {layer_name!r} waits until an admin resumes it"[:500]


async def resume(session: AsyncSession, layer_id: int, provider: str, now: dt.datetime, by: str) -> bool:
    """Lift a pause (False when there was none): its held mail goes out (mail still under
    another pause is held again when claimed)."""
    state = await session.get(GovernorState, (layer_id, provider))
    if state is None or state.level != "paused":
        return False
    state.level, state.changed_at, state.resumed_at, state.resumed_by = "warn", now, now, by[:120]
    state.reason = f"resumed by {by}"[:500]
    await session.execute(
        update(Message)
        .where(Message.state == "deferred", Message.last_error.startswith(HELD, autoescape=True))
        .values(next_attempt_at=now)
    )
    log.warning("complaint governor: %s resumed mail to %s in layer %s", by, provider, layer_id)
    await webhooks.emit(session, "governor.resumed", _payload(state) | {"resumed_by": by}, now)
    return True


async def latest_complaint(session: AsyncSession) -> int:
    """The id of the newest complaint event (0 for none): a new one calls the governor."""
    found = await session.execute(select(func.max(Event.id)).where(Event.type == "complaint"))
    return found.scalar() or 0


async def states(session: AsyncSession) -> list[dict[str, Any]]:
    """Every recorded (layer, provider), for the dashboard and the API, paused first."""
    names = dict((await session.execute(select(Layer.id, Layer.name))).all())
    rows = (await session.execute(select(GovernorState))).scalars().all()
    order = {"paused": 0, "warn": 1, "ok": 2}
    out = []
    for state in sorted(rows, key=lambda s: (order.get(s.level, 3), PROVIDERS.index(s.provider), s.layer_id)):
        day, week = Counts(state.day_sent, state.day_complaints), Counts(state.week_sent, state.week_complaints)
        out.append(
            {
                "layer_id": state.layer_id or None,
                "layer": names.get(state.layer_id) if state.layer_id else None,
                "provider": state.provider,
                "level": state.level,
                "reason": state.reason,
                "day": {"sent": day.sent, "complaints": day.complaints, "rate": day.rate},
                "week": {"sent": week.sent, "complaints": week.complaints, "rate": week.rate},
                "changed_at": state.changed_at.isoformat(),
                "resumed_at": state.resumed_at.isoformat() if state.resumed_at else None,
                "resumed_by": state.resumed_by,
            }
        )
    return out
