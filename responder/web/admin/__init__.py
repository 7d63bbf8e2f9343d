"""The admin web UI under /admin/ and the admin API modules, attached to the app in one call.

Each area of the UI is a page module in ``pages/`` with its ``routes`` and ``NAV`` entry;
add a module to ``PAGES`` to give it a place in the menu. A page reached only from another page
(a step's variants, from the Sequences page) has no ``NAV``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ...audience.importer import ImportJobs
from ..api import admin as admin_api
from ..api import subscribers as subscribers_api
from ..http import RUNTIME
from . import auth
from .pages import (
    dashboard,
    enquiries_page,
    layers,
    newsletters_page,
    referrals_page,
    sequences_page,
    settings_page,
    step_variants_page,
    subscribers,
    templates_page,
    webhooks_page,
)
from .render import NAV

PAGES = (
    dashboard,
    subscribers,
    layers,
    sequences_page,
    templates_page,
    settings_page,
    newsletters_page,
    enquiries_page,
    referrals_page,
    webhooks_page,
    step_variants_page,
)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def setup_admin(app: web.Application) -> None:
    """Admin API routes, the /admin/ sub-application, and the import jobs' lifetime."""
    jobs = ImportJobs()
    app[subscribers_api.IMPORTS] = jobs
    app.add_routes(subscribers_api.routes)
    app.add_routes(admin_api.routes)

    ui = web.Application(middlewares=[auth.guard_middleware])
    ui[RUNTIME] = app[RUNTIME]
    ui[subscribers_api.IMPORTS] = jobs
    ui[auth.THROTTLE] = app[auth.THROTTLE] = auth.SignInThrottle()
    ui[NAV] = sorted((page.NAV for page in PAGES if hasattr(page, "NAV")), key=lambda item: item.order)
    ui.add_routes(auth.routes)
    for page in PAGES:
        ui.add_routes(page.routes)
    ui.router.add_static("/static/", STATIC_DIR)
    app.add_subapp("/admin", ui)

    async def stop_imports(_app: web.Application) -> AsyncIterator[None]:
        yield
        await jobs.close()

    app.cleanup_ctx.append(stop_imports)
