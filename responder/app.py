"""The application factory: routes, middlewares, and the background loops of ``serve``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .audience.enquiries import EnquiryLoop
from .clock import Clock, SystemClock
from .db import REQUEST_WRITE_DEADLINE, Database
from .delivery.transport import Transport, make_transport
from .delivery.worker import DeliveryWorker
from .funnel.scheduler import Scheduler
from .funnel.webhooks import WebhookSender
from .runtime import Runtime
from .seed import Secrets, add_missing_system_templates, ensure_secrets, seed_defaults
from .settings import Settings
from .tracking.tokens import Tokens
from .web import ops
from .web.admin import setup_admin
from .web.api import campaigns as campaigns_api
from .web.api import delivery as delivery_api
from .web.api import enquiries as api_enquiries
from .web.api import forms as api_forms
from .web.api import funnel as funnel_api
from .web.api import handlers as api
from .web.api import templates as api_templates
from .web.http import RUNTIME, Handler, error_for, secure_headers, within
from .web.public import choices as tracking_choices
from .web.public import enquiry_form as tracking_enquiry
from .web.public import keep as tracking_keep
from .web.public import optin as tracking
from .web.public import track as tracking_track
from .web.public.common import PUBLIC, cors_headers, setup_public
from .web.public.track import QuietTrackingLog, pixels_first

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0
# What a process runs besides HTTP: the scheduler (steps, newsletters, the sweep; one at a time
# per database, by an advisory lock) and delivery (outbox, enquiry mail, webhooks; any number).
ROLES = frozenset({"scheduler", "delivery"})


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
    secrets: Secrets = await ensure_secrets(db, settings, clock.now())
    seeded = await seed_defaults(db, settings.templates_dir, clock.now())
    if not seeded:
        await add_missing_system_templates(db, settings.templates_dir, clock.now())
    settings = secrets.settings
    assert settings.secret_key is not None
    tokens = Tokens(settings.secret_key, clock, settings.confirm_max_age_s, settings.previous_secret_keys)
    runtime = Runtime(settings, db, clock, tokens, admin_token_hash=secrets.admin_token_hash)
    return Started(runtime, secrets.generated, seeded)


BACKGROUND = web.AppKey("background", list)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware every routed request passes: API authorisation, errors turned into a
    page or JSON, security and CORS headers (open pixels are answered before routing, see
    ``serve_pixels_first``)."""
    wait = None
    if request.method not in ("GET", "HEAD", "OPTIONS"):  # a write: a locked database is a 503
        wait = REQUEST_WRITE_DEADLINE.set(time.monotonic() + request.app[RUNTIME].settings.form_write_timeout_s)
    try:
        if request.path.startswith(api.PREFIX + "/"):
            await api.authorize(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects travel as exceptions
            cors_headers(request, exc.headers)
            raise
        response = error_for(request, exc)
    except Exception as exc:
        response = error_for(request, exc)
    finally:
        if wait is not None:
            REQUEST_WRITE_DEADLINE.reset(wait)
    secure_headers(response)
    cors_headers(request, response.headers)
    return response


def init_app(
    rt: Runtime,
    *,
    transport: Transport | None = None,
    background: bool = True,
    http: bool = True,
    roles: frozenset[str] = ROLES,
) -> web.Application:
    app = web.Application(
        middlewares=[edge_middleware],
        client_max_size=rt.settings.max_body_bytes,
    )
    app[RUNTIME] = rt
    if http:
        app.add_routes(tracking.routes)
        app.add_routes(tracking_track.routes)
        app.add_routes(tracking_choices.routes)
        app.add_routes(tracking_keep.routes)
        app.add_routes(tracking_enquiry.routes)
        app.add_routes(api_enquiries.routes)
        app.add_routes(api_forms.routes)
        setup_public(app, rt)
        app.add_routes(api.routes)
        app.add_routes(api_templates.routes)
        app.add_routes(ops.routes)
        app.add_routes(delivery_api.routes)
        app.add_routes(funnel_api.routes)
        app.add_routes(campaigns_api.routes)
        setup_admin(app)
    if background and roles:
        app.cleanup_ctx.append(_loops(rt, transport or make_transport(rt.settings), roles))
    if background and http and rt.settings.inbound is not None:
        app.cleanup_ctx.append(_inbound(rt))  # a listener, like HTTP: one per host and port
    return app


async def start_runner(app: web.Application) -> web.AppRunner:
    """The app set up for serving: quiet access log, open pixels answered ahead of routing, and
    a connection that has not sent a whole request head within ``header_timeout_s`` (or sits
    idle that long between requests) closed: aiohttp's keep-alive timer, which also runs from
    the moment a connection opens."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=QuietTrackingLog,
        keepalive_timeout=app[RUNTIME].settings.header_timeout_s,
    )
    await runner.setup()
    serve_pixels_first(runner)
    return runner


class CappedSite(web.TCPSite):
    """A TCP site that refuses a client address its ``per_ip + 1``-th open connection (closed at
    once, before a byte is read); trusted proxies are not capped, since every client comes
    through them."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, per_ip: int, trusted: tuple[Any, ...]) -> None:
        super().__init__(runner, host, port)
        self.per_ip, self.trusted = per_ip, trusted
        self.open: dict[str, int] = {}

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        site = self

        class Handler(RequestHandler):
            peer = ""
            made = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                peer = transport.get_extra_info("peername")
                address = str(peer[0]) if peer else ""
                if address and not within(address, site.trusted):
                    if site.open.get(address, 0) >= site.per_ip:
                        transport.close()  # connection_lost follows; nothing was counted
                        return
                    site.open[address] = site.open.get(address, 0) + 1
                    self.peer = address
                self.made = True
                super().connection_made(transport)

            def connection_lost(self, exc: BaseException | None) -> None:
                if self.peer:
                    left = site.open.get(self.peer, 1) - 1
                    if left > 0:
                        site.open[self.peer] = left
                    else:
                        site.open.pop(self.peer, None)
                    self.peer = ""
                if self.made:
                    super().connection_lost(exc)

        loop = asyncio.get_running_loop()
        kwargs = server._kwargs  # the runner's handler arguments (timeouts, access log)
        self._server = await loop.create_server(
            lambda: Handler(server, loop=loop, **kwargs), self._host, self._port, reuse_address=True
        )


def serve_pixels_first(runner: web.AppRunner) -> None:
    """Answer open pixels ahead of the router (``web.public.track.pixels_first``); call after
    ``setup()`` and before the first connection."""
    server = runner.server
    assert server is not None, "the runner is not set up"
    if PUBLIC in runner.app:
        server.request_handler = pixels_first(runner.app, server.request_handler)


def _loops(rt: Runtime, transport: Transport, roles: frozenset[str]):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loops: list[Any] = [Scheduler(rt)] if "scheduler" in roles else []
        if "delivery" in roles:
            loops += [DeliveryWorker(rt, transport), EnquiryLoop(rt, transport), WebhookSender(rt)]
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
        if pending:  # let the cancelled loops hand their connections back before the pool goes
            await asyncio.wait(pending, timeout=STOP_GRACE_S)
        await transport.close()

    return ctx


def _inbound(rt: Runtime):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from .inbound.server import start_inbound

        server = await start_inbound(rt)
        yield
        server.close()
        await server.wait_closed()

    return ctx
