"""First start: generate missing secrets, and seed the default trust layers with their starter
sequences and templates (``responder/starter/starter.toml``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .core.promotion import DEFAULT_RULE
from .core.schedule import parse_duration
from .db import Database
from .errors import ConfigError
from .models import AppSecret, Layer, Sequence, Step, Template
from .settings import Settings
from .templating.compile import compile_template
from .templating.store import add_version


@dataclass(frozen=True)
class Secrets:
    settings: Settings
    generated: tuple[str, ...]  # names of the secrets created just now
    admin_token_hash: str | None = None  # the stored bootstrap token's digest, when not configured


ADMIN_TOKEN_HASH = "admin_token_hash"


PREVIOUS_KEY = "previous_secret_key_"  # + the Unix time its grace period ends


async def rotate_secret(db: Database, now: dt.datetime, grace: dt.timedelta) -> dt.datetime:
    """Replace the stored secret key with a new one; the old one still verifies tokens and reply
    addresses until the returned time (links already mailed keep working meanwhile)."""
    until = now + grace
    async with db.transaction() as session:
        stored = await session.get(AppSecret, "secret_key")
        if stored is None:
            raise ConfigError("no secret key is stored in the database (is RESPONDER_SECRET_KEY set?)")
        name = f"{PREVIOUS_KEY}{int(until.timestamp())}"
        while await session.get(AppSecret, name) is not None:  # rotated twice within a second
            name += "x"
        session.add(AppSecret(name=name[:64], value=stored.value))
        stored.value = secrets.token_urlsafe(32)
    return until


async def ensure_secrets(db: Database, settings: Settings, now: dt.datetime | None = None) -> Secrets:
    """Fill in a missing secret key from the database, creating it once; and when no admin token
    is configured, create one on first start.

    The generated admin token is stored only as its SHA-256 digest (as named API tokens are):
    ``settings.admin_token`` holds it in this process alone, so it can be shown once. A token
    stored in plain text by an earlier version is replaced by its digest here.
    """
    generated: list[str] = []
    values: dict[str, str] = {}
    admin_hash: str | None = None
    async with db.transaction() as session:
        if not settings.secret_key:
            stored = await session.get(AppSecret, "secret_key")
            if stored is None:
                stored = AppSecret(name="secret_key", value=secrets.token_urlsafe(32))
                session.add(stored)
                generated.append("secret_key")
            values["secret_key"] = stored.value
        if not settings.admin_token:
            digest = await session.get(AppSecret, ADMIN_TOKEN_HASH)
            plain = await session.get(AppSecret, "admin_token")
            if digest is None:
                if plain is not None:
                    token = plain.value
                else:
                    token = secrets.token_urlsafe(32)
                    values["admin_token"] = token
                    generated.append("admin_token")
                digest = AppSecret(
                    name=ADMIN_TOKEN_HASH, value=hashlib.sha256(token.encode()).hexdigest()
                )  # as API tokens
                session.add(digest)
            if plain is not None:
                await session.delete(plain)
            admin_hash = digest.value
        previous = list(settings.previous_secret_keys)
        rows = (await session.execute(select(AppSecret).where(AppSecret.name.startswith(PREVIOUS_KEY)))).scalars()
        for row in sorted(rows, key=lambda r: r.name, reverse=True):  # the most recent first
            ends = int(row.name[len(PREVIOUS_KEY) :].rstrip("x") or 0)
            if now is not None and ends <= now.timestamp():
                await session.delete(row)  # its grace period is over
            elif row.value not in previous:
                previous.append(row.value)
    return Secrets(settings.replace(**values, previous_secret_keys=tuple(previous)), tuple(generated), admin_hash)


async def seed_defaults(db: Database, templates_dir: Path, now: dt.datetime) -> bool:
    """Seed layers, sequences and templates into an empty database; False if already seeded."""
    async with db.transaction() as session:
        if (await session.execute(select(func.count()).select_from(Layer))).scalar_one():
            return False
        await load_starter(session, templates_dir, now)
    return True


SYSTEM_PURPOSES = ("confirm", "ask", "privacy", "enquiry")  # mails responder itself sends


async def add_missing_system_templates(db: Database, templates_dir: Path, now: dt.datetime) -> list[str]:
    """Add the starter's templates of the mails responder sends itself (confirmation,
    re-permission, data link, acknowledgement) that a database seeded by an earlier version
    lacks; the names added."""
    manifest_path = templates_dir / "starter.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read starter templates {manifest_path}: {exc}") from exc
    wanted = [entry for entry in manifest["templates"] if entry.get("purpose") in SYSTEM_PURPOSES]
    added = []
    async with db.transaction() as session:
        present = set((await session.execute(select(Template.name))).scalars())
        for entry in wanted:
            if entry["name"] in present:
                continue
            compiled = compile_template((templates_dir / entry["file"]).read_text(), entry["subject"])
            await add_version(session, entry["name"], compiled, entry.get("purpose", ""), now)
            added.append(entry["name"])
    return added


async def load_starter(session: AsyncSession, templates_dir: Path, now: dt.datetime) -> None:
    manifest_path = templates_dir / "starter.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read starter templates {manifest_path}: {exc}") from exc
    for entry in manifest["templates"]:
        source = (templates_dir / entry["file"]).read_text()
        compiled = compile_template(source, entry["subject"])
        await add_version(session, entry["name"], compiled, entry.get("purpose", ""), now)
    for spec in manifest["layers"]:
        layer = Layer(
            position=spec["position"],
            name=spec["name"],
            label=spec["label"],
            description=spec.get("description", ""),
            rule=DEFAULT_RULE,
            created_at=now,
        )
        session.add(layer)
        await session.flush()
        sequence = Sequence(name=f"{spec['name']}: main", layer_id=layer.id, trigger="layer", created_at=now)
        session.add(sequence)
        await session.flush()
        for position, step in enumerate(spec["steps"], start=1):
            session.add(
                Step(
                    sequence_id=sequence.id,
                    position=position,
                    delay_s=parse_duration(step["delay"]),
                    template_name=step["template"],
                    purpose=step["purpose"],
                )
            )
