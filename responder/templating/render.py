"""Per-recipient rendering in a Jinja sandbox, then what every mail gets: tracked links, an open
pixel, a footer when missing, and a plain-text part.

Only plain data goes into a template (dicts of strings and numbers), never model objects.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import StrictUndefined
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment

from ..errors import TemplateError

MAX_RENDERED_BYTES = 2 * 1024 * 1024
_HREF = re.compile(r"""href=(["'])(https?://[^"']+)\1""", re.IGNORECASE)
# Our own links that must reach the subscriber untouched (unsubscribe, preferences, …).
UNTRACKED_PATHS = ("/unsubscribe/", "/preferences/", "/confirm/", "/v/", "/c/", "/o/")


@lru_cache(maxsize=1)
def html_env() -> SandboxedEnvironment:
    return SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)


@lru_cache(maxsize=1)
def subject_env() -> SandboxedEnvironment:
    # Subjects and text bodies are not HTML: escaping would turn "&" into "&amp;".
    return SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def render_string(env: SandboxedEnvironment, source: str, context: Mapping[str, Any], part: str) -> str:
    try:
        out = env.from_string(source).render(context)
    except JinjaTemplateError as exc:
        raise TemplateError(f"{part} does not render: {exc}", field=part) from exc
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise TemplateError(f"{part} does not render: {exc.__class__.__name__}", field=part) from exc
    if len(out) > MAX_RENDERED_BYTES:
        raise TemplateError(f"{part} renders larger than {MAX_RENDERED_BYTES // 1024} KB", field=part)
    return out


def render_mail(
    *,
    subject: str,
    html: str,
    text: str | None,
    context: Mapping[str, Any],
    track_link: Callable[[str], str] | None,
    open_pixel_url: str | None,
    base_url: str,
) -> Rendered:
    """Render one mail for one recipient; ``track_link`` maps a target URL to its click URL."""
    subject_out = " ".join(render_string(subject_env(), subject, context, "subject").split())
    body = render_string(html_env(), html, context, "body")
    text_out = (
        render_string(subject_env(), text, context, "text") if text is not None else html_to_text(body)
    )
    if track_link is not None:
        body = rewrite_links(body, track_link, base_url)
    if open_pixel_url:
        body = add_pixel(body, open_pixel_url)
    return Rendered(subject_out, body, text_out)


def rewrite_links(body: str, track_link: Callable[[str], str], base_url: str) -> str:
    own = tuple(base_url + path for path in UNTRACKED_PATHS)

    def replace(match: re.Match[str]) -> str:
        target = htmllib.unescape(match.group(2))
        if target.startswith(own):
            return match.group(0)
        return f'href="{htmllib.escape(track_link(target))}"'

    return _HREF.sub(replace, body)


def add_pixel(body: str, url: str) -> str:
    pixel = f'<img src="{htmllib.escape(url)}" width="1" height="1" alt="" style="display:block;border:0">'
    index = body.lower().rfind("</body>")
    return body + pixel if index < 0 else body[:index] + pixel + body[index:]


def html_to_text(body: str) -> str:
    text = get_text(body, ParserConfig(display_links=True))
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
