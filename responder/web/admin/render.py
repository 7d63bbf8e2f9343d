"""Rendering admin pages: an autoescaping Jinja environment over the package's templates."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from .nav import NavItem
from .users import SignedIn

NAV = web.AppKey("admin_nav", list)
SIGNED_IN = web.RequestKey("admin_signed_in", SignedIn)
ADMIN_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@lru_cache(maxsize=1)
def admin_env() -> Environment:
    env = Environment(
        loader=PackageLoader("responder.web.admin", "templates"), autoescape=True, undefined=StrictUndefined
    )
    env.filters["pct"] = lambda value, digits=1: f"{value * 100:.{digits}f}%"
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M") if value else ""
    env.filters["plain_subject"] = plain_subject
    return env


def plain_subject(subject: str) -> str:
    """A template's subject as a marketer reads it in a picker: each ``{{ … }}`` shown as "…"
    and the ``{% … %}`` tags left out ("Welcome to {{ sender.name }}" → "Welcome to …")."""
    text = re.sub(r"\{%.*?%\}", "", re.sub(r"\{\{.*?\}\}", "…", subject, flags=re.S), flags=re.S)
    return re.sub(r"\s+", " ", text).strip()


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    nav: list[NavItem] = request.app[NAV]
    html = admin_env().get_template(name).render(nav=nav, here=request.path, user=request.get(SIGNED_IN), **context)
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": ADMIN_CSP,
            "Cache-Control": "no-store",
            # With "no-referrer" browsers send "Origin: null" on form posts,
            # which the cross-origin check must refuse.
            "Referrer-Policy": "same-origin",
        },
    )
