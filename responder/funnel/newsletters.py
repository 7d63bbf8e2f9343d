"""Newsletters: one template sent to chosen layers (and tags), now or at a time.

``draft → scheduled → sending → sent``, with ``paused`` and ``cancelled`` on the side. When
sending starts the audience is fixed in one ``INSERT … SELECT`` (the database copies it; the
process never holds the list), then the scheduler walks it in subscriber-id order, one batch
per tick, queueing outbox rows and moving a cursor in the same transaction. The outbox keeps a
(subscriber, newsletter) pair once, so a resume, a crash or a second scheduler never sends
twice. Pausing stops new batches; rows already queued (at most one batch) still go.
Each recipient's copy is planned with everything else counted for them (``ledger``): it is
queued for now, or for the first moment the layer's caps, the collision with drip steps and
the subscriber's own choice of fewer mails allow (held, never dropped). A subscriber who paused
their mail is skipped by a newsletter that reaches them during the pause.
A newsletter names a template that exists and renders as a newsletter (``templating.sendable``),
or it is not written.
An A/B newsletter (``abtests``) walks its audience twice: first the test share, each with their
variant, then — once the winner is known — the rest, with the winner. Between the walks it stays
``sending``, its cursor past everyone, waiting.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Integer, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.abtest import in_test_share
from ..core.pacing import Held, skips_newsletter
from ..dbutil import get_or_404, has_element
from ..delivery.outbox import enqueue_columns, kept_counts, outbox_columns
from ..errors import Conflict, NotFound, ValidationError
from ..models import AbTest, Layer, Message, Newsletter, NewsletterRecipient, Subscriber
from ..settings import Settings
from ..templating.pool import Renderer
from ..templating.sendable import sendable_template
from ..validation import MAX_ID, clean_text
from . import abtests
from .ledger import PACED_TEXT, among, move_held_rows, read_ledger

# Recipients per batch: a batch's own queries and commit cost as much as planning some 250
# recipients (measured at 100,000: 500 a batch took 12 s, 2,000 took 9 s); a batch of 2,000
# holds SQLite's writer for some 0.15 s.
BATCH = 2000
TAG = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
STATES = ("draft", "scheduled", "sending", "paused", "sent", "cancelled")


def _parse_time(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ValidationError("send_at must be an ISO 8601 time with a zone", field="send_at") from exc
    if parsed.tzinfo is None:
        raise ValidationError("send_at must carry a time zone (e.g. Z or +02:00)", field="send_at")
    return parsed.astimezone(dt.UTC)


async def _target_layers(session: AsyncSession, positions: Any) -> list[Layer]:
    if (
        not isinstance(positions, list)
        or not positions
        or not all(isinstance(p, int) and not isinstance(p, bool) and abs(p) <= MAX_ID for p in positions)
    ):
        raise ValidationError(
            "layers is required: a list of layer positions (there is no 'everyone' default)", field="layers"
        )
    rows = {
        layer.position: layer
        for layer in (
            await session.execute(select(Layer).where(Layer.position.in_(positions), Layer.removed_at.is_(None)))
        ).scalars()
    }
    missing = sorted(set(positions) - set(rows))
    if missing:
        raise ValidationError(f"no layer at position {missing[0]}", field="layers")
    return [rows[p] for p in sorted(set(positions))]


def _snapshot(layers: list[Layer]) -> list[dict[str, Any]]:
    return [{"id": layer.id, "position": layer.position, "name": layer.name} for layer in layers]


async def target_layers(session: AsyncSession, newsletter: Newsletter) -> list[dict[str, Any]]:
    """The layers a newsletter is for, by id, with position and name: as they were when sending
    started, or for one not yet started as they are now (a removed one as it was composed)."""
    kept = {entry["id"]: entry for entry in newsletter.layer_snapshot or []}
    if newsletter.started_at is not None:
        return [kept.get(i, {"id": i, "position": None, "name": None}) for i in newsletter.layer_ids]
    current = {
        layer.id: layer
        for layer in (
            await session.execute(select(Layer).where(Layer.id.in_(newsletter.layer_ids), Layer.removed_at.is_(None)))
        ).scalars()
    }
    return [
        _snapshot([current[i]])[0] if i in current else kept.get(i, {"id": i, "position": None, "name": None})
        for i in newsletter.layer_ids
    ]


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) and TAG.match(t) for t in value):
        raise ValidationError("tags must be a list of tags (letters, digits, '-', '_')", field="tags")
    return sorted(set(value))


async def create(
    session: AsyncSession,
    data: dict[str, Any],
    now: dt.datetime,
    settings: Settings,
    renderer: Renderer | None = None,
) -> Newsletter:
    """A draft, or with ``send_at`` (or ``send_now: true``) a scheduled newsletter; refused
    (``TemplateError``, 422) if its template does not exist or does not render as a newsletter.
    With ``ab`` (``abtests.put_newsletter_test``'s input) it is an A/B newsletter."""
    name = clean_text(data.get("name"), "name", max_len=200, required=True)
    template = clean_text(data.get("template"), "template", max_len=120, required=True)
    layers = await _target_layers(session, data.get("layers"))
    newsletter = Newsletter(
        name=name,
        template_name=template,
        layer_ids=[layer.id for layer in layers],
        layer_snapshot=_snapshot(layers),
        tags=_tags(data.get("tags")),
        state="draft",
        scheduled_at=None,
        created_at=now,
        total=0,
        cursor=0,
    )
    send_at = _parse_time(data.get("send_at"))
    await sendable_template(session, settings, template, "newsletter", renderer)
    if send_at is not None or data.get("send_now") is True:
        newsletter.state, newsletter.scheduled_at = "scheduled", send_at or now
    session.add(newsletter)
    await session.flush()
    if data.get("ab") is not None:
        await abtests.put_newsletter_test(session, newsletter, data["ab"], now, settings, renderer)
    return newsletter


async def get(session: AsyncSession, newsletter_id: int) -> Newsletter:
    newsletter = await get_or_404(session, Newsletter, newsletter_id, "newsletter")
    return newsletter


async def schedule(session: AsyncSession, newsletter_id: int, send_at: Any, now: dt.datetime) -> Newsletter:
    newsletter = await get(session, newsletter_id)
    if newsletter.state not in ("draft", "scheduled"):
        raise Conflict(f"a {newsletter.state} newsletter cannot be scheduled")
    newsletter.state, newsletter.scheduled_at = "scheduled", _parse_time(send_at) or now
    return newsletter


async def pause(session: AsyncSession, newsletter_id: int) -> Newsletter:
    newsletter = await get(session, newsletter_id)
    if newsletter.state not in ("scheduled", "sending"):
        raise Conflict(f"a {newsletter.state} newsletter cannot be paused")
    newsletter.state = "paused"
    return newsletter


async def resume(session: AsyncSession, newsletter_id: int) -> Newsletter:
    newsletter = await get(session, newsletter_id)
    if newsletter.state != "paused":
        raise Conflict(f"a {newsletter.state} newsletter cannot be resumed")
    newsletter.state = "sending" if newsletter.started_at else "scheduled"
    return newsletter


async def cancel(session: AsyncSession, newsletter_id: int, now: dt.datetime) -> Newsletter:
    """Stop for good: no further batches, and queued rows not yet claimed are not sent."""
    newsletter = await get(session, newsletter_id)
    if newsletter.state in ("sent", "cancelled"):
        raise Conflict(f"a {newsletter.state} newsletter cannot be cancelled")
    newsletter.state, newsletter.finished_at = "cancelled", now
    await session.execute(
        update(Message)
        .where(Message.newsletter_id == newsletter.id, Message.state.in_(("queued", "deferred")))
        .values(state="failed", last_error="newsletter cancelled")
        .execution_options(synchronize_session=False)
    )
    return newsletter


async def progress(session: AsyncSession, newsletter: Newsletter) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for (_, _, state), count in (await kept_counts(session, "newsletter", newsletter.id)).items():
        counts[state] = counts.get(state, 0) + count
    queued = sum(counts.values())
    return {
        "id": newsletter.id,
        "name": newsletter.name,
        "template": newsletter.template_name,
        "state": newsletter.state,
        "layer_ids": newsletter.layer_ids,
        "layers": await target_layers(session, newsletter),
        "tags": newsletter.tags,
        "scheduled_at": _iso(newsletter.scheduled_at),
        "started_at": _iso(newsletter.started_at),
        "finished_at": _iso(newsletter.finished_at),
        "total": newsletter.total,
        "queued": queued,
        "sent": counts.get("sent", 0),
        "failed": counts.get("failed", 0) + counts.get("bounced", 0),
    }


async def recent(session: AsyncSession, limit: int = 200) -> list[dict[str, Any]]:
    """The newest newsletters with their progress (the API's list and the admin page)."""
    rows = (await session.execute(select(Newsletter).order_by(Newsletter.id.desc()).limit(limit))).scalars().all()
    return [await progress(session, n) for n in rows]


ACTIONS = ("schedule", "pause", "resume", "cancel")


async def act(
    session: AsyncSession, newsletter_id: int, action: str, now: dt.datetime, send_at: Any = None
) -> Newsletter:
    """One of ``ACTIONS`` on a newsletter (the API's and the admin page's buttons)."""
    if action == "schedule":
        return await schedule(session, newsletter_id, send_at, now)
    if action == "pause":
        return await pause(session, newsletter_id)
    if action == "resume":
        return await resume(session, newsletter_id)
    if action == "cancel":
        return await cancel(session, newsletter_id, now)
    raise NotFound(f"no newsletter action {action!r}")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _audience(columns: Any, layer_ids: list[int], tags: list[str]) -> Any:
    """The active subscribers of ``layer_ids`` carrying every one of ``tags``: the one
    definition of a newsletter's audience, for counting it and for fixing it."""
    audience = select(*columns).where(Subscriber.status == "active", Subscriber.layer_id.in_(layer_ids))
    for tag in tags:
        audience = audience.where(has_element(Subscriber.tags, tag))
    return audience


async def count_audience(session: AsyncSession, positions: Any, tags: Any) -> int:
    """How many a newsletter to these layers (positions) and tags would reach if it started
    now; the compose form shows it, and asks to confirm it, before anything is sent."""
    layers = await _target_layers(session, positions)
    query = _audience([func.count()], [layer.id for layer in layers], _tags(tags))
    return int((await session.execute(query)).scalar_one())


async def fix_audience(session: AsyncSession, newsletter: Newsletter, now: dt.datetime) -> None:
    """Copy the matching active subscribers into the recipient list, inside the database, and
    keep the target layers' names and positions as they are now."""
    audience = _audience(
        [literal(newsletter.id, Integer), Subscriber.id, Subscriber.layer_id],
        list(newsletter.layer_ids),
        list(newsletter.tags or []),
    )
    newsletter.layer_snapshot = await target_layers(session, newsletter)
    await session.execute(
        insert(NewsletterRecipient).from_select(["newsletter_id", "subscriber_id", "layer_id"], audience)
    )
    newsletter.total = (
        await session.execute(
            select(func.count())
            .select_from(NewsletterRecipient)
            .where(NewsletterRecipient.newsletter_id == newsletter.id)
        )
    ).scalar_one()
    newsletter.state, newsletter.started_at, newsletter.cursor = "sending", now, 0


async def advance(session: AsyncSession, now: dt.datetime, *, domain: str, batch: int = BATCH) -> int:
    """Start due newsletters and queue one batch of each sending one; the batches queued."""
    due = (
        (
            await session.execute(
                select(Newsletter).where(Newsletter.state == "scheduled", Newsletter.scheduled_at <= now)
            )
        )
        .scalars()
        .all()
    )
    for newsletter in due:
        await fix_audience(session, newsletter, now)
    sending = (
        (await session.execute(select(Newsletter).where(Newsletter.state == "sending").order_by(Newsletter.id)))
        .scalars()
        .all()
    )
    tests = await abtests.newsletter_tests(session, [n.id for n in sending])
    walked = 0
    for newsletter in sending:
        test = tests.get(newsletter.id)
        if test is not None and test.phase in ("wait", "pick"):
            if not await abtests.ready_for_rest(session, test, now):
                continue  # waiting for its winner: not work done, so the scheduler idles
            newsletter.cursor = 0  # the second walk: the rest, with the winner
        await send_batch(session, newsletter, now, domain=domain, batch=batch, test=test)
        walked += 1
    return walked


def _walked(newsletter: Newsletter, test: AbTest | None, now: dt.datetime) -> None:
    """The walk over the audience is done: the newsletter is sent, or an A/B newsletter's test
    share is queued and it waits for its winner (unless the test took everyone)."""
    if test is not None and test.phase == "test":
        test.tested_at = now
        if test.share_pct < 100:
            test.phase = "wait"
            return
        test.phase = "rest"
    newsletter.state, newsletter.finished_at = "sent", now


async def send_batch(
    session: AsyncSession,
    newsletter: Newsletter,
    now: dt.datetime,
    *,
    domain: str,
    batch: int = BATCH,
    test: AbTest | None = None,
) -> int:
    split = await abtests.split_for(session, test, newsletter.template_name, now) if test is not None else None
    # The next batch is read from the recipients' primary key alone, then its subscribers by
    # theirs: as one join, SQLite ranged over every remaining recipient and sorted them, and
    # PostgreSQL hashed the whole subscribers table for each batch.
    ids = list(
        (
            await session.execute(
                select(NewsletterRecipient.subscriber_id)
                .where(
                    NewsletterRecipient.newsletter_id == newsletter.id,
                    NewsletterRecipient.subscriber_id > newsletter.cursor,
                )
                .order_by(NewsletterRecipient.subscriber_id)
                .limit(batch)
            )
        ).scalars()
    )
    if not ids:
        _walked(newsletter, test, now)
        return 0
    rows = (await session.execute(select(*PACED_TEXT).where(among(Subscriber.id, ids)).order_by(Subscriber.id))).all()
    # Left since the audience was fixed, or paused now: skipped (a pause does not hold it).
    reached = {r.id: r for r in rows if r.status == "active" and not skips_newsletter(r.paused_until, now)}
    if test is not None:  # this walk's part of the audience: the test share, or the rest
        testing = test.phase == "test"
        reached = {i: r for i, r in reached.items() if in_test_share(test.id, i, test.share_pct) == testing}
    ledger = await read_ledger(session, reached, now, walking=newsletter.id)
    # The batch's outbox rows as columns: who, and when their copy goes (their plan).
    subscriber_ids: list[int] = []
    send_at: list[dt.datetime] = []
    moves: list[tuple[int, dt.datetime]] = []
    key, held = ("newsletter", newsletter.id), Held("newsletter", now)
    # Most of a batch has nothing else counted nor waiting: their copy's time depends on their
    # layer (its caps), their choice of frequency, their pause and their hold alone, and is
    # planned once for each such combination (the ledger's plans are keyed by the whole book).
    alone: dict[tuple[Any, ...], dt.datetime] = {}
    for subscriber_id, book in ledger.books.items():
        if not book.sent and not book.waiting:  # (a held outbox row waits in ``waiting`` too)
            s = book.subscriber
            inputs = (s.layer_id, s.frequency, s.paused_until, s.held_until)
            at = alone.get(inputs)
            if at is None:
                book.waiting[key] = held
                at = alone[inputs] = ledger.plan(book, now)[key]
        else:
            book.waiting[key] = held
            times = ledger.plan(book, now)
            at = times[key]
            moves += book.moved(times)
        subscriber_ids.append(subscriber_id)
        send_at.append(at)
    columns = outbox_columns(
        subscriber_ids,
        "newsletter",
        newsletter.template_name,
        now,
        domain,
        newsletter_id=newsletter.id,
        send_at=send_at,
    )
    if split is not None:  # each their variant's template, and the variant
        picked = [split.row(subscriber_id) for subscriber_id in subscriber_ids]
        columns["template_name"] = [name for name, _ in picked]
        columns["variant_id"] = [variant["variant_id"] for _, variant in picked]
        columns["template_id"] = [variant["template_id"] for _, variant in picked]
    queued = await enqueue_columns(session, columns)
    await move_held_rows(session, moves)
    newsletter.cursor = ids[-1]
    if len(ids) < batch:
        _walked(newsletter, test, now)
    return queued
