"""The durable outbox: enqueue once, claim with a lease, record each outcome.

A (subscriber, step) or (subscriber, newsletter) pair is inserted at most once (unique keys,
``ON CONFLICT DO NOTHING``). Workers claim due rows with a lease; a worker that dies leaves its
rows in ``sending`` until the lease expires and another worker reclaims them. Outcomes are
written only by the lease holder, so a reclaimed message is never recorded twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any, cast

from sqlalchemy import (
    Row,
    Select,
    Table,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert, ReturningUpdate

from ..db import Database
from ..dbutil import insert_ignore
from ..models import MESSAGES_DUE_FIRST_SQL, MESSAGES_DUE_STATES_SQL, DeliveryControl, MailCount, Message, SentStep
from .controls import PAUSED
from .mime import new_message_id, new_message_ids

DUE_STATES = ("queued", "deferred")

AnySelect = Select[*tuple[Any, ...]]
AnyRow = Row[*tuple[Any, ...]]


def outbox_row(
    subscriber_id: int,
    kind: str,
    template_name: str,
    now: dt.datetime,
    domain: str,
    *,
    step_id: int | None = None,
    newsletter_id: int | None = None,
    send_at: dt.datetime | None = None,
    variant_id: int | None = None,
    template_id: int | None = None,
) -> dict[str, object]:
    """One outbox row: the only place one is built (one mail now, or a batch of steps or a
    newsletter's recipients through ``enqueue_many``). An A/B test's mail carries its variant
    and, for a variant with its own subject, the template version made for it
    (``funnel.abtests``); other mail renders the newest version of ``template_name`` when sent."""
    return _queued(
        subscriber_id, kind, step_id, newsletter_id, variant_id, template_name, template_id, send_at or now, now
    ) | {"message_id": new_message_id(domain)}


def _queued(
    subscriber_id: object,
    kind: str,
    step_id: int | None,
    newsletter_id: int | None,
    variant_id: object,
    template_name: object,
    template_id: object,
    next_attempt_at: object,
    now: dt.datetime,
) -> dict[str, object]:
    """A queued outbox row's columns but its Message-ID: each one value, or a list of them."""
    return {
        "subscriber_id": subscriber_id,
        "kind": kind,
        "step_id": step_id,
        "newsletter_id": newsletter_id,
        "variant_id": variant_id,
        "template_name": template_name,
        "template_id": template_id,
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": next_attempt_at,
        "created_at": now,
    }


async def steps_sent_before(session: AsyncSession, pairs: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Of these (subscriber, step) pairs, those whose mail went and was pruned since."""
    wanted = set(pairs)
    if not wanted:
        return set()
    found = await session.execute(
        select(SentStep.subscriber_id, SentStep.step_id).where(
            SentStep.subscriber_id.in_({subscriber for subscriber, _ in wanted})
        )
    )
    return {(s, step) for s, step in found} & wanted


def outbox_columns(
    subscriber_ids: list[int],
    kind: str,
    template_name: str | list[str],
    now: dt.datetime,
    domain: str,
    *,
    step_id: int | None = None,
    newsletter_id: int | None = None,
    send_at: list[dt.datetime] | None = None,
    variant_id: int | list[int | None] | None = None,
    template_id: int | list[int | None] | None = None,
) -> dict[str, object]:
    """``outbox_row``'s rows for many subscribers at once, as columns for ``enqueue_columns``:
    each value a list (one item a subscriber) or one value for all of them."""
    return _queued(
        subscriber_ids,
        kind,
        step_id,
        newsletter_id,
        variant_id,
        template_name,
        template_id,
        now if send_at is None else send_at,
        now,
    ) | {"message_id": new_message_ids(domain, len(subscriber_ids))}


async def enqueue_many(session: AsyncSession, rows: list[dict[str, object]]) -> int:
    """Queue many messages in one statement; pairs already queued are skipped (the outbox's
    unique keys), and so are drip steps a subscriber was sent before their row was pruned
    (``funnel.rollup``). The number of rows queued."""
    steps = [(r["subscriber_id"], r["step_id"]) for r in rows if r.get("step_id") is not None]
    if steps:
        gone = await steps_sent_before(session, steps)  # type: ignore[arg-type]
        if gone:
            rows = [r for r in rows if (r["subscriber_id"], r.get("step_id")) not in gone]
    if not rows:
        return 0
    return await enqueue_columns(session, {key: [row[key] for row in rows] for key in rows[0]})


async def enqueue_columns(session: AsyncSession, columns: dict[str, object]) -> int:
    """Queue the rows these columns make (``outbox_columns``: lists of one item a row, or one
    value for every row) in one statement, written below SQLAlchemy's per-row parameter
    processing; pairs already queued are skipped (the outbox's unique keys; drip steps sent
    before their row was pruned are ``enqueue_many``'s to leave out). The number queued."""
    count = len(cast(list[object], columns["subscriber_id"]))
    if not count:
        return 0
    varying = tuple(key for key, value in columns.items() if isinstance(value, list))
    fixed = tuple(key for key in columns if key not in varying)
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        # One executemany of plain tuples, the times already in the text SQLite stores (each
        # distinct time converted once): sqlite3 loops over the rows itself.
        values = [_sqlite_values(dialect, key, cast(list[object], columns[key])) for key in varying]
        constants = [_sqlite_values(dialect, key, [columns[key]])[0] for key in fixed]
        rows = list(zip(*values, *(itertools.repeat(c, count) for c in constants), strict=False))
        conn = await session.connection()
        inserted = await conn.exec_driver_sql(_sqlite_insert(varying + fixed), rows)
        return int(inserted.rowcount)
    # PostgreSQL: one statement whatever the batch, the varying columns sent as arrays and
    # unnested by the server, the others as one parameter each.
    result = await session.execute(_postgresql_insert(varying, fixed), columns)
    return int(result.rowcount)  # type: ignore[attr-defined]


def _sqlite_values(dialect: Any, key: str, values: list[object]) -> list[object]:
    process = _m[key].type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return values
    return list(map(functools.cache(process), values))


@functools.cache
def _sqlite_insert(keys: tuple[str, ...]) -> str:
    if not set(keys) <= set(_m.keys()):
        raise ValueError(f"not columns of the outbox: {sorted(set(keys) - set(_m.keys()))}")
    return f"INSERT INTO messages ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))}) ON CONFLICT DO NOTHING"


@functools.cache
def _postgresql_insert(varying: tuple[str, ...], fixed: tuple[str, ...]) -> Insert:
    """``enqueue_columns``' statement on PostgreSQL for these columns, built once."""
    arrays = func.unnest(*(bindparam(key, type_=postgresql.ARRAY(_m[key].type)) for key in varying))
    rows = arrays.table_valued(*varying).render_derived(name="row")
    picked = [rows.c[key] for key in varying] + [bindparam(key, type_=_m[key].type) for key in fixed]
    return postgresql.insert(MESSAGES).from_select(list(varying + fixed), select(*picked)).on_conflict_do_nothing()


async def enqueue(
    session: AsyncSession,
    *,
    subscriber_id: int,
    kind: str,
    template_name: str,
    now: dt.datetime,
    domain: str,
    step_id: int | None = None,
    newsletter_id: int | None = None,
) -> int | None:
    """Queue one message; None if this subscriber already has this step or newsletter."""
    if step_id is not None and await steps_sent_before(session, [(subscriber_id, step_id)]):
        return None
    row = outbox_row(subscriber_id, kind, template_name, now, domain, step_id=step_id, newsletter_id=newsletter_id)
    return await insert_ignore(session, Message, row)


MESSAGES = cast(Table, Message.__table__)
_m = MESSAGES.c
Shape = Callable[[AnySelect], AnySelect]


@functools.cache
def _claim_select(dialect: str, limit: int, shape: Shape | None) -> AnySelect:
    """The claim's select, built once per shape: statements are immutable, and one instance
    keeps its compiled form's cache key instead of building and hashing it on every claim."""
    controls = cast(Table, DeliveryControl.__table__).c
    not_paused = ~exists().where(controls.name == PAUSED, controls.value == "1")

    # The partial index's predicate, qualified: literal SQL, as a bound value cannot prove it.
    def qualified(states: dict[str, str]) -> Any:
        sql = states.get(dialect, states["postgresql"])
        return sql_text(sql.replace("state IN", "messages.state IN").replace("kind <>", "messages.kind <>"))

    now = bindparam("now", type_=_m.next_attempt_at.type)
    picks = [
        select(_m.id)
        .where(*where, not_paused)
        .order_by(_m.next_attempt_at, _m.id)
        .limit(literal_column(str(int(limit))))  # a literal: generic plans would guess at a bound one
        .with_for_update(skip_locked=True)
        .subquery(name)
        for name, where in (
            ("first", (qualified(MESSAGES_DUE_FIRST_SQL), _m.next_attempt_at <= now)),
            ("due", (qualified(MESSAGES_DUE_STATES_SQL), _m.next_attempt_at <= now)),
            ("expired", (_m.state == "sending", _m.lease_expires_at < now)),
        )
    ]
    picked = union_all(*(select(pick.c.id) for pick in picks)).subquery("picked")
    query: AnySelect = select(_m.id, _m.next_attempt_at, _m.attempts, _m.kind).select_from(
        picked.join(MESSAGES, _m.id == picked.c.id)
    )
    return shape(query) if shape is not None else query


_CLAIM_UPDATE = (
    update(MESSAGES)
    .where(_m.id.in_(bindparam("ids", expanding=True)))
    .values(
        state="sending", lease_owner=bindparam("owner"), lease_expires_at=bindparam("until"), attempts=_m.attempts + 1
    )
)


async def claim(db: Database, *, owner: str, now: dt.datetime, limit: int, lease_s: int) -> list[int]:
    """Lease up to ``limit`` due messages to ``owner``; their ids, in claim order (``claim_in``).
    None while sending is paused."""
    async with db.transaction() as session:
        rows = await claim_in(session, owner=owner, now=now, limit=limit, lease_s=lease_s)
    return [row.id for row in rows]


async def claim_in(
    session: AsyncSession,
    *,
    owner: str,
    now: dt.datetime,
    limit: int,
    lease_s: int,
    shape: Shape | None = None,
) -> list[AnyRow]:
    """``claim`` inside the caller's transaction, returning rows in claim order: ``id``,
    ``next_attempt_at``, ``attempts`` (before this attempt is counted), ``kind`` and whatever ``shape``
    adds to the select of ``messages`` (columns, outer joins; one row per message). ``shape``
    is called once per limit and dialect, its select kept.

    Three index walks pick the rows, each stopping after ``limit``: the due mail that goes ahead
    of newsletters (confirmations, drip steps, privacy mail: a partial index), every due row in
    claim order (another), and expired leases (in-flight rows only). The batch takes the first
    kind before any newsletter, then the oldest: a promotion's first step does not wait behind
    a newsletter's million rows queued before it. The picks are subqueries of
    their own, so the planner cannot trade the ordered walk for a sort of the whole backlog to
    suit what ``shape`` joins. The pause flag is read in the same statement: once a pause is
    committed, claims find nothing.
    """
    query = _claim_select(session.get_bind().dialect.name, limit, shape)
    rows: list[AnyRow] = list((await session.execute(query, {"now": now})).all())
    # Mail that is not a newsletter first, then oldest first across the picks (a row two picks
    # found, once); rows locked beyond the batch are let go at commit.
    unique = {row.id: row for row in rows}.values()
    rows = sorted(unique, key=lambda row: (row.kind == "newsletter", row.next_attempt_at, row.id))[:limit]
    if rows:
        await session.execute(
            _CLAIM_UPDATE,
            {"ids": [row.id for row in rows], "owner": owner, "until": now + dt.timedelta(seconds=lease_s)},
        )
    return rows


async def finish(session: object, message_id: int, owner: str, **values: object) -> bool:
    """Record an outcome if ``owner`` still holds the lease; False if it was lost."""
    result = await session.execute(  # type: ignore[attr-defined]
        update(Message)
        .where(Message.id == message_id, Message.lease_owner == owner, Message.state == "sending")
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return bool(result.rowcount)


@functools.cache
def _finish_update(keys: tuple[str, ...]) -> ReturningUpdate[int]:
    """``finish_many``'s statement for one set of outcome columns, built once."""
    return (
        update(MESSAGES)
        .where(_m.id.in_(bindparam("ids", expanding=True)), _m.lease_owner == bindparam("owner"), _m.state == "sending")
        .values(
            lease_owner=None,
            lease_expires_at=None,
            **{key: bindparam(f"value_{key}", type_=_m[key].type) for key in keys},
        )
        .returning(_m.id)
    )


async def finish_many(session: object, message_ids: list[int], owner: str, **values: object) -> list[int]:
    """``finish`` for many messages with the same outcome values in one statement; the ids
    whose lease ``owner`` still held."""
    if not message_ids:
        return []
    params = {f"value_{key}": value for key, value in values.items()}
    result = await session.execute(  # type: ignore[attr-defined]
        _finish_update(tuple(sorted(values))), {"ids": message_ids, "owner": owner, **params}
    )
    return list(result.scalars())


async def renew(db: Database, message_ids: list[int], owner: str, *, now: dt.datetime, lease_s: int) -> int:
    """Extend ``owner``'s lease on those of ``message_ids`` it still holds; how many."""
    async with db.transaction() as session:
        result = await session.execute(
            update(Message)
            .where(Message.id.in_(message_ids), Message.lease_owner == owner, Message.state == "sending")
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_s))
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def kept_counts(
    session: AsyncSession, scope: str, scope_id: int | None = None
) -> dict[tuple[int, int, str], int]:
    """The outbox's rows of a ``scope`` (``step`` or ``newsletter``; one of them with
    ``scope_id``) per (scope id, recipient layer id (0: none), state), as the triggers keep them
    (``MailCount``): read from a few rows, never counted."""
    query = select(MailCount.scope_id, MailCount.layer_id, MailCount.state, func.sum(MailCount.n)).where(
        MailCount.scope == scope
    )
    if scope_id is not None:
        query = query.where(MailCount.scope_id == scope_id)
    rows = await session.execute(query.group_by(MailCount.scope_id, MailCount.layer_id, MailCount.state))
    return {(scope_id, layer_id, state): int(n) for scope_id, layer_id, state, n in rows if n}
