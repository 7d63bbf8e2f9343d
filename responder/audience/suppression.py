"""Erased addresses, kept only as a keyed hash (HMAC-SHA256 with the instance secret) so that
they are never mailed again while the address itself is gone."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbutil import insert_ignore
from ..models import Suppression


def suppression_hmac(secret_key: str, email: str) -> str:
    return hmac.new(secret_key.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()


async def is_suppressed(session: AsyncSession, secret_key: str, email: str) -> bool:
    digest = suppression_hmac(secret_key, email)
    return (await session.execute(select(Suppression.id).where(Suppression.email_hmac == digest))).first() is not None


async def suppress(session: AsyncSession, secret_key: str, email: str, reason: str, now: dt.datetime) -> None:
    await insert_ignore(
        session, Suppression, dict(email_hmac=suppression_hmac(secret_key, email), reason=reason, created_at=now)
    )
