"""Named API tokens with read or write scope; only their SHA-256 is stored.

The bootstrap ``RESPONDER_ADMIN_TOKEN`` always has write scope. Tokens are 256 random bits,
so a plain SHA-256 (not a slow password hash) is enough to make a stolen table useless.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ...errors import Conflict, NotFound, ValidationError
from ...models import ApiToken
from ...runtime import Runtime

SCOPES = ("read", "write")
TOKEN_PREFIX = "rsp_"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clean_token_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValidationError("name must be 1-64 letters, digits, '.', '-' or '_'", field="name")
    return value


def clean_scope(value: object) -> str:
    if value not in SCOPES:
        raise ValidationError("scope must be 'read' or 'write'", field="scope")
    return str(value)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    created_at: dt.datetime | None

    def json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


async def scope_of(rt: Runtime, given: str) -> str | None:
    """The scope a presented bearer token grants, or None when it is unknown."""
    bootstrap = rt.settings.admin_token or ""
    if bootstrap and hmac.compare_digest(given.encode(), bootstrap.encode()):
        return "write"
    if rt.admin_token_hash and len(given) <= 200 and hmac.compare_digest(token_hash(given), rt.admin_token_hash):
        return "write"  # the token generated on first start, kept as its digest
    if not given.startswith(TOKEN_PREFIX) or len(given) > 200:
        return None
    async with rt.db.read() as session:
        scope = (
            await session.execute(select(ApiToken.scope).where(ApiToken.token_hash == token_hash(given)))
        ).scalar_one_or_none()
    return scope


async def create_token(rt: Runtime, name: object, scope: object) -> tuple[TokenInfo, str]:
    """Create a token; the secret is returned once and never stored."""
    name, scope = clean_token_name(name), clean_scope(scope)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = rt.clock.now()
    try:
        async with rt.db.transaction() as session:
            if (await session.execute(select(ApiToken.id).where(ApiToken.name == name))).first():
                raise Conflict(f"a token named {name!r} exists; revoke it first", field="name")
            session.add(ApiToken(name=name, scope=scope, token_hash=token_hash(secret), created_at=now))
    except IntegrityError as exc:  # a concurrent create of the same name
        raise Conflict(f"a token named {name!r} exists; revoke it first", field="name") from exc
    return TokenInfo(name, scope, now), secret


async def revoke_token(rt: Runtime, name: str) -> None:
    async with rt.db.transaction() as session:
        result = await session.execute(delete(ApiToken).where(ApiToken.name == name))
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no token named {name!r}")


async def list_tokens(rt: Runtime) -> list[TokenInfo]:
    async with rt.db.read() as session:
        rows = (await session.execute(select(ApiToken).order_by(ApiToken.name))).scalars()
        return [TokenInfo(t.name, t.scope, t.created_at) for t in rows]
