"""Storing templates: every upload of a name is a new version."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import Template
from .compile import Compiled


async def add_version(session: AsyncSession, name: str, compiled: Compiled, purpose: str, now: dt.datetime) -> Template:
    newest = (await session.execute(select(func.max(Template.version)).where(Template.name == name))).scalar_one()
    template = Template(
        name=name,
        version=(newest or 0) + 1,
        subject=compiled.subject,
        source_format=compiled.source_format,
        source=compiled.source,
        html=compiled.html,
        text=compiled.text,
        purpose=purpose,
        created_at=now,
    )
    session.add(template)
    await session.flush()
    return template
