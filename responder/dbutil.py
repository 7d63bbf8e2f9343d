"""Small SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import NotFound
from .models import Base

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
