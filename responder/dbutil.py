"""Small SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from typing import Any, TypeVar

from sqlalchemy import Boolean, Dialect, Float, Integer, String, TypeDecorator, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from .errors import NotFound
from .models import Base, UTCDateTime

RowT = TypeVar("RowT", bound=Base)


async def get_or_404(session: AsyncSession, model: type[RowT], pk: int, what: str) -> RowT:
    """The row of ``model`` with primary key ``pk``, or ``NotFound("no such <what>")``."""
    row = await session.get(model, pk)
    if row is None:
        raise NotFound(f"no such {what}")
    return row


async def insert_ignore(session: AsyncSession, model: type[Base], values: dict[str, Any]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING; the new row's id, or None when a unique key existed."""
    dialect = session.get_bind().dialect.name
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    stmt = insert(model).values(**values).on_conflict_do_nothing().returning(model.id)  # type: ignore[attr-defined]
    result = await session.execute(stmt)
    return result.scalar_one_or_none()


class has_element(FunctionElement[bool]):
    """``column`` (a JSON list, e.g. a subscriber's tags) has an element equal to the string
    ``value``: compared as a value, never as a pattern, so ``vip_gold`` does not match
    ``vipXgold`` and a ``%``, ``"``, ``\\`` or non-ASCII letter matches only itself. SQLite reads
    the list with ``json_each``; PostgreSQL asks ``jsonb`` containment."""

    type = Boolean()
    name = "has_element"
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any] | InstrumentedAttribute[Any], value: str) -> None:
        super().__init__(column, bindparam(None, value, type_=String()))


@compiles(has_element, "sqlite")
def _has_element_sqlite(element: has_element, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXISTS (SELECT 1 FROM json_each({column}) AS e WHERE e.type = 'text' AND e.value = {value})"


@compiles(has_element, "postgresql")
def _has_element_postgresql(element: has_element, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(CAST({column} AS JSONB) @> jsonb_build_array(CAST({value} AS TEXT)))"


class hours_since(FunctionElement[int]):
    """Whole hours from ``start`` (an aware datetime, or a column) to ``column``: the bucket of a figure over
    time, counted by the database (``julianday`` on SQLite, ``EXTRACT(EPOCH …)`` on
    PostgreSQL) so a report never carries its rows into the process."""

    type = Integer()
    name = "hours_since"
    inherit_cache = True

    def __init__(
        self,
        column: ColumnElement[Any] | InstrumentedAttribute[Any],
        start: dt.datetime | ColumnElement[Any] | InstrumentedAttribute[Any],
    ) -> None:
        # ``start`` may also be a column: each row's own start (a newsletter's, in a roll-up).
        super().__init__(
            column, bindparam(None, start, type_=UTCDateTime()) if isinstance(start, dt.datetime) else start
        )


@compiles(hours_since, "sqlite")
def _hours_since_sqlite(element: hours_since, compiler: SQLCompiler, **kw: Any) -> str:
    column, start = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST((julianday({column}) - julianday({start})) * 24 AS INTEGER)"


@compiles(hours_since, "postgresql")
def _hours_since_postgresql(element: hours_since, compiler: SQLCompiler, **kw: Any) -> str:
    column, start = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM ({column} - {start})) / 3600) AS INTEGER)"


class days_between(FunctionElement[float]):
    """Days (with fractions) from ``earlier`` to ``later``, two datetime columns: a window after
    a time, compared by the database (``julianday`` on SQLite, ``EXTRACT(EPOCH …)`` on
    PostgreSQL)."""

    type = Float()
    name = "days_between"
    inherit_cache = True

    def __init__(
        self,
        later: ColumnElement[Any] | InstrumentedAttribute[Any],
        earlier: ColumnElement[Any] | InstrumentedAttribute[Any],
    ) -> None:
        super().__init__(later, earlier)


@compiles(days_between, "sqlite")
def _days_between_sqlite(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(julianday({later}) - julianday({earlier}))"


@compiles(days_between, "postgresql")
def _days_between_postgresql(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(EXTRACT(EPOCH FROM ({later} - {earlier})) / 86400.0)"


class _IdList(TypeDecorator[Collection[int]]):
    """A collection of integer ids bound as one parameter: an ``INTEGER[]`` on PostgreSQL, a
    JSON array's text on SQLite."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(Integer()))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Collection[int] | None, dialect: Dialect) -> Any:
        ids = list(value or ())
        return ids if dialect.name == "postgresql" else json.dumps(ids)


class in_ids(FunctionElement[bool]):
    """``column IN ids`` with the ids bound as one parameter: ``column = ANY(:ids)`` on
    PostgreSQL, ``column IN (SELECT value FROM json_each(:ids))`` on SQLite. A batch of 2,000
    ids as an expanding IN list is 2,000 parameters, each rendered into the statement and bound
    one by one on every execution; one array is one cached statement and one parameter."""

    type = Boolean()
    name = "in_ids"
    inherit_cache = True
    _is_implicitly_boolean = True  # a condition as it stands: no "= 1" on SQLite

    def __init__(self, column: ColumnElement[Any] | InstrumentedAttribute[Any], ids: Collection[int]) -> None:
        super().__init__(column, bindparam(None, ids, type_=_IdList()))


@compiles(in_ids, "sqlite")
def _in_ids_sqlite(element: in_ids, compiler: SQLCompiler, **kw: Any) -> str:
    column, ids = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} IN (SELECT value FROM json_each({ids}))"


@compiles(in_ids, "postgresql")
def _in_ids_postgresql(element: in_ids, compiler: SQLCompiler, **kw: Any) -> str:
    column, ids = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} = ANY({ids})"
