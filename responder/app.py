"""The application factory: routes, middlewares, and the background loops of ``serve``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from . import ops
from .admin import setup_admin
from .api import handlers as api
from .api import templates as api_templates
from .clock import Clock, SystemClock
from .db import Database
from .delivery.transport import Transport, make_transport
from .delivery.worker import DeliveryWorker
from .runtime import Runtime
from .seed import Secrets, ensure_secrets, seed_defaults
from .sequences.funnel import Scheduler
from .settings import Settings
from .tracking import handlers as tracking
from .tracking.tokens import Tokens
from .web import RUNTIME, error_middleware, headers_middleware

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


@dataclass
class Started:
    runtime: Runtime
    generated: tuple[str, ...]
    seeded: bool


async def start_runtime(settings: Settings, clock: Clock | None = None) -> Started:
    """Open the database, migrate it, fill in missing secrets, seed defaults on first start."""
    clock = clock or SystemClock()
    db = Database(settings.database_url)
    await db.migrate()
    secrets: Secrets = await ensure_secrets(db, settings)
    seeded = await seed_defaults(db, settings.templates_dir, clock.now())
    settings = secrets.settings
    assert settings.secret_key is not None
    tokens = Tokens(settings.secret_key, clock, settings.confirm_max_age_s)
    return Started(Runtime(settings, db, clock, tokens), secrets.generated, seeded)


BACKGROUND = web.AppKey("background", list)


def init_app(rt: Runtime, *, transport: Transport | None = None, background: bool = True,
             http: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[headers_middleware, error_middleware, api.auth_middleware],
        client_max_size=rt.settings.max_body_bytes,
    )
    app[RUNTIME] = rt
    if http:
        app.add_routes(tracking.routes)
        app.add_routes(api.routes)
        app.add_routes(api_templates.routes)
        app.add_routes(ops.routes)
        setup_admin(app)
    if background:
        app.cleanup_ctx.append(_loops(rt, transport or make_transport(rt.settings)))
    return app


def _loops(rt: Runtime, transport: Transport):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loops = [Scheduler(rt), DeliveryWorker(rt, transport)]
        tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in loops]
        app[BACKGROUND] = loops
        yield
        for loop in loops:
            loop.stop()
        # Sends already claimed finish; if they outlast the grace period their leases expire
        # and another worker (or the next start) retries them.
        done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await transport.close()

    return ctx
