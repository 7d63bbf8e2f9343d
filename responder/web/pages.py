"""Server-rendered pages subscribers see (autoescaped Jinja, package templates only)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape


@lru_cache(maxsize=1)
def page_env() -> Environment:
    return Environment(loader=PackageLoader("responder.web", "templates"), autoescape=select_autoescape(default=True))


def render_page(name: str, *, status: int = 200, **context: Any) -> web.Response:
    html = page_env().get_template(name).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
