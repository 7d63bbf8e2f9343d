"""Admin accounts and their browser sessions: argon2 password hashes, random session ids
stored as SHA-256, a per-session CSRF token, expiry from the injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from ...errors import Conflict, ValidationError
from ...models import AdminSession, AdminUser
from ...runtime import Runtime

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LEN = 10
_hasher = PasswordHasher()
# Verified against when the username is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash("not a real password")


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    username: str
    csrf_token: str


def clean_username(value: object) -> str:
    if not isinstance(value, str) or not _USERNAME.match(value):
        raise ValidationError("username must be 1-64 letters, digits, '.', '@', '-' or '_'", field="username")
    return value


def check_password(value: object) -> str:
    if not isinstance(value, str) or len(value) < MIN_PASSWORD_LEN or len(value) > 1024:
        raise ValidationError(f"password must be {MIN_PASSWORD_LEN} to 1024 characters", field="password")
    return value


def session_key(cookie_value: str) -> str:
    return hashlib.sha256(cookie_value.encode()).hexdigest()


async def create_user(rt: Runtime, username: object, password: object) -> None:
    username, password = clean_username(username), check_password(password)
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    async with rt.db.transaction() as session:
        if (await session.execute(select(AdminUser.id).where(AdminUser.username == username))).first():
            raise Conflict(f"user {username!r} exists", field="username")
        session.add(AdminUser(username=username, password_hash=password_hash, created_at=rt.clock.now()))


async def sign_in(rt: Runtime, username: str, password: str) -> str | None:
    """Check the password; on success start a session and return the cookie value."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        user = (await session.execute(select(AdminUser).where(AdminUser.username == username))).scalar_one_or_none()
        try:
            # Argon2 takes a good fraction of a second on purpose: off the event loop.
            await asyncio.to_thread(_hasher.verify, user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = await asyncio.to_thread(_hasher.hash, password)
        user.last_login_at = now
        cookie_value = secrets.token_urlsafe(32)
        await session.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
        session.add(
            AdminSession(
                id=session_key(cookie_value),
                user_id=user.id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + dt.timedelta(seconds=rt.settings.admin_session_s),
            )
        )
    return cookie_value


async def current(rt: Runtime, cookie_value: str) -> SignedIn | None:
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(AdminSession.user_id, AdminSession.csrf_token, AdminUser.username)
                .join(AdminUser, AdminUser.id == AdminSession.user_id)
                .where(AdminSession.id == session_key(cookie_value), AdminSession.expires_at > rt.clock.now())
            )
        ).first()
    return SignedIn(row.user_id, row.username, row.csrf_token) if row else None


async def sign_out(rt: Runtime, cookie_value: str) -> None:
    async with rt.db.transaction() as session:
        await session.execute(delete(AdminSession).where(AdminSession.id == session_key(cookie_value)))
